"""The package as a whole: its public names, and imports without cycles."""

import ast
import importlib
import inspect
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


# -- the floor plan --------------------------------------------------------
_DESIGN = PACKAGE.parent / "docs" / "design.md"


def _module_map():
    """The paths the module map of docs/design.md (section 9) names."""
    text = _DESIGN.read_text()
    start = text.index("<!-- module map -->")
    end = text.index("<!-- end of module map -->")
    return set(re.findall(r"^\| `([\w/]+(?:\.py|/))`", text[start:end], re.MULTILINE))


def test_the_module_map_lists_every_module_and_folder():
    modules = {
        path.relative_to(PACKAGE).as_posix()
        for path in _PATHS
        if path.name != "__init__.py" or path.parent == PACKAGE
    }
    folders = {
        path.parent.relative_to(PACKAGE).as_posix() + "/"
        for path in _PATHS
        if path.name == "__init__.py" and path.parent != PACKAGE
    }
    tree, listed = modules | folders, _module_map()
    assert tree == listed, (
        f"not in docs/design.md: {sorted(tree - listed)}; "
        f"listed but absent: {sorted(listed - tree)}"
    )


def test_few_modules_at_the_top():
    # Estimator-facing modules only; the rest live in rooms named by job.
    top = [path.name for path in PACKAGE.glob("*.py")]
    assert len(top) <= 12, sorted(top)


def _underscore_imports(source, name, is_package=False):
    """``(line, what)`` for each underscore name module ``name`` takes from another.

    ``from x import _name`` where ``_name`` is not a module, and
    ``module._name`` on a module the file imported. Importing a private
    *module* is fine; reaching into another module's private names is not.
    """
    package = name if is_package else name.rpartition(".")[0]
    tree = ast.parse(source)
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (
            node.level or (node.module or "").startswith("sklearn_pathkernel")
        ):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module
            for alias in node.names:
                if f"{base}.{alias.name}" in _MODULES:
                    modules.add(alias.asname or alias.name)
                elif alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append((node.lineno, f"from {base} import {alias.name}"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return found


def test_the_underscore_finder_finds_them():
    source = (
        "from ._compute import _tasks\n"
        "from ._compute._tasks import _nbytes, Shared\n"
        "x = _tasks._nbytes\n"
        "y = _tasks.Shared, _nbytes.__name__\n"
    )
    found = _underscore_imports(source, "sklearn_pathkernel._example")
    assert [what for _, what in found] == [
        "from sklearn_pathkernel._compute._tasks import _nbytes",
        "_tasks._nbytes",
    ]


def test_no_module_reaches_into_another_modules_private_names():
    found = {
        path.relative_to(PACKAGE).as_posix(): _underscore_imports(
            path.read_text(), _module_name(path), path.name == "__init__.py"
        )
        for path in _PATHS
    }
    assert not {path: hits for path, hits in found.items() if hits}


def test_select_engine_names_no_engine_class():
    from sklearn_pathkernel import engines

    source = inspect.getsource(engines.select_engine)
    code = source.split('"""')[-1]  # the body after the docstring
    for name in engines.ENGINES.values():
        assert name.__name__ not in code


def _function_lengths():
    """``(lines of code, place)`` of every function: no docstring, blank or comment."""
    for path in _PATHS:
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            body = node.body
            if (
                isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                body = body[1:]
            if not body:
                continue
            code = [
                line
                for line in lines[body[0].lineno - 1 : node.end_lineno]
                if line.strip() and not line.strip().startswith("#")
            ]
            yield len(code), f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}"


def test_no_function_is_longer_than_sixty_lines():
    assert [place for n, place in _function_lengths() if n > 60] == []


def test_no_public_example_imports_a_private_module():
    def docstrings(obj):
        yield inspect.getdoc(obj) or ""
        if inspect.isclass(obj):
            for attribute, value in vars(obj).items():
                if not attribute.startswith("_") and callable(value):
                    yield inspect.getdoc(value) or ""

    private = re.compile(r">>> (from|import) sklearn_pathkernel\.(_|engines\._)")
    for name in sklearn_pathkernel.__all__:
        if name.startswith("__"):
            continue
        for doc in docstrings(getattr(sklearn_pathkernel, name)):
            assert not private.search(doc), name


# -- the public names, imported on first use --------------------------------------
_HEAVY = ("torch", "sklearn", "scipy", "numpy")


def _run(code):
    """Run ``code`` in a fresh interpreter; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_the_package_imports_nothing_heavy():
    out = _run(
        "import sys, sklearn_pathkernel as s\n"
        f"print(sorted(m for m in {_HEAVY!r} if m in sys.modules))\n"
        "print(s.__version__, sorted(set(s.__all__) - set(dir(s))))\n"
    )
    assert out.splitlines() == ["[]", f"{sklearn_pathkernel.__version__} []"]
    # A public name, once asked for, is kept: later lookups are plain.
    sklearn_pathkernel.PathKernelClassifier  # noqa: B018
    assert "PathKernelClassifier" in vars(sklearn_pathkernel)


def test_every_public_name_is_its_modules():
    namespace = {}
    exec("from sklearn_pathkernel import *", namespace)
    assert set(sklearn_pathkernel.__all__) <= set(namespace)
    for name in sklearn_pathkernel.__all__:
        obj = getattr(sklearn_pathkernel, name)
        assert namespace[name] is obj
        if name != "__version__":  # the object its own module holds
            assert getattr(importlib.import_module(obj.__module__), name) is obj
    for name in ("cli", "engines", "exceptions", "plotting"):
        assert (
            getattr(sklearn_pathkernel, name).__name__ == f"sklearn_pathkernel.{name}"
        )
        assert name in dir(sklearn_pathkernel)
    assert set(sklearn_pathkernel.__all__) <= set(dir(sklearn_pathkernel))
    with pytest.raises(AttributeError, match="has no attribute 'PathKernelClassifer'"):
        sklearn_pathkernel.PathKernelClassifer  # noqa: B018


def test_an_estimator_pickles_through_the_lazy_name():
    est = sklearn_pathkernel.PathKernelRegressor(max_iter=3, hidden_layer_sizes=(2,))
    back = pickle.loads(pickle.dumps(est))
    assert type(back) is sklearn_pathkernel.PathKernelRegressor
    assert back.get_params() == est.get_params()
