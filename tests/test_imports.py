"""The package's modules import each other one way: no import cycle, not even through a function-level import."""

from __future__ import annotations

import ast
from pathlib import Path

import bioformers

PACKAGE = Path(bioformers.__file__).parent


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports, anywhere in the file (functions and ``TYPE_CHECKING`` too).

    ``from . import x`` and ``from .x import y`` point at the submodule ``x`` when there is one,
    ``from .. import y`` at the package (its ``__init__``); the parents a submodule import runs are
    not counted.
    """
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, (path, is_package) in modules.items():
        here = name if is_package else name.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(known(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*parent, node.module] if node.module else parent)
                imported.update(known(f"{base}.{alias.name}") or known(base) for alias in node.names)
        graph[name] = {m for m in imported if m is not None and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    # the graph sees relative and package imports (a parser that found nothing would pass)
    assert {"bioformers.pp", "bioformers.tl"} <= graph["bioformers"]
    assert {"bioformers.pp._binning", "bioformers.pp._rank"} <= graph["bioformers.pp._tokens"]
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(
        " <-> ".join(c) + "\n    " + "\n    ".join(f"{v} -> {sorted(graph[v] & set(c))}" for v in c) for c in found
    )


def test_a_function_level_import_closes_a_cycle(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import g\n\ndef f():\n    return g()\n")
    (package / "b.py").write_text("def g():\n    from . import a\n\n    return a\n")
    (package / "c.py").write_text("from pkg.a import f\n")
    graph = import_graph(package)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a"}}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]
