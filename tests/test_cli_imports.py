"""The command line sits on top of the library: imports go one way only.

No module outside ``sklearn_pathkernel/cli/`` imports the CLI (except
``__main__.py``, which runs it), and the modules of ``cli/`` do not import
each other in a cycle.
"""

import ast
from pathlib import Path

import sklearn_pathkernel

PACKAGE = Path(sklearn_pathkernel.__file__).parent
CLI = PACKAGE / "cli"


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path):
    """Absolute names of the modules ``path`` imports (``from a import b``: a.b too)."""
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            submodules = {f"{base}.{alias.name}" for alias in node.names}
            names.update(submodules)
            if not all(is_module(name) for name in submodules):
                names.add(base)  # "from package import function" runs package
    return names


def is_module(name):
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def test_the_library_does_not_import_the_cli():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if CLI in path.parents or path.name == "__main__.py":
            continue
        cli = {
            name
            for name in imported_modules(path)
            if name == "sklearn_pathkernel.cli"
            or name.startswith("sklearn_pathkernel.cli.")
        }
        if cli:
            offenders[str(path.relative_to(PACKAGE))] = sorted(cli)
    assert not offenders


def test_main_imports_the_cli():
    # The check above would see relative imports: it sees this one.
    assert "sklearn_pathkernel.cli" in imported_modules(PACKAGE / "__main__.py")


def test_no_import_cycle_inside_the_cli():
    modules = {module_name(path): path for path in CLI.glob("*.py")}
    graph = {
        name: {m for m in imported_modules(path) if m in modules and m != name}
        for name, path in modules.items()
    }
    done, active = set(), []

    def visit(name):
        assert name not in active, "import cycle: " + " -> ".join([*active, name])
        if name in done:
            return
        active.append(name)
        for other in sorted(graph[name]):
            visit(other)
        active.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def private(name):
    """``_name``, not ``__dunder__``."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def underscore_uses(path):
    """``from m import _name`` and ``module._name`` in ``path``: others' privates.

    Importing a private module (``from . import _csv``) is fine; reaching
    into it for an underscore name is not.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    modules, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            found += [
                f"from {node.module} import {a.name}"
                for a in node.names
                if private(a.name)
            ]
            modules.update(a.asname or a.name for a in node.names)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and private(node.attr)
            and node.attr != "_parameter_constraints"  # scikit-learn's convention
        ):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_no_cli_module_uses_another_modules_underscore_names():
    offenders = {
        path.name: underscore_uses(path)
        for path in CLI.rglob("*.py")
        if underscore_uses(path)
    }
    assert not offenders
