"""The command line sits on top of the library: imports go one way only.

No module outside ``sklearn_pathkernel/cli/`` imports the CLI (except
``__main__.py``, which runs it), and the modules of ``cli/`` do not import
each other in a cycle. And it starts at once: ``--help``, ``--version`` and
usage errors import neither torch, scikit-learn, SciPy nor NumPy (checked in
fresh interpreters; ``benchmarks/bench_cli_startup.py`` times them).
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


# -- starting at once ----------------------------------------------------------------
HEAVY = ("torch", "sklearn", "scipy", "numpy")
KERNEL = ["kernel", "t.csv", "--target", "y", "-o", "K.npy"]

# argv, exit code, a piece of what it prints
CASES = [
    (["--help"], 0, "usage: sklearn-pathkernel"),
    (["--version"], 0, "sklearn-pathkernel 0."),
    (["kernel", "--help"], 0, "  kernel_nodes         None|int in [2, inf)|"),
    (["demo", "--help"], 0, "comma-separated datasets to run, from digits,"),
    ([], 2, "usage:"),
    (["kernel", "t.csv"], 2, "the following arguments are required: --target"),
    ([*KERNEL, "--set", "kernel_node=3"], 2, "(did you mean kernel_nodes?)"),
    ([*KERNEL, "--set", "module=x"], 2, "cannot set module"),
    ([*KERNEL, "--threads", "0"], 2, "expected a positive integer"),
    (["demo", "--datasets", "iris"], 2, "unknown dataset 'iris'"),
    (["fit"], 2, "invalid choice: 'fit'"),
]

# What the console script runs (import sklearn_pathkernel.cli, call main), for
# every case in turn; after each, the heavy packages imported so far.
PROBE = f"""
import contextlib, io, json, sys
from sklearn_pathkernel.cli import main
found = []
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(argv)
    heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
    found.append([code, out.getvalue(), heavy])
print(json.dumps(found))
"""


def run_python(*args):
    """``python *args`` in a fresh interpreter that imports this package."""
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env
    )


@pytest.fixture(scope="module")
def probed():
    """Every case in one fresh interpreter: ``[code, text, heavy]`` per case."""
    done = run_python("-c", PROBE, json.dumps([argv for argv, _, _ in CASES]))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: " ".join(CASES[i][0]))
def test_help_and_usage_errors_import_nothing_heavy(case, probed):
    argv, code, text = CASES[case]
    found_code, found_text, heavy = probed[case]
    assert found_code == code and text in found_text, found_text
    assert heavy == [], f"main({argv}) imported {heavy}"


def test_python_dash_m_help_imports_nothing_heavy():
    # The real entry point, __main__.py included; -X importtime lists every import.
    done = run_python("-X", "importtime", "-m", "sklearn_pathkernel", "--help")
    assert done.returncode == 0 and "usage: sklearn-pathkernel" in done.stdout
    imported = {
        line.rpartition("|")[2].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "sklearn_pathkernel" in imported and "argparse" in imported
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))
