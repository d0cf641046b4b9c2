"""``--set NAME=VALUE`` (``cli._settings``): every estimator parameter, forwarded.

Names and values are checked by the estimators' ``_parameter_constraints``:
the tests compare with them, not with a list of their own. The parser reads
them from ``PARAMETERS``, written out so as not to import the estimators: it
is compared here with the estimators' signatures and constraints.
"""

import inspect

import numpy as np
import pytest

from sklearn_pathkernel import PathKernelClassifier, PathKernelRegressor
from sklearn_pathkernel._compute._blocking import limit_threads
from sklearn_pathkernel.cli import _kernel_command, main
from sklearn_pathkernel.cli._settings import (
    COMMAND_DEFAULTS,
    PARAMETERS,
    check_name,
    parameter_constraints,
    parameter_table,
    parse_value,
    refusal,
)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

ROWS = "x1,x2,label\n0,1,a\n1,0,b\n1,1,a\n0,0,b\n2,1,a\n1,2,b\n"
NUMERIC_ROWS = ROWS.replace(",a\n", ",1.5\n").replace(",b\n", ",2.5\n")
TINY = ["--hidden-layer-sizes", "4", "--max-iter", "6", "--threads", "1"]


@pytest.fixture
def tiny_csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(ROWS)
    return path


def kernel_argv(tmp_path, train, *extra):
    out = str(tmp_path / "K.npy")
    return ["kernel", str(train), "--target", "label", "-o", out, *TINY, *extra]


@pytest.fixture
def made(monkeypatch):
    """The estimators the kernel command makes (and then fits), in order."""
    made = []
    original = _kernel_command.make_estimator

    def make_estimator(args, task):
        made.append(original(args, task))
        return made[-1]

    monkeypatch.setattr(_kernel_command, "make_estimator", make_estimator)
    return made


# -- the value rule --------------------------------------------------------------
@pytest.mark.parametrize(
    "text, value",
    [
        ("none", None),
        ("None", None),
        ("TRUE", True),
        ("false", False),
        ("10", 10),
        ("-1", -1),
        ("0.5", 0.5),
        ("1e-4", 1e-4),
        ("trapezoid", "trapezoid"),
        ("cuda:0", "cuda:0"),
        ("'10'", "10"),
        ('"none"', "none"),
        ("64,32", (64, 32)),
        ("64,", (64,)),
        ("1, 8, 8", (1, 8, 8)),
        ("a,0.5,none", ("a", 0.5, None)),
    ],
)
def test_parse_value(text, value):
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    "text, value", [("64", (64,)), ("64,32", (64, 32)), ("none", ()), ("()", ())]
)
def test_a_tuple_parameter_always_takes_a_tuple(text, value):
    assert parse_value(text, sequence=True) == value


# -- names -------------------------------------------------------------------------
def test_every_parameter_but_module_is_settable():
    # Either estimator's parameters: the regressor's add MLPRegressor's loss.
    constraints = PathKernelRegressor._parameter_constraints
    assert set(PathKernelClassifier._parameter_constraints) == set(constraints) - {
        "loss"
    }
    assert list(parameter_constraints()) == list(constraints)  # same parameters
    refused = [name for name, c in constraints.items() if refusal(name, c)]
    assert refused == ["module"]
    for name in constraints:
        if name not in refused:
            check_name(name)


def _source(table):
    """``table`` as the code of ``PARAMETERS``, to paste into cli/_settings.py."""
    rows = "".join(
        f"    {name!r}: {parameter!r},\n" for name, parameter in table.items()
    )
    return "PARAMETERS = {\n" + rows + "}"


def test_the_written_parameters_are_the_estimators():
    # Compared as code: the order, and 0 against 0.0 or False, count too.
    table = parameter_table()
    assert _source(PARAMETERS) == _source(table), (
        "cli/_settings.py PARAMETERS no longer matches the estimators; replace "
        "it with (then run ruff format):\n" + _source(table)
    )


def test_the_written_parameters_are_the_signatures():
    # Their __init__ signatures, not the constraints the table came from.
    expected = {}
    for cls in (PathKernelClassifier, PathKernelRegressor):
        for name, p in inspect.signature(cls).parameters.items():
            expected.setdefault(name, p.default)
    assert list(PARAMETERS) == list(expected)
    assert {name: p.default for name, p in PARAMETERS.items()} == expected
    assert [name for name, p in PARAMETERS.items() if not p.settable] == ["module"]


def test_a_changed_table_is_caught():
    table = dict(PARAMETERS)
    table["max_iter"] = table["max_iter"]._replace(default=200.0)
    assert _source(table) != _source(PARAMETERS)  # == would hold: 200 == 200.0
    assert table == PARAMETERS


def test_unknown_name_lists_the_valid_ones(tmp_path, tiny_csv, capsys):
    assert main(kernel_argv(tmp_path, tiny_csv, "--set", "kernel_node=3")) == 2
    err = capsys.readouterr().err
    assert "usage:" in err
    assert (
        "error: argument --set: unknown estimator parameter 'kernel_node' "
        "(did you mean kernel_nodes?); valid names: hidden_layer_sizes, activation, "
    ) in err
    assert "module" not in err.split("valid names:")[1]
    assert not (tmp_path / "K.npy").exists()


def test_a_callable_parameter_is_refused(tmp_path, tiny_csv, capsys):
    assert main(kernel_argv(tmp_path, tiny_csv, "--set", "module=mlp")) == 2
    err = capsys.readouterr().err
    assert (
        "error: argument --set: cannot set module: module takes a Python object "
        "(a callable, such as a torch module), which a command line cannot give; "
        "use the Python API"
    ) in err


