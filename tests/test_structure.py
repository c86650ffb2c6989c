"""The code's shape (issue 11): no module of gossipfl over 500 lines, and no import cycle among
its modules (imports made when a module loads: at its top, under ``if``/``try``; not those
inside functions, which load lazily on purpose, nor ``if TYPE_CHECKING`` blocks)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gossipfl"
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def load_time_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The gossipfl modules ``name`` (at ``path``) imports as it loads."""
    found: set[str] = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                visit(node.orelse)
                visit(node.finalbody)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package[:len(package) - node.level + 1]
                    base = ".".join([*parent, *([node.module] if node.module else [])])
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)

    visit(ast.parse(path.read_text()).body)
    return {m for m in found if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk meets (empty: the graph is acyclic)."""
    state: dict[str, int] = {}  # 1: on the walk's path, 2: done
    path: list[str] = []
    met: list[list[str]] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                met.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                walk(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    return met


def test_the_cycle_finder_finds_a_cycle_and_only_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_relative_and_guarded_imports_are_read_as_loading_does(tmp_path: Path) -> None:
    code = ("from __future__ import annotations\nfrom typing import TYPE_CHECKING\n"
            "from . import b\nfrom .c import thing\ntry:\n    import p.d\nexcept ImportError:\n"
            "    pass\nif TYPE_CHECKING:\n    from p import e\n"
            "def later():\n    from p import f\n")
    path = tmp_path / "a.py"
    path.write_text(code)
    known = {"p.a", "p.b", "p.c", "p.d", "p.e", "p.f"}
    assert load_time_imports(path, "p.a", known) == {"p.b", "p.c", "p.d"}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_500_lines(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines (split it)"


def test_no_import_cycle_among_gossipfls_modules() -> None:
    known = set(MODULES)
    graph = {name: load_time_imports(path, name, known) for name, path in MODULES.items()}
    assert sum(len(v) for v in graph.values()) > 100  # the walk read the real imports
    assert cycles(graph) == []
