"""notebooks/dpo_vs_sft.ipynb: valid nbformat-4 JSON whose cells only call things that exist here
(scripts, Makefile targets, config files), rebuild a recycled Colab VM first (Drive, code, install),
download the data themselves, keep everything on Drive, resume by themselves (resume=auto), show the
ranking and the curves, and run the control arm on the main run's SFT adapter."""
from __future__ import annotations

import json
import re
import shlex

import pytest

from dporec import ROOT, arms
from dporec.config import load_config

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


def _code_cells(nb) -> list[str]:
    return [_source(c) for c in nb["cells"] if c["cell_type"] == "code"]


def _settings(nb) -> dict:
    """The first code cell (plain assignments, no Colab import) evaluated: the paths every command uses."""
    ns: dict = {}
    exec(_code_cells(nb)[0], ns)  # noqa: S102 - our own notebook's settings cell
    return ns


def test_first_cells_mount_drive_get_the_code_and_install(nb):
    """After a recycle the VM is bare: the first code cells must rebuild it, in this order."""
    cells = _code_cells(nb)
    settings = _settings(nb)
    assert settings["REPO_URL"] == "" and "REPO_URL" in cells[0]  # the user sets it; nothing invented
    assert 'drive.mount("/content/drive")' in cells[1]
    assert re.search(r'os\.environ\["HF_HOME"\]\s*=\s*HF_HOME', cells[1])
    assert settings["HF_HOME"].startswith(settings["DRIVE"] + "/")
    assert "assert REPO_URL" in cells[2] and "!git clone {REPO_URL} {CODE}" in cells[2]
    assert "pull --ff-only" in cells[2] and "%cd {CODE}" in cells[2]
    assert "!pip install -q -r requirements.txt" in cells[3]
    for later in cells[4:]:
        assert "pip install" not in later and "drive.mount" not in later


def test_every_command_writes_to_drive(nb):
    """output_dir and the data files of every script call live on Drive, so --resume finds the
    checkpoints after a recycle; nothing is written under the VM-local clone."""
    settings = _settings(nb)
    drive = settings["DRIVE"]
    assert drive.startswith("/content/drive/MyDrive/")
    calls = [c for c in _commands(nb) if c[0] == "python"]
    stage_scripts = {"verify_setup.py", "train_sft.py", "train_dpo.py", "evaluate_dpo.py",
                     "run_experiment.py"}
    seen = set()
    for c in calls:
        if c[1] in stage_scripts:
            seen.add(c[1])
            var = next((a for a in c if a == "{ARGS}"), None)
            assert var, f"{' '.join(c)} does not pass the Drive overrides"
            overrides = dict(kv.split("=", 1) for kv in settings[var.strip("{}")].split())
            assert overrides["output_dir"].startswith(drive + "/runs/")
            for key in ("data.train_file", "data.val_file", "data.test_file"):
                assert overrides[key].startswith(drive + "/")
            assert not any(a.startswith("output_dir=")
                           for a in c), "a second output_dir would override Drive's"
        if c[1] == "data/prepare_movielens.py":  # the config's own build, into the Drive folder ARGS names
            assert c[c.index("--config") + 1] == "configs/llama3_8b.yaml" and "{ARGS}" in c
    assert seen == stage_scripts
    # the overrides are valid config keys
    load_config(ROOT / "configs" / "llama3_8b.yaml", settings["ARGS"].split())
    text = "".join(_code_cells(nb))
    assert f'eval_dir = f"{{RUN}}/{arms.EVAL.name}"' in text  # the stage folders are dporec.arms' own


def test_stage_cells_resume_by_themselves(nb):
    """Rerunning a cell after a disconnect continues the stage: no cell needs editing to add --resume."""
    calls = [c for c in _commands(nb) if c[0] == "python"]
    for script in ("train_sft.py", "train_dpo.py", "evaluate_dpo.py"):
        call = next(c for c in calls if c[1] == script)
        assert "resume=auto" in call and "--resume" not in call, script
    cfg = load_config(ROOT / "configs" / "llama3_8b.yaml", ["resume=auto"])
    assert cfg["resume"] == "auto"
    markdown = "".join(_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "resume=auto" in markdown and "from the top" in markdown


def test_data_is_downloaded_and_md5_checked(nb):
    from dporec.data.sources.releases import release
    ml1m = release("ml-1m")
    text = "".join(_code_cells(nb))
    assert ml1m.url in text and ml1m.md5 in text and "!curl -L --fail" in text
    settings = _settings(nb)
    assert settings["ZIP"].startswith(settings["DRIVE"] + "/")
    args = dict(kv.split("=", 1) for kv in settings["ARGS"].split())
    assert args["data.source"] == settings["ZIP"]  # the config's build reads the downloaded zip


def test_ranking_and_curves_are_shown(nb):
    text = "".join(_code_cells(nb))
    assert "ranking.png" in text and "eval.ranking=false" not in text
    assert load_config(ROOT / "configs" / "llama3_8b.yaml")["eval"]["ranking"] is True
    for stage in (arms.SFT, arms.DPO):
        assert f'{{RUN}}/{stage.name}/training_curves.png' in text


def test_control_arm_reuses_the_main_runs_sft(nb):
    """The control continues this run's SFT adapter: the same output_dir, so SFT and DPO are skipped."""
    calls = [c for c in _commands(nb) if c[:2] == ["python", "run_experiment.py"]]
    assert calls and all("{ARGS}" in c and "experiment.control_arm=true" in c for c in calls)
    assert "CONTROL_ARGS" not in NOTEBOOK.read_text(encoding="utf-8")


def test_on_policy_arm_runs_in_the_same_run_folder(nb):
    """The on-policy cell samples from this run's SFT model and keeps the control in the report."""
    calls = [c for c in _commands(nb) if c[:2] == ["python", "run_experiment.py"]
             and "experiment.on_policy_arm=true" in c]
    assert len(calls) == 1 and "{ARGS}" in calls[0] and "experiment.control_arm=true" in calls[0]
    assert f'{{RUN}}/{arms.PAIRS.name}/{arms.PAIRS.marker}' in "".join(_code_cells(nb))
    arm_switches = {f"experiment.{a.switch}=true" for a in arms.ARMS}
    assert arm_switches <= set(calls[0])  # every arm, in the one run folder


def test_no_placeholders(nb):
    text = NOTEBOOK.read_text(encoding="utf-8")
    for bad in ("<your", "YOUR_", "TODO", "xxx"):
        assert bad not in text
