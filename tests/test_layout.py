"""The house rules of issue 13 that a test can keep: module sizes and import cycles."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"actors": "perdure.actors", "runtime": "perdure.runtime", "client": "perdure.client"}
SIZE_LIMIT = 400
SIZE_REASON = "Size:"  # a module over the limit says why in its docstring, after this word
SIZE_SLACK = 25  # lines a stated "Size: about N lines" may be off by


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_is_over_the_size_limit_without_a_reason(name: str) -> None:
    path = _modules()[name]
    lines = path.read_text().count("\n")
    if lines <= SIZE_LIMIT:
        return
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert SIZE_REASON in doc, (
        f"{path.relative_to(ROOT)} has {lines} lines (limit {SIZE_LIMIT}): split it, "
        f"or say why it is one idea in its docstring ('{SIZE_REASON} ...')"
    )
    stated = re.search(SIZE_REASON + r" about ([\d,]+) lines", doc)
    if stated is not None:  # a size stated in the docstring stays true as the module grows
        about = int(stated.group(1).replace(",", ""))
        assert abs(lines - about) <= SIZE_SLACK, (
            f"{path.relative_to(ROOT)} has {lines} lines; its docstring says about {about}"
        )


def _imports(name: str, path: Path) -> set[str]:
    """Every perdure module ``name`` imports when it runs: module level and inside functions;
    imports under ``if TYPE_CHECKING:`` do not run and are left out."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return {target for target in out if target.startswith("perdure.")}


def test_no_import_cycle_between_modules() -> None:
    modules = _modules()
    graph = {
        name: {t for t in _imports(name, path) if t in modules and t != name}
        for name, path in modules.items()
    }
    # A package's __init__ re-exports its modules (and ``from . import x`` names the package):
    # a module's own ancestor packages are not dependencies of it.
    for name in list(graph):
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
