"""The floor plan holds: the import graph of kinabs/ and backends/ (imports inside functions
included) has no circles, few function-level imports of the project's own modules, and
the layers import only downwards."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "backends":
        parts = ["kinabs", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, int]]]:
    """Edges module -> project modules it imports, and the function-level imports."""
    files = [p for d in ("kinabs", "backends") for p in (ROOT / d).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    inner = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        top = {id(n) for n in tree.body}
        for n in ast.walk(tree):
            if isinstance(n, ast.If) and id(n) in top:  # `if TYPE_CHECKING:` blocks
                top |= {id(c) for c in n.body}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            found = set()
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    found.add(t)
            if found and id(node) not in top:
                inner.append((f"{path.relative_to(ROOT)}:{node.lineno}", sorted(found)))
            edges[name] |= found
    return edges, inner


EDGES, INNER = _imports()


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (the face left out)."""
    graph = {m: {t for t in ts if t != "kinabs"} for m, ts in edges.items() if m != "kinabs"}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in graph:
                continue
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert _circles(EDGES) == []


def test_few_function_level_imports_of_our_own_modules():
    """Only lazy loading of a backend by name may import inside a function."""
    assert len(INNER) <= 10, INNER


def test_the_circle_finder_finds_a_circle():
    assert _circles({"kinabs.a": {"kinabs.b"}, "kinabs.b": {"kinabs.a"}}) == [
        ["kinabs.a", "kinabs.b"]]


@pytest.mark.parametrize("lower, upper", [
    ("kinabs._lowering", "kinabs._fit"), ("kinabs._lowering", "kinabs._conformance"),
    ("kinabs._lowering", "kinabs.backends"), ("kinabs._lowering", "kinabs._simulate"),
    ("kinabs.sbml", "kinabs._fit"), ("kinabs.sbml", "kinabs._conformance"),
    ("kinabs.sbml", "kinabs.backends"), ("kinabs.sbml", "kinabs._lowering"),
    ("kinabs._fit", "kinabs._conformance"), ("kinabs.backends", "kinabs._fit"),
    ("kinabs.backends", "kinabs._conformance"), ("kinabs.backends", "kinabs.sbml"),
    ("kinabs.backends", "kinabs._simulate"), ("kinabs._model", "kinabs._lowering"),
    ("kinabs._optim", "kinabs._fit"), ("kinabs._optim", "kinabs.backends"),
    ("kinabs._optim", "kinabs._lowering"), ("kinabs._optim", "kinabs.sbml"),
])
def test_layers_import_only_downwards(lower, upper):
    bad = [(m, sorted(t for t in ts if t == upper or t.startswith(upper + ".")))
           for m, ts in EDGES.items() if m == lower or m.startswith(lower + ".")]
    assert [b for b in bad if b[1]] == []


def test_nothing_outside_a_backend_imports_its_private_modules():
    for module, targets in EDGES.items():
        for backend in ("kinabs.backends.jax", "kinabs.backends.torch"):
            if module.startswith(backend):
                continue
            private = [t for t in targets if t.startswith(backend + "._")]
            assert not private, (module, private)


def test_the_core_does_not_branch_on_backend_names():
    """Backend names appear in the core only in the registry (and in docs and help)."""
    for path in (ROOT / "kinabs").rglob("*.py"):
        if path.name == "_backend.py" and path.parent.name == "kinabs":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                names = [c.value for c in [node.left, *node.comparators]
                         if isinstance(c, ast.Constant)]
                assert not {"jax", "torch"} & set(names), f"{path}:{node.lineno}"
