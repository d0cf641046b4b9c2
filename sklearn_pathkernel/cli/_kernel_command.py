"""The ``kernel`` command: train on a CSV file and write the path kernel as .npy.

The steps, in order: check the output paths, read the data (``_csv.py``)
and the target (``_target.py``), build and check the estimator
(``_settings.py``), standardize, train, report divergence
(the library's ``DivergenceWarning``), compute and write the kernels.
"""

import os
import sys
import time
from dataclasses import dataclass

import numpy as np
from sklearn.preprocessing import StandardScaler

from ._csv import read_csv
from ._errors import CLIError
from ._paths import check_writable, save_array
from ._settings import COMMAND_DEFAULTS, build_estimator
from ._target import read_target
from ._warnings import collect_divergence

_SHOWN_CLASSES = 10  # classes listed in the summary line


@dataclass
class KernelData:
    """What the network is trained on, and the rows of the test kernel.

    Attributes
    ----------
    X : ndarray of shape (n_train, n_features)
    y : ndarray of shape (n_train,)
    task : {"classification", "regression"}
    features : list of str
        The feature columns, in the order of TRAIN.
    X_test : ndarray of shape (n_test, n_features) or None
    """

    X: np.ndarray
    y: np.ndarray
    task: str
    features: list
    X_test: np.ndarray = None


def run_kernel_command(args):
    """Run ``kernel`` with parsed arguments ``args``.

    Returns
    -------
    code : int
        0; user errors raise ``CLIError``.
    """
    _check_outputs(args)
    data = read_data(args)
    est = make_estimator(args, data.task)  # a bad setting: before any work
    if args.standardize:
        data = standardize(data)
    print(_summary(args, data))
    _train(args, est, data)
    _write_kernels(args, est, data)
    return 0


def _check_outputs(args):
    """Fail before any work on a bad pair of options or an unwritable path."""
    if (args.test is None) != (args.test_output is None):
        given, missing = ("--test", "--test-output")
        if args.test is None:
            given, missing = missing, given
        raise CLIError(f"{given} needs {missing} as well")
    check_writable(args.output, "--output")
    if args.test_output is not None:
        if os.path.abspath(args.test_output) == os.path.abspath(args.output):
            raise CLIError("--output and --test-output name the same file")
        check_writable(args.test_output, "--test-output")


def read_data(args):
    """Read TRAIN (and TEST): the features, the task and the target.

    Returns
    -------
    data : KernelData
    """
    table = read_csv(args.train, delimiter=args.delimiter)
    if args.target not in table.columns:
        raise CLIError(
            f"{args.train} has no column {args.target!r}; available columns: "
            f"{', '.join(map(repr, table.columns))}{_delimiter_hint(table.columns)}"
        )
    features = [name for name in table.columns if name != args.target]
    if not features:
        raise CLIError(f"{args.train} has no feature column besides {args.target!r}")
    if len(table) < 2:
        raise CLIError(f"{args.train} needs at least 2 data rows; it has {len(table)}")
    X = table.numeric(features)
    task, y = read_target(table, args.target, args.task)
    X_test = None if args.test is None else _read_test(args, features)
    return KernelData(X, y, task, features, X_test)


def _delimiter_hint(columns):
    """A hint when a single column looks like a line split by another character."""
    if len(columns) != 1:
        return ""
    separator = next((c for c in ";\t|" if c in columns[0]), None)
    if separator is None:
        return ""
    shown = "tab" if separator == "\t" else repr(separator)
    return f" (separated by {separator!r}? pass --delimiter {shown})"


def _read_test(args, features):
    """The feature columns of TEST, in the order of TRAIN's."""
    table = read_csv(args.test, delimiter=args.delimiter)
    present = set(table.columns) - {args.target}
    if present != set(features):
        missing = [name for name in features if name not in present]
        extra = [name for name in table.columns if name not in features]
        extra = [name for name in extra if name != args.target]
        parts = []
        if missing:
            parts.append(f"missing {', '.join(map(repr, missing))}")
        if extra:
            parts.append(f"unexpected {', '.join(map(repr, extra))}")
        raise CLIError(
            f"the columns of {args.test} differ from the feature columns of "
            f"{args.train} ({'; '.join(parts)}); expected "
            f"{', '.join(map(repr, features))} (and optionally {args.target!r})"
        )
    return table.numeric(features)


def standardize(data):
    """Scale the features (and a regression target) with the training statistics.

    Returns
    -------
    data : KernelData
        A new one; ``data`` is left as it is.
    """
    scaler = StandardScaler().fit(data.X)
    y = data.y
    if data.task == "regression":
        scale = y.std()
        y = (y - y.mean()) / (scale if scale > 0 else 1.0)
    X_test = None if data.X_test is None else scaler.transform(data.X_test)
    return KernelData(scaler.transform(data.X), y, data.task, data.features, X_test)


def _summary(args, data):
    """``train.csv: 60 rows, 5 feature columns; target 'y': classification ...``"""
    summary = (
        f"{os.path.basename(args.train)}: {len(data.X)} rows, "
        f"{len(data.features)} feature columns; target {args.target!r}: {data.task}"
    )
    if data.task == "classification":
        classes = np.unique(data.y)
        shown = ", ".join(str(c) for c in classes[:_SHOWN_CLASSES])
        more = ", ..." if len(classes) > _SHOWN_CLASSES else ""
        summary += f" of {len(classes)} classes ({shown}{more})"
    return summary


def make_estimator(args, task):
    """The unfitted PathKernelClassifier or PathKernelRegressor of ``args``.

    Its parameters: the estimator options given (``--set`` and the dedicated
    ones), checked by the estimator's constraints; else ``COMMAND_DEFAULTS``
    and ``-v`` (``-vv``: the loss at every epoch); else the estimator's own.
    """
    return build_estimator(
        task,
        args.estimator_params or {},
        **COMMAND_DEFAULTS,
        verbose=max(args.verbose - 1, 0),
    )


def _train(args, est, data):
    """Fit ``est``; print its loss and any DivergenceWarning (on stderr)."""
    if args.verbose:
        print(f"training {est!r}")
    start = time.perf_counter()
    with collect_divergence() as diverged:
        try:
            est.fit(data.X, data.y)
        except ValueError as exc:
            raise CLIError(f"training failed: {exc}") from None
    seconds = time.perf_counter() - start
    loss = est.loss_curve_
    print(
        f"trained {type(est).__name__} for {est.n_iter_} epochs "
        f"({est.trajectory_.n_steps} steps) in {seconds:.1f} s; training loss "
        f"{loss[0]:.4g} -> {loss[-1]:.4g}"
    )
    for message in diverged:
        print(f"warning: {message}", file=sys.stderr)


def _write_kernels(args, est, data):
    """Compute the kernel(s) and write them to --output (and --test-output)."""
    start = time.perf_counter()
    try:
        K = est.kernel(data.X)
        K_test = None if data.X_test is None else est.kernel(data.X_test, data.X)
    except ValueError as exc:
        raise CLIError(f"computing the kernel failed: {exc}") from None
    seconds = time.perf_counter() - start
    save_array(args.output, K)
    print(
        f"wrote the path kernel of the training rows, shape {K.shape}, to {args.output}"
    )
    if K_test is not None:
        save_array(args.test_output, K_test)
        print(
            f"wrote the kernel of {os.path.basename(args.test)} against the "
            f"training rows, shape {K_test.shape}, to {args.test_output}"
        )
    if args.verbose:
        print(f"computed the kernels in {seconds:.1f} s")
