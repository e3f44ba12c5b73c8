"""dporec: does DPO give better ranking adherence than SFT when a 4-bit Llama 3 recommends movies?

Subpackages by pipeline stage, imports flowing downward only (pyproject.toml's import-linter
contracts; README "Layout"): experiment | preflight -> evaluation | training -> modeling | report
-> analysis | runs -> config -> data -> compat. `a | b`: a layer of two packages that never import each other.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout: configs/, requirements*.txt, the scripts


class UserError(Exception):
    """A problem with the user's input (config, data file, paths): printed without a traceback."""
