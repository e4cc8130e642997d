"""Fail when the package's layout breaks its two structural rules.

1. No module of ``pytest_proofpack`` is longer than ``MAX_LINES`` lines: one concern per module.
2. The import graph between the package's modules has no cycle, counting imports inside functions and under
   ``TYPE_CHECKING`` too: a layer imports only from the layers below it, so a cycle is always a layering error,
   whether or not Python happens to tolerate it at run time.

An import of a package (``from pytest_proofpack.edits import x``) counts as an import of its ``__init__``; an
``__init__`` that re-exports its submodules therefore depends on them, and a submodule that imports its own
package's ``__init__`` closes a cycle. Submodules should import their siblings directly.

Usage: ``python ci/check_layout.py [PACKAGE_DIR]``; exit 0 when both rules hold, 1 with one line per violation.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_LINES = 400
PACKAGE = "pytest_proofpack"


def module_name(path: Path, root: Path) -> str:
    """The dotted module name of ``path`` inside the package rooted at ``root``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    """Every package module that ``tree`` (the module ``name``) imports, anywhere in its body."""
    found: set[str] = set()
    base = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_resolve(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            origin = _absolute(node, base)
            if origin is None:
                continue
            for alias in node.names:
                candidate = f"{origin}.{alias.name}"
                found.add(candidate if candidate in known else _resolve(origin, known))
    found.discard("")
    found.discard(name)
    return found


def _absolute(node: ast.ImportFrom, base: str) -> str | None:
    if node.level == 0:
        return node.module
    anchor = base.split(".")
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join([*anchor, node.module] if node.module else anchor)


def _resolve(dotted: str, known: set[str]) -> str:
    """The longest known module that ``dotted`` names (``""`` outside the package)."""
    parts = dotted.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return ""


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / PACKAGE
    files = sorted(root.rglob("*.py"))
    names = {module_name(path, root): path for path in files}
    known = set(names)
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines > MAX_LINES:
            problems.append(f"{path}: {lines} lines (limit {MAX_LINES}); split it by concern")
        tree = ast.parse(text, filename=str(path))
        graph[name] = imported_modules(tree, name, path.name == "__init__.py", known)
    for cycle in find_cycles(graph):
        problems.append("import cycle: " + " <-> ".join(cycle))
    for line in problems:
        print(line)
    if not problems:
        print(f"layout ok: {len(names)} modules, none over {MAX_LINES} lines, no import cycle")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
