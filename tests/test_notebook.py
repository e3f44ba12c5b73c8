"""notebooks/dpo_vs_sft.ipynb: valid nbformat-4 JSON whose cells only call things that exist here
(scripts, Makefile targets, config files) and agree with the configs they use."""
from __future__ import annotations

import json
import re
import shlex

import pytest
import yaml

from conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "dpo_vs_sft.ipynb"


@pytest.fixture(scope="module")
def nb() -> dict:
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def _source(cell) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _commands(nb) -> list[list[str]]:
    """Every shell line (`!...`) of every code cell, split like a shell would."""
    out = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        for line in _source(cell).splitlines():
            if line.strip().startswith("!"):
                out.append(shlex.split(line.strip()[1:]))
    return out


def _makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_./-]+)\s*:(?!=)", text, flags=re.MULTILINE))


def test_is_nbformat_4(nb):
    assert nb["nbformat"] == 4 and isinstance(nb["nbformat_minor"], int)
    assert isinstance(nb["metadata"], dict) and nb["cells"]
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code")
        assert isinstance(cell["source"], (str, list)) and isinstance(cell["metadata"], dict)
        if cell["cell_type"] == "code":
            # Committed without outputs: nothing in the notebook pretends to be a result.
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_called_scripts_targets_and_configs_exist(nb):
    cmds = _commands(nb)
    scripts = [c[1] for c in cmds if c[0] == "python" and c[1].endswith(".py")]
    # The notebook runs the experiment through the scripts, in order.
    for needed in ("verify_setup.py", "train_sft.py", "train_dpo.py", "evaluate_dpo.py"):
        assert needed in scripts, f"the notebook never calls {needed}"
    assert scripts.index("train_sft.py") < scripts.index("train_dpo.py") < scripts.index("evaluate_dpo.py")
    targets = _makefile_targets()
    for c in cmds:
        if c[0] == "python" and c[1].endswith(".py"):
            assert (ROOT / c[1]).is_file(), f"notebook calls missing script {c[1]}"
        if c[0] == "make":
            for t in c[1:]:
                assert t in targets, f"notebook calls missing Makefile target {t}"
        for i, arg in enumerate(c[:-1]):
            if arg == "--config":
                assert (ROOT / c[i + 1]).is_file(), f"notebook uses missing config {c[i + 1]}"
        if c[:2] == ["pip", "install"] and "-r" in c:
            assert (ROOT / c[c.index("-r") + 1]).is_file()


def test_data_and_run_folders_match_the_configs(nb):
    """Data is prepared into the folder the config reads, and the plots shown are where eval writes."""
    cmds = _commands(nb)
    configs = {c[c.index("--config") + 1] for c in cmds if "--config" in c}
    loaded = {p: yaml.safe_load((ROOT / p).read_text()) for p in configs}
    data_dirs = {str(ROOT / cfg["data"]["train_file"]).rsplit("/", 1)[0] for cfg in loaded.values()}
    for c in cmds:
        if c[:2] == ["python", "data/prepare_movielens.py"]:
            out = c[c.index("--out") + 1]
            assert str(ROOT / out) in data_dirs, f"data prepared into {out}, which no config used here reads"
    text = "".join(_source(cell) for cell in nb["cells"] if cell["cell_type"] == "code")
    main_out = loaded["configs/llama3_8b.yaml"]["output_dir"]
    assert f"{main_out}/eval" in text


def test_no_placeholders(nb):
    text = NOTEBOOK.read_text(encoding="utf-8")
    for bad in ("<your", "YOUR_", "TODO", "xxx"):
        assert bad not in text
