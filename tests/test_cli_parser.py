"""``cli._parser``: the options, their help, their choices and their checks."""

import pytest

from sklearn_pathkernel._kernels._normalize import NORMALIZATIONS
from sklearn_pathkernel._model._network import ACTIVATIONS
from sklearn_pathkernel._model._validation import DTYPES
from sklearn_pathkernel.cli import main
from sklearn_pathkernel.cli._demo import DATASETS
from sklearn_pathkernel.cli._parser import build_parser


def kernel_args(*extra):
    argv = ["kernel", "t.csv", "--target", "y", "-o", "K.npy", *extra]
    return build_parser().parse_args(argv)


def usage_error(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "usage:" in err, err
    return err


def test_help_of_every_command(capsys):
    assert main(["kernel", "--help"]) == 0
    out = capsys.readouterr().out
    for option in (
        "--target",
        "--output",
        "--test",
        "--test-output",
        "--task",
        "--hidden-layer-sizes",
        "--activation",
        "--max-iter",
        "--learning-rate-init",
        "--solver",
        "--momentum",
        "--normalize",
        "mean_diagonal",
        "--no-standardize",
        "--dtype",
        "--delimiter",
        "--random-state",
        "--threads",
        "--verbose",
        "task detection",
        "example:",
    ):
        assert option in out, option
    # The rule of --task auto is type_of_target's.
    assert "type_of_target" in out and "binary" in out and "multiclass" in out
    assert main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--quick", "--output", "--datasets", "--random-state", "--threads"):
        assert option in out, option
    for name in DATASETS:
        assert name in out


def test_choices_are_the_package_constants():
    kernel = build_parser()._subparsers._group_actions[0].choices["kernel"]
    choices = {action.dest: action.choices for action in kernel._actions}
    assert list(choices["activation"]) == list(ACTIVATIONS)
    assert list(choices["dtype"]) == list(DTYPES)
    assert list(choices["normalize"]) == list(NORMALIZATIONS)
    assert list(choices["task"]) == ["auto", "classification", "regression"]


def test_defaults_and_conversions():
    args = kernel_args()
    assert (args.task, args.hidden_layer_sizes, args.activation) == (
        "auto",
        (100,),
        "tanh",
    )
    assert (args.standardize, args.delimiter, args.threads) == (True, ",", None)
    args = kernel_args("--hidden-layer-sizes", "none", "--delimiter", "tab")
    assert args.hidden_layer_sizes == () and args.delimiter == "\t"
    args = kernel_args("--no-standardize", "-vv", "--learning-rate-init", "0.5")
    assert (args.standardize, args.verbose, args.learning_rate_init) == (False, 2, 0.5)
    args = kernel_args("--solver", "adam", "--momentum", "0.9")
    assert (args.solver, args.momentum) == ("adam", 0.9)
    args = build_parser().parse_args(["demo", "--datasets", "diabetes,digits,diabetes"])
    assert args.datasets == ["diabetes", "digits"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-iter", "0"], "expected a positive integer, got '0'"),
        (["--learning-rate-init", "nan"], "expected a positive number"),
        (["--alpha", "-1"], "expected a non-negative number"),
        (["--hidden-layer-sizes", "8,x"], "comma-separated integers"),
        (["--hidden-layer-sizes", "8,0"], "must be positive integers"),
        (["--delimiter", ";;"], "a single character"),
        (["--activation", "gelu"], "invalid choice: 'gelu'"),
        (["--dtype", "float16"], "invalid choice: 'float16'"),
        (["--solver", "lbfgs"], "invalid choice: 'lbfgs'"),
        (["--momentum", "1"], "expected a number below 1, got '1'"),
    ],
)
def test_bad_kernel_option_is_a_usage_error(extra, message, capsys):
    err = usage_error(
        ["kernel", "x.csv", "--target", "y", "-o", "K.npy", *extra], capsys
    )
    assert message in err


def test_unknown_dataset_is_a_usage_error(capsys):
    err = usage_error(["demo", "--datasets", "iris"], capsys)
    assert "unknown dataset 'iris'; choose from digits,breast_cancer,diabetes" in err
    err = usage_error(["demo", "--datasets", ","], capsys)
    assert "choose from" in err