# -- --help ------------------------------------------------------------------------
def test_help_lists_every_parameter_from_the_constraints(capsys):
    assert main(["kernel", "--help"]) == 0
    out = capsys.readouterr().out
    section = out.split("estimator parameters (--set NAME=VALUE, repeatable):\n")[1]
    listed, name = {}, None
    for line in section.splitlines():
        if not line or "not settable" in line:
            break
        if line.startswith("   "):  # a wrapped description goes on
            listed[name] += " " + line.strip()
            continue
        name, _, text = line.strip().partition(" ")
        listed[name] = text.strip()
    expected = [n for n in PathKernelRegressor._parameter_constraints if n != "module"]
    assert list(listed) == expected
    assert listed["quadrature"].startswith("'adaptive'|'left'|'simpson'|'trapezoid'")
    assert listed["kernel_nodes"] == (
        "None|int in [2, inf)|float in (0, 1] (default: 0.1)"
    )
    assert listed["random_state"].endswith(
        f"(default: {COMMAND_DEFAULTS['random_state']})"
    )
    assert "not settable from a shell: module" in section
    assert "values of --set NAME=VALUE" in out and "'text' or \"text\"" in out


# -- values reach the estimator, or scikit-learn's message the user -----------------
def test_set_reaches_the_estimator(tmp_path, tiny_csv, made, capsys):
    extra = ["--set", "quadrature=trapezoid", "--set", "kernel_nodes=0.5"]
    extra += ["--no-standardize", "--set", "dtype=float64", "--set", "n_jobs=1"]
    assert main(kernel_argv(tmp_path, tiny_csv, *extra)) == 0, capsys.readouterr()
    (est,) = made
    params = est.get_params()
    assert (params["quadrature"], params["kernel_nodes"]) == ("trapezoid", 0.5)
    assert (params["max_iter"], params["hidden_layer_sizes"]) == (6, (4,))
    assert (params["n_jobs"], params["random_state"]) == (1, 0)
    nodes = est.trajectory_.kernel_nodes()
    assert [step for step, _ in nodes] == [0, 3, 6]  # half of the 6 steps

    # The same estimator, by hand, gives the kernel written.
    X = np.array([[0, 1], [1, 0], [1, 1], [0, 0], [2, 1], [1, 2]], dtype=float)
    y = np.array(list("ababab"))
    with limit_threads(1):
        by_hand = PathKernelClassifier(
            (4,),
            max_iter=6,
            quadrature="trapezoid",
            kernel_nodes=0.5,
            dtype="float64",
            random_state=0,
        ).fit(X, y)
    assert by_hand.trajectory_.kernel_nodes() == nodes
    np.testing.assert_allclose(np.load(tmp_path / "K.npy"), by_hand.kernel(X))
    default = PathKernelClassifier((4,), max_iter=6, dtype="float64", random_state=0)
    assert default.fit(X, y).trajectory_.kernel_nodes() != nodes


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--set", "quadrature=bogus"],
            "--set quadrature=bogus: The 'quadrature' parameter of "
            "PathKernelRegressor must be a str among",
        ),
        (
            ["--set", "kernel_nodes=1.5"],
            "--set kernel_nodes=1.5: The 'kernel_nodes' parameter of "
            "PathKernelRegressor must be None, an int in the range [2, inf) or a "
            "float in the range (0.0, 1.0]. Got 1.5 instead.",
        ),
        (
            ["--max-iter", "0"],
            "--max-iter 0: The 'max_iter' parameter of PathKernelRegressor must be "
            "an int in the range [1, inf). Got 0 instead.",
        ),
        (
            ["--activation", "gelu"],
            "--activation gelu: The 'activation' parameter of PathKernelRegressor "
            "must be a str among",
        ),
        (
            ["--set", "early_stopping=1"],
            "--set early_stopping=1: The 'early_stopping' parameter of "
            "PathKernelRegressor must be an instance of 'bool'",
        ),
        (
            ["--task", "classification", "--momentum", "1"],
            "--momentum 1: The 'momentum' parameter of PathKernelClassifier must be "
            "a float in the range [0.0, 1.0). Got 1 instead.",
        ),
    ],
)
def test_scikit_learns_message_reaches_the_user(extra, message, tmp_path, capsys):
    train = tmp_path / "t.csv"
    train.write_text(NUMERIC_ROWS)  # a regression unless --task says otherwise
    assert main(kernel_argv(tmp_path, train, *extra)) == 2
    out, err = capsys.readouterr()
    assert err.startswith("sklearn-pathkernel kernel: error: ") and message in err
    assert err.count("\n") == 1 and out == ""  # before any work
    assert not (tmp_path / "K.npy").exists()


def test_checked_at_fit_with_the_estimators_message(tmp_path, tiny_csv, capsys):
    argv = kernel_argv(tmp_path, tiny_csv, "--hidden-layer-sizes", "8,0")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        "error: training failed: The 'hidden_layer_sizes' parameter of "
        "PathKernelClassifier must be a positive int or a sequence of positive "
        "ints; got (8, 0) instead."
    ) in err


def test_regressor_gets_the_settings(tmp_path, made, capsys):
    train = tmp_path / "t.csv"
    train.write_text(NUMERIC_ROWS)
    argv = kernel_argv(tmp_path, train, "--set", "hidden_layer_sizes=3,2")
    argv += ["--set", "random_state=none", "--set", "verbose=0", "-vv"]
    assert main(argv) == 0, capsys.readouterr()
    (est,) = made
    assert isinstance(est, PathKernelRegressor)
    assert est.get_params()["hidden_layer_sizes"] == (3, 2)
    assert est.get_params()["random_state"] is None
    assert est.get_params()["verbose"] == 0  # --set wins over -vv
