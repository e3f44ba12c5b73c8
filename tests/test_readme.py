"""Every command the README shows refers to something that exists and parses.

The commands that run real work are exercised elsewhere: `make test` by CI, `make smoke`/`make demo`
stages by tests/test_run_experiment.py and tests/test_training.py on the tiny config. This file keeps
the README from drifting: scripts, configs, Makefile targets and config keys it names must exist, and
each script's command line must be accepted by its argument parser.
"""
import re
import shlex
import subprocess
import sys

import pytest

from dporec import ROOT
from dporec.config import load_config

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, re.S)
LINES = [ln.split("#")[0].strip() for b in BLOCKS for ln in b.splitlines() if ln.split("#")[0].strip()]
PY_CMDS = [ln for ln in LINES if ln.startswith("python ") and ".py" in ln.split()[1]]
MAKE_TARGETS = [t for ln in LINES if ln.startswith("make ") for t in ln.split()[1:]]


def test_readme_has_commands():
    assert "make demo" in LINES and "make test" in LINES
    assert len(PY_CMDS) >= 8


def test_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in MAKE_TARGETS:
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"Makefile has no target {target!r}"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("cmd", PY_CMDS)
def test_script_exists_and_config_overrides_are_valid(cmd):
    argv = shlex.split(cmd)[1:]
    script = ROOT / argv[0]
    assert script.is_file(), f"README names a missing script: {argv[0]}"
    if "--config" in argv:
        config = argv[argv.index("--config") + 1]
        assert (ROOT / config).is_file(), f"README names a missing config: {config}"
        overrides = [a for a in argv[1:] if "=" in a and not a.startswith("-")]
        load_config(ROOT / config, overrides)  # unknown keys or wrong types would raise


@pytest.mark.parametrize("script", sorted({shlex.split(c)[1] for c in PY_CMDS}))
def test_script_help_runs(script):
    out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage" in out.stdout.lower()


def _mentions():
    """(file, docs page) for every docs/*.md named in the project's text files."""
    files = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").glob("*.md"),
             *ROOT.glob("*.py"), *(ROOT / "dporec").rglob("*.py"), *(ROOT / "configs").glob("*.yaml"),
             *(ROOT / "notebooks").glob("*.ipynb")]
    for f in files:
        for page in re.findall(r"docs/[\w-]+\.md", f.read_text(encoding="utf-8")):
            yield f, page


def test_every_docs_page_named_exists():
    mentions = list(_mentions())
    assert len(mentions) > 10
    for f, page in mentions:
        assert (ROOT / page).is_file(), f"{f.relative_to(ROOT)} names {page}, which does not exist"


def test_markdown_links_resolve():
    """Relative links in README.md, BENCHMARKS.md and docs/ point at files that exist."""
    for f in [ROOT / "README.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", f.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (f.parent / target).exists(), f"{f.relative_to(ROOT)} links to missing {target}"


def test_readme_stays_short_and_opens_with_what_a_user_needs():
    lines = README.splitlines()
    assert len(lines) <= 250
    first = "\n".join(lines[:60])
    for needed in ("RTX 3090", "driver", "disk", "verify_setup.py", "train_sft.py", "train_dpo.py",
                   "evaluate_dpo.py"):
        assert needed in first, f"the README's first 60 lines do not mention {needed}"
