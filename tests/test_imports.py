"""mmit's modules import one another without cycles. The import graph is read from the source with
``ast``: module-level imports (those that run when a module is first imported), and with them the
imports deferred into functions, since a deferred import that closes a cycle only hides it."""

from __future__ import annotations

import ast
from pathlib import Path

import mmit

ROOT = Path(mmit.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def mmit_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(tree: ast.Module, name: str, is_package: bool, deferred: bool) -> set[str]:
    """Modules named by the imports that run on import: at top level, or in a top-level if / try /
    with block, never under ``if TYPE_CHECKING``; with ``deferred`` also those in functions and classes."""
    found: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                    visit(block)
            elif isinstance(node, ast.With):
                visit(node.body)
            elif deferred and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                visit(node.body)
            elif deferred and isinstance(node, ast.For | ast.While):
                visit(node.body)
                visit(node.orelse)

    visit(tree.body)
    return found


def import_graph(deferred: bool = False) -> dict[str, set[str]]:
    """Each mmit module -> the mmit modules it imports."""
    modules = mmit_modules()
    graph = {}
    for name, path in modules.items():
        targets = imports(ast.parse(path.read_text()), name, path.name == "__init__.py", deferred)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_graph_sees_mmit_imports():
    graph = import_graph()
    assert "mmit.training.loss" in graph["mmit.training.loop"]
    assert "mmit.training.distributed" in graph["mmit.training.loop"]  # `from mmit.training import distributed`
    assert "mmit.training.loop" not in graph["mmit.factory"]  # imported inside functions only
    assert "mmit.training.loop" in import_graph(deferred=True)["mmit.factory"]
    assert "mmit.data.datasets" not in import_graph(deferred=True)["mmit.data.loader"]  # under TYPE_CHECKING
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycles_at_module_level():
    found = [sorted(c) for c in cycles(import_graph())]
    assert not found, f"import cycles among mmit modules (module-level imports): {found}"


def test_no_import_cycles_through_deferred_imports():
    found = [sorted(c) for c in cycles(import_graph(deferred=True))]
    assert not found, f"import cycles among mmit modules (counting imports inside functions): {found}"


def test_the_data_steps_import_forward_only():
    """Samples -> tokens -> datasets -> batches: no step imports a later one, not even inside a function."""
    graph = import_graph(deferred=True)
    steps = ["mmit.data.samples", "mmit.data.tokenize", "mmit.data.datasets", "mmit.data.collate", "mmit.data.loader"]
    for i, step in enumerate(steps):
        backward = {later for later in graph[step] & set(steps[i + 1 :])}
        assert not backward, f"{step} imports {sorted(backward)}"


def test_the_training_helpers_never_import_the_loop():
    """Not even inside a function: the loop uses them, they do not reach back into it."""
    for name in ("distributed", "device", "checkpoint", "loss", "tracking"):
        tree = ast.parse((ROOT / "training" / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "mmit.training.loop" not in imported, name
