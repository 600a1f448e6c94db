"""Print paramctl's internal import graph (which module imports which) and any import cycle.

Read from the source with `ast`, so nothing is imported. Both module-level imports and the lazy ones inside
functions count: a lazy import that closes a cycle still couples the two modules both ways. Imports under
`if TYPE_CHECKING:` do not: they name types for annotations and never run.
tests/test_architecture.py runs the same analysis and fails on a cycle or an arrow pointing the wrong way.

    python scripts/import_graph.py            # one line per module: module -> what it imports
    python scripts/import_graph.py --layers   # the graph collapsed to packages (cli, ops, loaders, ...)
"""

from __future__ import annotations

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "paramctl"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The paramctl modules one file imports (`from paramctl.x import y` counts as paramctl.x.y when that is a
    module, else paramctl.x)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    found.discard(module_name(path))
    return found


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of the module but those under `if TYPE_CHECKING:`."""
    nodes, pending = [], [tree]
    while pending:
        node = pending.pop()
        nodes.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                pending.extend(child.orelse)
                continue
            pending.append(child)
    return nodes


def graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) - {"paramctl"} for p in paths}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def layer(module: str) -> str:
    """The package a module belongs to below paramctl (`paramctl.ops.diff` -> `ops`), or the module itself."""
    return module.split(".")[1] if module.count(".") else module


def main() -> int:
    edges = graph()
    if "--layers" in sys.argv:
        layers: dict[str, set[str]] = {}
        for source, targets in edges.items():
            layers.setdefault(layer(source), set()).update(layer(t) for t in targets if layer(t) != layer(source))
        edges = layers
    for source in sorted(edges):
        print(f"{source} -> {', '.join(sorted(edges[source])) or '(nothing)'}")
    found = cycles(edges)
    for group in found:
        print("cycle:", " <-> ".join(group))
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports, {len(found)} cycles")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
