"""The floor plan holds: no import cycle (function-level imports included), no code imports a top-level
script or edits sys.path, data/analysis/report load no torch, and the scripts stay thin. The layer
order itself is import-linter's contract in pyproject.toml, run by `make test`."""
from __future__ import annotations

import ast
import subprocess
import sys

import grimp
import pytest

from dporec import ROOT

SCRIPTS = ("train_sft", "train_dpo", "evaluate_dpo", "run_experiment", "verify_setup", "prepare_movielens",
           "check_dataset", "build_tiny_model", "prepare_smollm2")
TOP_LEVEL = ("train_sft.py", "train_dpo.py", "evaluate_dpo.py", "run_experiment.py", "verify_setup.py")


def python_files():
    skip = {".venv", ".git", "runs", "models", ".whl"}
    return [p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts)]


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
            if any(n.split(".")[0] in SCRIPTS for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {names}")
            if (isinstance(node, ast.Attribute) and node.attr in ("insert", "append", "extend")
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "path"
                    and getattr(node.value.value, "id", "") == "sys"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} edits sys.path")
    assert offenders == []


def test_data_analysis_and_report_load_no_ml_stack():
    modules = sorted(m for m in grimp.build_graph("dporec").modules
                     if m.split(".")[1:2] and m.split(".")[1] in ("data", "analysis", "report"))
    assert "dporec.data.task" in modules and "dporec.report.plots" in modules
    code = (f"import importlib, sys\nfor m in {modules!r}:\n    "
            f"importlib.import_module(m)\nprint(sorted({{'torch', 'transformers', "
            f"'trl', 'peft', 'bitsandbytes', 'datasets'}} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("script", TOP_LEVEL)
def test_top_level_scripts_are_thin(script):
    text = (ROOT / script).read_text(encoding="utf-8")
    assert len(text.splitlines()) < 100
    tree = ast.parse(text)
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert functions == ["main"], functions  # a docstring and a short main that calls the package
