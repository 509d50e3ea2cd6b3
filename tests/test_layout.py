"""The shape of the code base: short files, no import cycle inside the library, nothing of the project's imported
when a third-party package that expects PyPI's ``kernels`` is imported."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lords", "lords_kernels", "lords_pipelines")


def _sources():
    return [p for pkg in (*PACKAGES, "tests") for p in sorted((ROOT / pkg).rglob("*.py"))]


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_source_file_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= 400


def _module_imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` imported at module level (function-local imports are deferred, not cycles)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add(node.module or "__init__")
            if node.module is None:
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package + "."):
            found.add(node.module.split(".")[1])
    return found


def test_the_library_has_no_import_cycle():
    mods = {p.stem: _module_imports(p, "lords") for p in (ROOT / "lords").glob("*.py") if p.stem != "__init__"}
    graph = {m: {d for d in deps if d in mods} for m, deps in mods.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph[m]:
            assert state.get(d) != 1, f"import cycle: {' -> '.join(stack + [m, d])}"
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_importing_bitsandbytes_imports_nothing_of_the_project():
    pytest.importorskip("bitsandbytes")
    code = ("import sys, bitsandbytes; mine = sorted(m for m in sys.modules if m.split('.')[0] in %r); "
            "assert not mine, mine" % (PACKAGES + ("kernels", "pipelines"),))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
