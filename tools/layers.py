"""The import rules of the packages, checked by ``make lint``.

    python tools/layers.py [ROOT]

Arrows point down: charbot → adapters, training → bot → engine, storage. Each rule below
names what a package must not import; outside ``engine/`` only the engine's face
(``engine`` and ``engine.errors``) is imported; and no module takes part in an import
circle. Every import counts: at the top, inside functions (imported later, still a
dependency) and under ``TYPE_CHECKING`` (a circle there is still one a reader walks).
Tests may import anything. Prints one line per broken rule; exits 1 if there is any.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGES = ("charbot", "adapters", "training", "bot", "engine", "storage", "benchmarks", "docs")
FORBIDDEN = {
    "bot": ("adapters", "training", "charbot", "benchmarks"),
    "storage": ("bot", "engine", "adapters", "training", "charbot", "benchmarks"),
    "engine": ("bot", "storage", "adapters", "training", "charbot", "benchmarks"),
    "adapters": ("training", "charbot", "benchmarks"),
    "training": ("adapters", "charbot", "benchmarks"),
    "charbot": ("benchmarks",),
}
ENGINE_FACE = ("engine", "engine.errors")


def modules(root: Path) -> dict[str, Path]:
    """Every module of the checked packages by dotted name (scripts under docs/ too)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[int, str]]:
    """(line, module) for each import in ``path`` of a module in ``known``."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package[: len(package) - node.level + 1]
                base = ".".join([*prefix, *([node.module] if node.module else [])])
            # "from pkg import sub" imports the submodule; "from pkg import name" the package.
            subs = [f"{base}.{alias.name}" for alias in node.names]
            targets = [s for s in subs if s in known] or [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield node.lineno, target


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def problems(root: Path) -> list[str]:
    known = modules(root)
    graph: dict[str, set[str]] = {name: set() for name in known}
    found = []
    for name, path in known.items():
        top = name.split(".")[0]
        where = path.relative_to(root)
        for line, target in imported(name, path, known):
            graph[name].add(target)
            target_top = target.split(".")[0]
            if target_top in FORBIDDEN.get(top, ()):
                found.append(f"{where}:{line}: {top} must not import {target_top} ({target})")
            elif target_top == "engine" and top != "engine" and target not in ENGINE_FACE:
                found.append(
                    f"{where}:{line}: {target} is inside the engine; "
                    "import its face (engine, engine.errors)"
                )
    for circle in circles(graph):
        found.append("import circle: " + " → ".join([*circle, circle[0]]))
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent
    found = problems(root)
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
