"""The shape of the code base: short files, no import cycle anywhere, rooms that say what they are, a library that
ships no lab, and nothing of the project's imported when a third-party package that expects PyPI's ``kernels`` is
imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lords", "lords_kernels", "lords_pipelines")


def _sources():
    return [p for pkg in (*PACKAGES, "benchmarks", "tests") for p in sorted((ROOT / pkg).rglob("*.py"))]


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_source_file_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= 400


def _modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the tree by dotted name (packages by their ``__init__``)."""
    mods = {}
    for pkg in (*PACKAGES, "benchmarks"):
        for p in sorted((root / pkg).rglob("*.py")):
            parts = list(p.relative_to(root).with_suffix("").parts)
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The tree's modules that ``name`` imports anywhere in its file, function-local imports included: a deferred
    import hides a cycle from the interpreter, not from a reader. ``from pkg import x`` counts ``pkg`` (whose
    ``__init__`` runs: ``from . import x`` in a submodule imports its package) and ``pkg.x`` when it is a module."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            pkg = (
                ".".join(base[: len(base) - node.level + 1] + [node.module or ""]).strip(".")
                if node.level
                else node.module
            )
            targets = [pkg, *(f"{pkg}.{a.name}" for a in node.names if f"{pkg}.{a.name}" in mods)]
        else:
            continue
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_tree_has_no_import_cycle():
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_deferred_cycle(tmp_path):
    (tmp_path / "lords").mkdir()
    (tmp_path / "lords" / "__init__.py").write_text("")
    (tmp_path / "lords" / "a.py").write_text("from .b import f\n")
    (tmp_path / "lords" / "b.py").write_text("def f():\n    from lords import a\n")
    (tmp_path / "lords" / "c.py").write_text("from . import errors\n")
    (tmp_path / "lords" / "errors.py").write_text("")
    for pkg in (*PACKAGES[1:], "benchmarks"):
        (tmp_path / pkg).mkdir()
    (tmp_path / "lords" / "__init__.py").write_text("from .c import *\n")  # c imports its package: a cycle
    mods = _modules(tmp_path)
    assert sorted(_cycles({m: _imports(m, p, mods) for m, p in mods.items()})) == [
        ["lords", "lords.c"],
        ["lords.a", "lords.b"],
    ]


def test_pipelines_top_level_holds_at_most_twelve_modules():
    top = [p for p in (ROOT / "lords_pipelines").iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()]
    assert len(top) <= 12, sorted(p.name for p in top)


@pytest.mark.parametrize("package", PACKAGES)
def test_installed_packages_ship_no_benchmark_tuning_or_probe(package):
    lab = [
        str(p.relative_to(ROOT))
        for p in (ROOT / package).rglob("*.py")
        if p.stem.endswith(("bench", "probe", "tune", "sweep"))
    ]
    assert lab == []


def test_import_lords_loads_torch_alone_and_no_corpus():
    code = (
        "import sys, lords; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('transformers', 'lords_pipelines', 'lords_kernels', 'triton', 'lightning', 'hydra')); "
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list((ROOT / "lords").rglob("*.txt*")), "the library ships no corpus"


def test_importing_bitsandbytes_imports_nothing_of_the_project():
    pytest.importorskip("bitsandbytes")
    names = (*PACKAGES, "kernels", "pipelines")
    code = (
        f"import sys, bitsandbytes; mine = sorted(m for m in sys.modules if m.split('.')[0] in {names!r}); "
        "assert not mine, mine"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
