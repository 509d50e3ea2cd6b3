"""No import cycle inside the library, counting what Python actually runs: function-local imports too, and
``from . import x`` or ``import lords`` inside a submodule as an import of the package ``__init__`` (which imports
every submodule). A cycle makes a module's behaviour depend on which one happened to be imported first."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "lords"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement makes Python import (the package of a ``from`` import included)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    return [base, *(f"{base}.{a.name}" for a in node.names)]


def import_graph() -> dict[str, set[str]]:
    """``{module: the package's modules it imports anywhere in its body}``."""
    paths = {_module_name(p): p for p in (ROOT / PACKAGE).rglob("*.py")}
    graph = {}
    for module, path in paths.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in _targets(node, module, path.name == "__init__.py"):
                    while name and name not in paths:  # lords.hf.attach -> lords.hf
                        name = name.rpartition(".")[0]
                    if name:
                        deps.add(name)
        graph[module] = deps - {module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_checker_sees_a_cycle_through_a_function_local_import():
    tree = {"lords": {"lords.a"}, "lords.a": {"lords.b"}, "lords.b": {"lords"}}
    assert _cycle(tree) == ["lords", "lords.a", "lords.b", "lords"]
    node = ast.parse("def f():\n    from . import hf\n").body[0].body[0]
    assert _targets(node, "lords.checkpoint", is_package=False) == ["lords", "lords.hf"]


def test_the_library_imports_without_a_cycle():
    cycle = _cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
