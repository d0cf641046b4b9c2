"""The package as a whole: its public names, and imports without cycles."""

import ast
import inspect
from pathlib import Path

import sklearn_pathkernel

PACKAGE = Path(sklearn_pathkernel.__file__).parent


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_at_load(path):
    """The package modules ``path`` imports when it is loaded.

    Only statements at module level count (imports inside a function run
    later, when the function is called, and cannot form a cycle at load).
    """
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, node.module] if node.module else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in _MODULES else base)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = (
                [node.module]
                if isinstance(node, ast.ImportFrom)
                else [alias.name for alias in node.names]
            )
            found.update(n for n in names if n in _MODULES)
    return found - {name}


_PATHS = sorted(PACKAGE.rglob("*.py"))
_MODULES = {_module_name(path) for path in _PATHS}


def _cycles(graph):
    """Every back edge of a depth-first walk: each closes an import cycle."""
    state, cycles = {}, []

    def visit(module, trail):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append([*trail, module, target])
            elif target not in state:
                visit(target, [*trail, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    return cycles


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycle_between_modules():
    graph = {_module_name(path): _imports_at_load(path) for path in _PATHS}
    assert (
        "sklearn_pathkernel._kernels._path"
        in graph["sklearn_pathkernel._explain._decompose"]
    )
    assert not _cycles(graph)


def test_every_public_name_is_documented_with_an_example():
    for name in sklearn_pathkernel.__all__:
        obj = getattr(sklearn_pathkernel, name)
        if name.startswith("__"):
            continue
        doc = inspect.getdoc(obj) or ""
        assert "Examples" in doc and ">>>" in doc, name
