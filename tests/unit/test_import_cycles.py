"""mesh's modules import each other without cycles, lazy imports included.

A cycle hidden by a function-level import (as ``config -> jobsync -> rpc.server ->
config`` once was) works until someone moves an import; this graph counts every import
of a mesh module anywhere in a file, except under ``if TYPE_CHECKING:``. Importing a
submodule runs its package's ``__init__`` first, so that counts as an import of the
package too (but a module's import of its own package does not).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "mesh"


def modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        name = ".".join(p.relative_to(ROOT.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def imports(path: Path, known: dict[str, Path], name: str) -> set[str]:
    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            yield child
            yield from walk(child)

    out: set[str] = set()
    for node in walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module in known:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
    # importing mesh.a.b first runs mesh.a's __init__ (which may import more)
    out |= {".".join(m.split(".")[:i]) for m in set(out) for i in range(2, m.count(".") + 1)}
    return {d for d in out - {name} if not name.startswith(d + ".") and d in known}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    known = modules()
    graph = {name: imports(path, known, name) for name, path in known.items()}
    assert cycles(graph) == []


def test_the_checker_sees_a_lazy_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_the_top_level_keeps_only_what_is_shared():
    top = sorted(p.stem for p in ROOT.glob("*.py"))
    assert len(top) <= 10, top
