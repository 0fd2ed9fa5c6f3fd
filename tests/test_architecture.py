"""The shape of router/: no import cycles, and the layers pyproject.toml writes down.

grimp (what import-linter reads the code with) sees every import statement, inside
functions and under ``TYPE_CHECKING`` too, so an import moved into a function to dodge
a cycle still counts here.
"""

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every strongly connected group of modules larger than one (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return sorted(found)


def self_imports(graph: grimp.ImportGraph) -> list[str]:
    return sorted(m for m in graph.modules if m in graph.find_modules_directly_imported_by(m))


def test_router_has_no_import_cycle() -> None:
    graph = grimp.build_graph("router", cache_dir=None)
    assert import_cycles(graph) == []
    assert self_imports(graph) == []


def test_cycle_finder_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The check itself can fail: a cycle hidden in a function is found."""
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic import b\n")
    (package / "b.py").write_text("def later():\n    from cyclic import c\n")
    (package / "c.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    import cyclic.a\n")
    (package / "d.py").write_text("import cyclic.a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        graph = grimp.build_graph("cyclic", cache_dir=None)
    finally:
        sys.path.remove(str(tmp_path))
    assert import_cycles(graph) == [["cyclic.a", "cyclic.b", "cyclic.c"]]


def test_layers_contract_is_kept() -> None:
    """``lint-imports`` with the contracts of pyproject.toml, as .ci/run runs it."""
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
