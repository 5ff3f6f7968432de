"""Print the import cycles of the ``pytest_mgpu`` package and check that its imports point downward.

Usage: ``python scripts/import_cycles.py [--root PATH/TO/pytest_mgpu] [--graph]``

The graph is read from the code's own import statements with :mod:`ast`: module-level and
function-level imports count, imports under ``if TYPE_CHECKING:`` do not (they never run). An
edge goes to the most specific module named (``from pkg.sub import mod`` -> ``pkg.sub.mod`` when
that is a module) and, when the target lies in another subpackage, to that subpackage's
``__init__`` too, since importing it runs that first.

Two checks, each listed when it fails (exit status 1):

- cycles: every strongly connected group of modules, with one cycle through it;
- layers: every import from a module to one in a higher layer of :data:`LAYERS` (imports within a
  layer are free, but must not form a cycle), and every module that no layer claims.

Exit status 0 prints one line: modules, imports, and no cycle.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

#: The package's layers, highest first: a module may import from its own layer and those below.
#: A name claims the module of that name and every module under it; the most specific claim wins.
LAYERS: list[tuple[str, list[str]]] = [
    ("entry", ["plugin", "cli"]),
    ("run", ["run"]),
    ("report", ["report"]),
    ("judge", ["judge"]),
    ("cluster", ["cluster"]),
    ("engines", ["engines"]),
    ("measure", ["measure"]),
    ("sim", ["sim"]),
    ("shared", ["__init__", "errors", "layout", "machine", "gpus", "cards", "models", "progress"]),
]


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _imports(tree: ast.AST, types: bool = False) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: all but those in the body of ``if TYPE_CHECKING:``.

    With ``types``, those in the body of ``if TYPE_CHECKING:`` instead, and only them.
    """
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, typing_only = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if typing_only == types:
                yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend((child, True) for child in node.body)
            stack.extend((child, typing_only) for child in node.orelse)
            continue
        stack.extend((child, typing_only) for child in ast.iter_child_nodes(node))


def discover(root: Path) -> tuple[str, dict[str, Path], set[str]]:
    """The package's name, its modules (dotted name -> file) and which of them are packages."""
    package = root.name
    modules: dict[str, Path] = {}
    packages: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if any(p == "__pycache__" for p in parts):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
            packages.add(".".join([package, *parts]))
        modules[".".join([package, *parts])] = path
    return package, modules, packages


def graph(root: Path, types: bool = False) -> tuple[str, dict[str, set[tuple[str, int]]]]:
    """The import graph: module -> {(imported module, line)}, within the package only.

    With ``types``, the graph of the imports under ``if TYPE_CHECKING:`` instead.
    """
    package, modules, packages = discover(root)
    edges: dict[str, set[tuple[str, int]]] = {m: set() for m in modules}

    def owner(name: str) -> str | None:
        """The most specific module of the package that ``name`` lies in."""
        while name:
            if name in modules:
                return name
            name = name.rpartition(".")[0]
        return None

    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        here = module if module in packages else module.rpartition(".")[0]
        for node in _imports(tree, types):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = here.split(".")
                    if node.level > 1:
                        base_parts = base_parts[: -(node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                ]
            for target in targets:
                if not (target == package or target.startswith(package + ".")):
                    continue
                found = owner(target)
                if found is None or found == module:
                    continue
                edges[module].add((found, node.lineno))
                # Importing pkg.sub.mod runs pkg.sub's __init__ first, unless it is our own package.
                parent = found.rpartition(".")[0]
                while parent and parent != package:
                    if parent in packages and not (module == parent or module.startswith(parent + ".")):
                        edges[module].add((parent, node.lineno))
                    parent = parent.rpartition(".")[0]
    return package, edges


def strongly_connected(edges: dict[str, set[tuple[str, int]]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module (or importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    counter = 0
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w, _ in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or any(t == v for t, _ in edges.get(v, ())):
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(groups)


def one_cycle(group: list[str], edges: dict[str, set[tuple[str, int]]]) -> list[tuple[str, int]]:
    """A shortest cycle through the group's first module: [(module, line of its import), ...]."""
    members = set(group)
    start = group[0]
    previous: dict[str, tuple[str, int]] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w, line in sorted(edges[v]):
                if w not in members:
                    continue
                if w == start:
                    path = [(v, line)]
                    while v != start:
                        v, line = previous[v]
                        path.append((v, line))
                    return list(reversed(path))
                if w not in previous:
                    previous[w] = (v, line)
                    nxt.append(w)
        frontier = nxt
    return []


def layer_of(module: str, package: str) -> int | None:
    """The index of the module's layer in :data:`LAYERS` (0 is the highest), or None if unclaimed."""
    rel = module[len(package) + 1 :] if module != package else "__init__"
    best: tuple[int, int] | None = None
    for i, (_, names) in enumerate(LAYERS):
        for name in names:
            if rel == name or rel.startswith(name + "."):
                depth = name.count(".") + 1
                if best is None or depth > best[0]:
                    best = (depth, i)
    return None if best is None else best[1]


def main(argv: list[str] | None = None) -> int:
    """Print the cycles and upward imports; 1 if there is any, else 0 with a one-line summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parent.parent / "pytest_mgpu"
    parser.add_argument("--root", type=Path, default=default, help="the package directory (default: %(default)s)")
    parser.add_argument("--graph", action="store_true", help="also print every edge")
    parser.add_argument("--no-layers", action="store_true", help="check for cycles only")
    parser.add_argument(
        "--types", action="store_true", help="also list imports under if TYPE_CHECKING: that point up (not counted)"
    )
    args = parser.parse_args(argv)
    package, edges = graph(args.root.resolve())
    n_edges = sum(len({t for t, _ in targets}) for targets in edges.values())
    if args.graph:
        for module in sorted(edges):
            for target in sorted({t for t, _ in edges[module]}):
                print(f"{module} -> {target}")
    problems = 0
    groups = strongly_connected(edges)
    for group in groups:
        problems += 1
        print(f"cycle through {len(group)} modules: {', '.join(m[len(package) + 1 :] or m for m in group)}")
        path = one_cycle(group, edges)
        print("  e.g. " + " -> ".join(f"{m}:{line}" for m, line in path) + f" -> {group[0]}")
    if not args.no_layers:
        for module in sorted(edges):
            mine = layer_of(module, package)
            if mine is None:
                problems += 1
                print(f"no layer claims {module}: add it to LAYERS in {Path(__file__).name}")
                continue
            for target, line in sorted(edges[module]):
                if any(t.startswith(target + ".") and ln == line for t, ln in edges[module]):
                    continue  # the package of a module this line imports: that module is listed
                theirs = layer_of(target, package)
                if theirs is not None and theirs < mine:
                    problems += 1
                    print(
                        f"upward import: {module}:{line} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]})"
                    )
    if args.types:
        _, typing_edges = graph(args.root.resolve(), types=True)
        for module in sorted(typing_edges):
            mine = layer_of(module, package)
            for target, line in sorted(typing_edges[module]):
                if any(t.startswith(target + ".") and ln == line for t, ln in typing_edges[module]):
                    continue
                theirs = layer_of(target, package)
                if mine is not None and theirs is not None and theirs < mine:
                    print(f"note: type-only upward import: {module}:{line} imports {target} (not counted)")
    if problems:
        print(f"{problems} problem(s) in {package}: {len(edges)} modules, {n_edges} imports, {len(groups)} cycle(s)")
        return 1
    print(f"{package}: {len(edges)} modules, {n_edges} imports, no cycle, every import points down its layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
