"""The floor plan holds: no import cycle (function-level imports included), no code imports a script or
edits sys.path, data/analysis/report load no torch, every entry script is thin and runs the package's own
command line (dporec.cli), and the package's description of its layers is the contract's."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib

import grimp
import pytest

import dporec
from dporec import ROOT, cli

SKIP = {".venv", ".git", "runs", "models", ".whl"}
# The entry scripts: every Python file at the checkout's top level and in data/ (found, not listed)
ENTRY_SCRIPTS = sorted(p.relative_to(ROOT).as_posix()
                       for p in [*ROOT.glob("*.py"), *(ROOT / "data").glob("*.py")])
# Every script anywhere (scripts/ and benchmarks/ too): none may be imported
ALL_SCRIPTS = sorted({p.stem for d in ("", "data", "scripts", "benchmarks") for p in (ROOT / d).glob("*.py")})


def python_files():
    return [p for p in ROOT.rglob("*.py") if not SKIP & set(p.relative_to(ROOT).parts)]


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return out


def test_the_cycle_finder_finds_a_cycle():
    g = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        g.add_import(importer=a, imported=b)
    assert _cycles(g) == [["p.a", "p.b", "p.c"]]


def test_no_import_cycle_even_through_function_level_imports():
    graph = grimp.build_graph("dporec")  # grimp records imports inside functions too
    assert _cycles(graph) == []


def test_nothing_imports_a_script_or_edits_sys_path():
    assert {"train_sft", "prepare_movielens", "bench_train", "build_learnable"} <= set(ALL_SCRIPTS)
    offenders = []
    for path in python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                    "__import__", "import_module") and node.args and isinstance(node.args[0], ast.Constant):
                names = [node.args[0].value]
            if any(n.split(".")[0] in ALL_SCRIPTS for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {names}")
            if (isinstance(node, ast.Attribute) and node.attr in ("insert", "append", "extend")
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "path"
                    and getattr(node.value.value, "id", "") == "sys"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} edits sys.path")
    assert offenders == []


def test_data_analysis_and_report_load_no_ml_stack():
    modules = sorted(m for m in grimp.build_graph("dporec").modules
                     if m.split(".")[1:2] and m.split(".")[1] in ("data", "analysis", "report", "runs"))
    assert "dporec.data.task" in modules and "dporec.report.plots" in modules
    code = (f"import importlib, sys\nfor m in {modules!r}:\n    "
            f"importlib.import_module(m)\nprint(sorted({{'torch', 'transformers', "
            f"'trl', 'peft', 'bitsandbytes', 'datasets'}} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_entry_script_has_a_command():
    """Each entry script's command line lives in dporec.cli under the script's name, and every command
    there has its script: tests drive the real parsers through cli."""
    assert len(ENTRY_SCRIPTS) == len(cli.COMMANDS) >= 10
    assert sorted(cli.script_name(c) for c in cli.COMMANDS) == ENTRY_SCRIPTS


@pytest.mark.parametrize("script", ENTRY_SCRIPTS)
def test_entry_scripts_are_thin(script):
    """A docstring with the commands, and `main(argv)` returning the package's command of the same name."""
    text = (ROOT / script).read_text(encoding="utf-8")
    tree = ast.parse(text)
    assert ast.get_docstring(tree) and "python " in ast.get_docstring(tree)
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert [f.name for f in functions] == ["main"]
    body = functions[0].body
    name = script.rsplit("/", 1)[-1].removesuffix(".py")
    assert len(body) == 1 and ast.unparse(body[0]) == f"return cli.{name}(argv, __doc__)"
    assert len(text.splitlines()) < 100


def test_the_package_describes_the_contracts_layers():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = contracts[0]["layers"]
    described = " ".join(dporec.__doc__.split())
    want = " -> ".join(" | ".join(m.removeprefix("dporec.") for m in layer.split(" | ")) for layer in layers)
    assert want in described, (want, described)
    listed = {m.removeprefix("dporec.") for layer in layers for m in layer.split(" | ")}
    on_disk = {p.stem if p.is_file() else p.name for p in (ROOT / "dporec").iterdir()
               if (p.suffix == ".py" and p.stem != "__init__")
               or (p.is_dir() and (p / "__init__.py").is_file())}
    assert listed == on_disk  # every package and top module has its layer


def test_run_experiment_documents_every_stage():
    """run_experiment.py's list of stages and their markers is the list dporec.arms defines."""
    from dporec import arms
    doc = (ROOT / "run_experiment.py").read_text(encoding="utf-8")
    for stage in arms.stages():
        line = rf"^\s+{stage.name}\s+<run>/{stage.name}/{re.escape(stage.marker)}"
        assert re.search(line, doc, re.M), stage
        assert stage.script in doc
