"""``cli._parser``: the options, their help, their choices and their checks."""

import pytest

from sklearn_pathkernel import PathKernelClassifier
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
        "--set NAME=VALUE",
        "estimator parameters",
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


def kernel_parser():
    return build_parser()._subparsers._group_actions[0].choices["kernel"]


def test_dedicated_options_forward_to_estimator_parameters():
    forwarded = {
        action.option_strings[0]: action.parameter
        for action in kernel_parser()._actions
        if getattr(action, "parameter", None) is not None
    }
    assert forwarded["--max-iter"] == "max_iter"
    assert forwarded["--normalize"] == "kernel_normalize"
    assert set(forwarded.values()) <= set(PathKernelClassifier._parameter_constraints)
    choices = {action.dest: action.choices for action in kernel_parser()._actions}
    assert list(choices["task"]) == ["auto", "classification", "regression"]


def settings(args):
    return {name: setting.value for name, setting in args.estimator_params.items()}


def test_defaults_and_conversions():
    args = kernel_args()
    assert (args.task, args.estimator_params) == ("auto", None)
    assert (args.standardize, args.delimiter, args.threads) == (True, ",", None)
    args = kernel_args("--hidden-layer-sizes", "none", "--delimiter", "tab")
    assert settings(args) == {"hidden_layer_sizes": ()} and args.delimiter == "\t"
    args = kernel_args("--no-standardize", "-vv", "--learning-rate-init", "0.5")
    assert (args.standardize, args.verbose) == (False, 2)
    assert settings(args) == {"learning_rate_init": 0.5}
    args = kernel_args("--solver", "adam", "--momentum", "0.9", "--max-iter", "7")
    assert settings(args) == {"solver": "adam", "momentum": 0.9, "max_iter": 7}
    # A dedicated option and --set are one setting: the last one wins.
    args = kernel_args("--max-iter", "7", "--set", "max_iter=9", "--set", "tol=0")
    assert settings(args) == {"max_iter": 9, "tol": 0}
    assert args.estimator_params["max_iter"].source == "--set max_iter=9"
    args = build_parser().parse_args(["demo", "--datasets", "diabetes,digits,diabetes"])
    assert args.datasets == ["diabetes", "digits"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--delimiter", ";;"], "a single character"),
        (["--task", "ranking"], "invalid choice: 'ranking'"),
        (["--threads", "0"], "expected a positive integer, got '0'"),
        (["--set", "max_iter"], "expected NAME=VALUE, such as max_iter=50"),
        (["--set", "quadratur=left"], "unknown estimator parameter 'quadratur'"),
        (["--set", "module=x"], "cannot set module: module takes a Python object"),
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
