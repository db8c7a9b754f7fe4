"""The house's shape: no two ferlab modules import each other, directly or around a loop (STYLE.md: "no import
circles; where two need the same piece, it moves to a module below both"). Imports inside functions count: a
function-level import hides a loop from Python's import machinery, not from the reader."""
from __future__ import annotations

import ast
from pathlib import Path

import ferlab

SRC = Path(ferlab.__file__).resolve().parent
# Loops allowed for a while (none now). An entry here that is no longer a loop fails the test below, so an entry
# leaves with the fix.
KNOWN: list[list[str]] = []


def module_names(root: Path = SRC) -> dict[str, Path]:
    """{dotted module name: file} for every .py under the package (a package is its __init__.py)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The ferlab modules `name` imports anywhere in its file (top level, functions, classes), relative imports
    resolved; `from pkg import x` is an import of pkg.x where x is a module, else of pkg. A string that is a
    module's whole dotted name counts too: it is there to be imported by name (`importlib.import_module`, as
    `ferlab.__getattr__` does)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.add(sub if sub in modules else target)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("ferlab."):
            found.add(node.value)
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    modules = module_names(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted: every import loop is
    inside one of them."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_the_graph_sees_relative_and_function_level_imports():
    graph = import_graph()
    assert "ferlab.models.registry" in graph["ferlab.models"]      # from .registry import ... in an __init__
    assert "ferlab.inference.preprocess" in graph["ferlab.engine.checkpoint"]   # from ..inference.preprocess
    assert "ferlab.serve.app" in graph["ferlab.cli"]                # imported inside a function
    assert "ferlab.inference.predictor" in graph["ferlab"]          # named for importlib (the lazy public API)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    loops = cycles(import_graph())
    new = [c for c in loops if c not in KNOWN]
    assert not new, "modules that import each other (directly or around a loop): " + "; ".join(
        " <-> ".join(c) for c in new) + ". Move what both need to a module below both"
    gone = [c for c in KNOWN if c not in loops]
    assert not gone, f"no longer import loops: {gone}; remove them from KNOWN in {Path(__file__).name}"
