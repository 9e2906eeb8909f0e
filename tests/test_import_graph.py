"""The import graph of the shipped packages: no circles, and dependencies point one way.

DESIGN.md's layout: ``resource_server -> interceptors -> protos`` and ``auth_server ->
protos`` (``auth_server`` may use ``interceptors``' leaf helpers). Read with ``ast``, so
nothing is imported. Every import counts, wherever it stands: inside a function, and
under ``if TYPE_CHECKING:`` too. A type-only edge does not fail at run time, but it
still means neither module can be read or moved without the other, and it turns into
a run-time circle the first time the name is needed at run time (an ``isinstance``, a
default value); the fix, a shared leaf module or a protocol, is cheap while it is one
edge. This is the rule ``../shared/tools/import_graph.py`` applies as well.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("auth_server", "interceptors", "resource_server", "protos")
# (importer, imported): why not
FORBIDDEN = {
    ("interceptors", "auth_server"): "a verifier holds nothing that could sign",
    ("interceptors", "resource_server"): "the library does not know its example",
    ("resource_server", "auth_server"): "the example is built from interceptors and protos only",
    ("protos", "auth_server"): "generated code depends on nothing of ours",
    ("protos", "interceptors"): "generated code depends on nothing of ours",
    ("protos", "resource_server"): "generated code depends on nothing of ours",
}


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    """Each module of ``packages`` under ``root`` -> the modules of theirs it imports."""
    files = {_module_name(root, p): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for me, path in files.items():
        package = me if path.name == "__init__.py" else me.rpartition(".")[0]
        wanted: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                wanted.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import sub` needs the submodule; `from pkg import name`, pkg itself.
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    wanted.add(sub if sub in files else base)
        graph[me] = set()
        for name in wanted:
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != me:
                graph[me].add(name)
    return graph


def circles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The groups of modules that reach each other (strongly connected components).

    A package whose ``__init__`` re-exports its submodules, which import names from
    the package in turn, is not a circle of design: such a package is left out of its
    group before the group is judged.
    """

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reachable = {module: reach(module) for module in graph}
    found: list[list[str]] = []
    done: set[str] = set()
    for module in sorted(graph):
        if module in done or module not in reachable[module]:
            continue
        group = sorted(m for m in reachable[module] if module in reachable[m])
        done.update(group)
        real = [m for m in group if not any(o.startswith(m + ".") for o in group)]
        if len(real) > 1:
            found.append(group)
    return found


def test_no_module_is_part_of_an_import_circle() -> None:
    assert circles(import_graph(ROOT, PACKAGES)) == []


@pytest.mark.parametrize(("importer", "imported"), list(FORBIDDEN))
def test_dependencies_point_one_way(importer: str, imported: str) -> None:
    graph = import_graph(ROOT, PACKAGES)
    crossing = sorted(
        f"{a} -> {b}"
        for a, deps in graph.items()
        for b in deps
        if a.split(".")[0] == importer and b.split(".")[0] == imported
    )
    assert crossing == [], FORBIDDEN[importer, imported]


def test_the_check_sees_circles_through_functions_and_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg.a import A\n")
    (pkg / "a.py").write_text("from pkg import b\nclass A: ...\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.c import C\n"
    )
    (pkg / "c.py").write_text("def f():\n    from . import a\n")
    (pkg / "d.py").write_text("import pkg.a\n")  # imports into the circle, is not part of it

    graph = import_graph(tmp_path, ["pkg"])

    assert graph["pkg.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert circles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    (pkg / "c.py").write_text("def f():\n    from pkg import A\n")  # only via the package
    assert circles(import_graph(tmp_path, ["pkg"])) == [["pkg", "pkg.a", "pkg.b", "pkg.c"]]
