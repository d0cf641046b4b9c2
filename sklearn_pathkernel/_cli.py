"""The command line: ``sklearn-pathkernel`` or ``python -m sklearn_pathkernel``.

Two subcommands:

``demo``
    Train networks on datasets that ship with scikit-learn and print what
    their path kernels are and what they do (see ``_demo.py``).
``kernel``
    Train a network on a CSV file and write its path kernel as a ``.npy``
    file, for any tool that takes a precomputed Gram matrix.

User errors (a missing file or column, text where a number belongs, an
output path that cannot be written) print one line on stderr and give exit
code 2, without a traceback.
"""

import argparse
import csv
import math
import os
import sys
import time
import warnings

import numpy as np

from ._blocking import limit_threads

__all__ = ["main"]

PROG = "sklearn-pathkernel"

# ``--task auto``: a numeric target of integers with at most this many
# distinct values is taken for class labels.
MAX_AUTO_CLASSES = 20


class CLIError(Exception):
    """A user error: ``main`` prints the message and returns exit code 2."""


# -- argument types ------------------------------------------------------------
def _number(kind, *, positive):
    """An argparse type: a finite ``kind`` (int or float) > 0, or >= 0."""
    noun = "an integer" if kind is int else "a number"
    sign = "positive" if positive else "non-negative"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
            raise argparse.ArgumentTypeError(
                f"expected a {sign} {noun.split()[-1]}, got {text!r}"
            )
        return value

    return parse


_positive_int = _number(int, positive=True)
_non_negative_int = _number(int, positive=False)
_positive_float = _number(float, positive=True)
_non_negative_float = _number(float, positive=False)


def _layer_sizes(text):
    """``"64,64"`` -> ``(64, 64)``; ``""`` or ``"none"`` -> ``()`` (linear)."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 64,64; got {text!r}"
        ) from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(
            f"layer sizes must be positive integers; got {text!r}"
        )
    return sizes


def _dataset_list(text):
    from ._demo import DATASETS

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in DATASETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown dataset {', '.join(map(repr, unknown)) or repr(text)}; "
            f"choose from {','.join(DATASETS)}"
        )
    return list(dict.fromkeys(names))  # keep order, drop repeats


def _delimiter(text):
    text = {"tab": "\t", "\\t": "\t"}.get(text, text)
    if len(text) != 1:
        raise argparse.ArgumentTypeError(
            f"expected a single character (or 'tab'), got {text!r}"
        )
    return text


# -- the parser --------------------------------------------------------------
_DESCRIPTION = """\
Train a torch network by gradient descent inside scikit-learn, record the
path its parameters take, and use the path kernel of that network
(Domingos, "Every Model Learned by Gradient Descent Is Approximately a
Kernel Machine", arXiv:2012.00152). Also runs as
'python -m sklearn_pathkernel'."""

_EPILOG = """\
examples:
  %(prog)s demo --quick
  %(prog)s demo --datasets digits --output plots/
  %(prog)s kernel train.csv --target label --output K.npy \\
      --test test.csv --test-output K_test.npy

Run '%(prog)s COMMAND --help' for the options of a command."""

_DEMO_DESCRIPTION = """\
Train a network on datasets that ship with scikit-learn (X standardized, a
quarter of the rows held out) and print, per dataset, one table: the path
kernel's size, symmetry, smallest eigenvalue and the time it took; how well
the kernel machine (first-order, as in the paper, and exact) reconstructs
the network; cross-validated and held-out scores of the network, of
SVC/KernelRidge on its path kernel (retrained in every fold, through
PathKernelTransformer in a Pipeline) and of an RBF kernel; then the training
examples that contribute most to a few test predictions."""

_DEMO_EPILOG = """\
examples:
  %(prog)s --quick                     # all datasets, well under a minute
  %(prog)s --datasets digits,diabetes  # full size: a few minutes
  %(prog)s --quick --output plots/     # also PNG figures (needs matplotlib)"""

_KERNEL_DESCRIPTION = """\
Train a network on the rows of TRAIN (a CSV file with a header row; every
column except the target must be numeric) and write the path kernel of the
training rows, an (n_train, n_train) float64 array, to a .npy file. With
--test, also write the kernel of the rows of a second CSV file (same feature
columns; the target column may be there or not) against the training rows,
an (n_test, n_train) array. Use them with any estimator that takes
kernel="precomputed", e.g. SVC().fit(K, y).predict(K_test)."""

_KERNEL_EPILOG = f"""\
task detection (--task auto):
  classification when the target column holds anything that is not a number
  (string labels work), or only integers with at most {MAX_AUTO_CLASSES} distinct values
  and at least twice as many rows as values; regression otherwise. Pass --task
  to override.

standardization (--standardize, the default):
  each feature column is centred and scaled to unit variance with the mean and
  standard deviation of TRAIN (the test rows get the same transformation), and
  so is a regression target: gradient descent takes absolute steps, so raw
  scales in the hundreds make it diverge.

example:
  %(prog)s train.csv --target species --output K.npy \\
      --test test.csv --test-output K_test.npy --hidden-layer-sizes 64,64

  then, in Python:
      K, K_test = np.load("K.npy"), np.load("K_test.npy")
      SVC(kernel="precomputed").fit(K, y_train).predict(K_test)"""


def _add_threads_option(parser):
    """``--threads N``: the same option, and meaning, on every command."""
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="CPU threads that torch and the BLAS may use (default: their own "
        "choice, one per core); on a busy machine fewer threads than cores can "
        "be much faster",
    )


def build_parser():
    """The ``argparse`` parser of the command line.

    Returns
    -------
    parser : argparse.ArgumentParser
    """
    from . import __version__
    from ._normalize import NORMALIZATIONS

    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=formatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", title="commands"
    )

    demo = commands.add_parser(
        "demo",
        help="train on scikit-learn's datasets and report the path kernel",
        description=_DEMO_DESCRIPTION,
        epilog=_DEMO_EPILOG,
        formatter_class=formatter,
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="at most 300 training rows per dataset, shorter training and 3-fold "
        "instead of 5-fold cross-validation: all three datasets in well under a "
        "minute on two CPU cores",
    )
    demo.add_argument(
        "--output",
        metavar="DIR",
        help="write PNG figures per dataset into DIR (created if needed): the "
        "Gram matrix ordered by class, network output against kernel-machine "
        "prediction, the contributions to one prediction (for digits also the "
        "contributing training images) and the loss curve; needs matplotlib",
    )
    demo.add_argument(
        "--datasets",
        type=_dataset_list,
        default=None,
        metavar="NAMES",
        help="comma-separated datasets to run, from digits, breast_cancer and "
        "diabetes (default: all three)",
    )
    demo.add_argument(
        "--random-state",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="seed of the train/test split, the subsampling, the folds and the "
        "networks (default: 0)",
    )
    _add_threads_option(demo)
    demo.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="report progress on stderr while the demo runs",
    )

    kernel = commands.add_parser(
        "kernel",
        help="train on a CSV file and write its path kernel as .npy",
        description=_KERNEL_DESCRIPTION,
        epilog=_KERNEL_EPILOG,
        formatter_class=formatter,
    )
    kernel.add_argument(
        "train",
        metavar="TRAIN.csv",
        help="training data: a CSV file whose first line names the columns",
    )
    kernel.add_argument(
        "--target",
        required=True,
        metavar="COLUMN",
        help="name of the column of TRAIN that holds the target (the label or "
        "the value to predict); every other column is a feature",
    )
    kernel.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="K.npy",
        help="where to write the (n_train, n_train) path kernel of the training "
        "rows (NumPy .npy format, float64; written to exactly this path)",
    )
    kernel.add_argument(
        "--test",
        metavar="TEST.csv",
        help="a second CSV file with the same feature columns (the target column "
        "is optional and ignored): its kernel against the training rows is "
        "written to --test-output",
    )
    kernel.add_argument(
        "--test-output",
        metavar="K_test.npy",
        help="where to write the (n_test, n_train) kernel of --test against the "
        "training rows; required with --test",
    )
    kernel.add_argument(
        "--task",
        choices=("auto", "classification", "regression"),
        default="auto",
        help="train a PathKernelClassifier or a PathKernelRegressor; 'auto' "
        "decides from the target column, see below (default: auto)",
    )
    kernel.add_argument(
        "--hidden-layer-sizes",
        type=_layer_sizes,
        default=(100,),
        metavar="SIZES",
        help="widths of the network's hidden layers, comma-separated, e.g. "
        "64,64; 'none' for a linear model (default: 100)",
    )
    kernel.add_argument(
        "--activation",
        choices=("tanh", "relu", "logistic", "identity"),
        default="tanh",
        help="activation of the hidden layers (default: tanh)",
    )
    kernel.add_argument(
        "--max-iter",
        type=_positive_int,
        default=200,
        metavar="N",
        help="number of epochs of gradient descent; one step each unless "
        "--batch-size is given. The kernel's cost grows linearly with the "
        "number of steps (default: 200)",
    )
    kernel.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=0.1,
        metavar="LR",
        help="step size of gradient descent (default: 0.1)",
    )
    kernel.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="rows per step; full-batch gradient descent when not given, the "
        "setting of the paper's theorem",
    )
    kernel.add_argument(
        "--alpha",
        type=_non_negative_float,
        default=0.0,
        metavar="A",
        help="L2 penalty on the network's parameters (default: 0)",
    )
    kernel.add_argument(
        "--tol",
        type=_non_negative_float,
        default=1e-4,
        metavar="TOL",
        help="stop early when the loss has not improved by TOL for 10 epochs; 0 "
        "always runs --max-iter epochs (default: 1e-4)",
    )
    kernel.add_argument(
        "--record-every",
        type=_positive_int,
        default=1,
        metavar="K",
        help="keep the parameters every K steps only: the kernel costs about K "
        "times less and sums the same path more coarsely (default: 1)",
    )
    kernel.add_argument(
        "--normalize",
        choices=NORMALIZATIONS,
        default="none",
        help="scaling of the kernel: 'none' keeps K_path, whose scale grows with "
        "learning rate times steps; 'mean_diagonal' divides by the mean of the "
        "training diagonal; 'cosine' gives every row unit self-similarity. The "
        "test kernel is scaled consistently (default: none)",
    )
    kernel.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="standardize the feature columns (and a regression target) with the "
        "statistics of TRAIN, see below (default: on)",
    )
    kernel.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="precision of the network; the kernel is accumulated in float64 "
        "either way (default: float32)",
    )
    kernel.add_argument(
        "--device",
        default="auto",
        help="'cpu', 'cuda' or 'auto' (a GPU when there is one; default: auto)",
    )
    _add_threads_option(kernel)
    kernel.add_argument(
        "--delimiter",
        type=_delimiter,
        default=",",
        metavar="CHAR",
        help="field separator of the CSV files, e.g. ';' or tab (default: ',')",
    )
    kernel.add_argument(
        "--random-state",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="seed of the initial weights (and of the shuffling with "
        "--batch-size): the same seed gives the same kernel (default: 0)",
    )
    kernel.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="print settings and timings; twice (-vv) also the loss at every epoch",
    )
    return parser


# -- entry point ---------------------------------------------------------------
def main(argv=None):
    """Run the command line.

    Parameters
    ----------
    argv : list of str, default=None
        The arguments after the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    code : int
        The exit status: 0 on success, 2 for a usage or input error (the
        message goes to stderr), 130 when interrupted.

    Examples
    --------
    Write the path kernel of a small CSV file:

    >>> import os, tempfile
    >>> import numpy as np
    >>> from sklearn_pathkernel._cli import main
    >>> folder = tempfile.mkdtemp()
    >>> train = os.path.join(folder, "train.csv")
    >>> with open(train, "w") as f:
    ...     _ = f.write("x1,x2,label\\n0,1,a\\n1,0,b\\n1,1,a\\n0,0,b\\n2,1,a\\n")
    >>> out = os.path.join(folder, "K.npy")
    >>> main([
    ...     "kernel", train, "--target", "label", "--output", out,
    ...     "--hidden-layer-sizes", "8", "--max-iter", "20",
    ... ])  # doctest: +ELLIPSIS
    train.csv: 5 rows, 2 feature columns; target 'label': classification ...
    ...
    0
    >>> K = np.load(out)
    >>> K.shape, bool(np.allclose(K, K.T))
    ((5, 5), True)
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        with limit_threads(args.threads):
            if args.command == "demo":
                return _run_demo(args)
            return _run_kernel(args)
    except CLIError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _run_demo(args):
    from . import _demo

    if args.output is not None:
        _demo.check_output_directory(args.output)  # fails before any work
    _demo.run_demo(
        args.datasets,
        quick=args.quick,
        output=args.output,
        random_state=args.random_state,
        verbose=args.verbose,
    )
    return 0


# -- the kernel command ----------------------------------------------------------
def _run_kernel(args):
    if (args.test is None) != (args.test_output is None):
        given, missing = (
            ("--test", "--test-output")
            if args.test is not None
            else ("--test-output", "--test")
        )
        raise CLIError(f"{given} needs {missing} as well")
    _check_writable(args.output, "--output")
    if args.test_output is not None:
        if os.path.abspath(args.test_output) == os.path.abspath(args.output):
            raise CLIError("--output and --test-output name the same file")
        _check_writable(args.test_output, "--test-output")

    train_name = os.path.basename(args.train)
    columns, rows, lines = read_csv(args.train, delimiter=args.delimiter)
    if args.target not in columns:
        hint = ""
        if len(columns) == 1:
            separator = next((c for c in ";\t|" if c in columns[0]), None)
            if separator is not None:
                hint = (
                    f" (separated by {separator!r}? pass --delimiter "
                    f"{'tab' if separator == chr(9) else repr(separator)})"
                )
        raise CLIError(
            f"{args.train} has no column {args.target!r}; available columns: "
            f"{', '.join(map(repr, columns))}{hint}"
        )
    target_at = columns.index(args.target)
    features = [name for name in columns if name != args.target]
    if not features:
        raise CLIError(f"{args.train} has no feature column besides {args.target!r}")
    if len(rows) < 2:
        raise CLIError(f"{args.train} needs at least 2 data rows; it has {len(rows)}")
    X = _numeric_columns(args.train, columns, rows, lines, features)
    task, y = _target(args, rows, lines, target_at)

    X_test = None
    if args.test is not None:
        test_columns, test_rows, test_lines = read_csv(
            args.test, delimiter=args.delimiter
        )
        expected = set(features)
        present = set(test_columns) - {args.target}
        if present != expected:
            missing = [name for name in features if name not in present]
            extra = [name for name in test_columns if name not in expected]
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
        if not test_rows:
            raise CLIError(f"{args.test} has a header but no data rows")
        X_test = _numeric_columns(
            args.test, test_columns, test_rows, test_lines, features
        )

    if args.standardize:
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(X)
        X = scaler.transform(X)
        if X_test is not None:
            X_test = scaler.transform(X_test)
        if task == "regression":
            scale = y.std()
            y = (y - y.mean()) / (scale if scale > 0 else 1.0)

    summary = f"{train_name}: {len(X)} rows, {len(features)} feature columns; "
    summary += f"target {args.target!r}: {task}"
    if task == "classification":
        classes = np.unique(y)
        if len(classes) < 2:
            raise CLIError(
                f"the target column {args.target!r} of {args.train} holds a single "
                f"class ({_label_text(classes[0])}); classification needs at least two"
            )
        shown = ", ".join(str(c) for c in classes[:10])
        more = ", ..." if len(classes) > 10 else ""
        summary += f" of {len(classes)} classes ({shown}{more})"
    print(summary)

    est = _make_estimator(args, task)
    if args.verbose:
        print(f"training {est!r}")
    start = time.perf_counter()
    diverged = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            est.fit(X, y)
        except ValueError as exc:
            raise CLIError(f"training failed: {exc}") from None
    _reemit(caught, diverged)
    fit_seconds = time.perf_counter() - start
    steps = est.trajectory_.n_steps
    print(
        f"trained {type(est).__name__} for {est.n_iter_} epochs ({steps} steps) "
        f"in {fit_seconds:.1f} s; training loss {est.loss_curve_[0]:.4g} -> "
        f"{est.loss_curve_[-1]:.4g}"
    )
    loss = np.asarray(est.loss_curve_, dtype=float)
    if not diverged and (not np.isfinite(loss).all() or loss[-1] > loss[0]):
        diverged.append(
            f"the training loss grew from {loss[0]:.4g} to {loss[-1]:.4g}: gradient "
            f"descent diverged. Use a smaller --learning-rate (now "
            f"{args.learning_rate})."
        )
    for message in diverged:
        print(f"warning: {message}", file=sys.stderr)

    start = time.perf_counter()
    try:
        K = est.kernel(X)
        K_test = None if X_test is None else est.kernel(X_test, X)
    except ValueError as exc:
        raise CLIError(f"computing the kernel failed: {exc}") from None
    kernel_seconds = time.perf_counter() - start
    _save(args.output, K)
    print(
        f"wrote the path kernel of the training rows, shape {K.shape}, to {args.output}"
    )
    if K_test is not None:
        _save(args.test_output, K_test)
        print(
            f"wrote the kernel of {os.path.basename(args.test)} against the "
            f"training rows, shape {K_test.shape}, to {args.test_output}"
        )
    if args.verbose:
        print(f"computed the kernels in {kernel_seconds:.1f} s")
    return 0


def _make_estimator(args, task):
    from ._estimators import PathKernelClassifier, PathKernelRegressor

    cls = PathKernelClassifier if task == "classification" else PathKernelRegressor
    return cls(
        hidden_layer_sizes=args.hidden_layer_sizes,
        activation=args.activation,
        learning_rate=args.learning_rate,
        max_iter=args.max_iter,
        batch_size=args.batch_size,
        alpha=args.alpha,
        tol=args.tol,
        record_every=args.record_every,
        device=args.device,
        dtype=args.dtype,
        kernel_normalize=args.normalize,
        random_state=args.random_state,
        verbose=max(args.verbose - 1, 0),
    )


def _reemit(caught, diverged):
    """Sort caught warnings: divergence is reported, max_iter is dropped."""
    from sklearn.exceptions import ConvergenceWarning

    from .exceptions import DivergenceWarning

    for w in caught:
        if issubclass(w.category, DivergenceWarning):
            diverged.append(str(w.message))
        elif issubclass(w.category, ConvergenceWarning):
            continue  # "max_iter reached": expected with a fixed budget of steps
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _target(args, rows, lines, at):
    """The task and the target values (floats, or labels for classification)."""
    name = args.target
    raw = [row[at].strip() for row in rows]
    for i, value in enumerate(raw):
        if value == "":
            raise CLIError(
                f"{args.train}: missing value in the target column {name!r}, row "
                f"{i + 1} (line {lines[i]})"
            )
    numbers = []
    for value in raw:
        number = _to_float(value)
        if number is None or not math.isfinite(number):
            numbers = None
            break
        numbers.append(number)
    task = args.task
    if task == "auto":
        if numbers is None:
            task = "classification"
        else:
            whole = all(n.is_integer() for n in numbers)
            distinct = len(set(numbers))
            few = distinct <= MAX_AUTO_CLASSES and 2 * distinct <= len(numbers)
            task = "classification" if whole and few else "regression"
    if task == "regression":
        if numbers is None:
            i = next(
                i
                for i, v in enumerate(raw)
                if _to_float(v) is None or not math.isfinite(_to_float(v))
            )
            raise CLIError(
                f"{args.train}: the target column {name!r} must be numeric for "
                f"regression, but row {i + 1} (line {lines[i]}) holds {raw[i]!r}"
            )
        return task, np.asarray(numbers, dtype=np.float64)
    if numbers is not None and all(n.is_integer() for n in numbers):
        return task, np.asarray(numbers, dtype=np.int64)
    if numbers is not None:
        return task, np.asarray(numbers, dtype=np.float64)
    return task, np.asarray(raw, dtype=object).astype(str)


def _label_text(value):
    """A label for a message: ``'a'`` for text, ``3`` for a number."""
    return repr(str(value)) if isinstance(value, str) else str(value)


def _to_float(text):
    try:
        return float(text)
    except ValueError:
        return None


def read_csv(path, *, delimiter=","):
    """Read a CSV file with a header row, as strings.

    Blank lines are skipped; every other line must have as many fields as
    the header.

    Parameters
    ----------
    path : str
    delimiter : str, default=","

    Returns
    -------
    columns : list of str
        The column names, stripped of surrounding spaces.
    rows : list of list of str
        The data rows.
    lines : list of int
        The line number in the file of each data row, for error messages.

    Raises
    ------
    CLIError
        For a missing, unreadable or empty file, a header of numbers,
        repeated column names or a row of the wrong length.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header, columns = None, None
            rows, lines = [], []
            for record in reader:
                if not any(field.strip() for field in record):
                    continue
                if header is None:
                    header = [field.strip() for field in record]
                    columns = header
                    continue
                if len(record) != len(columns):
                    raise CLIError(
                        f"{path}, line {reader.line_num}: expected {len(columns)} "
                        f"fields (as in the header), found {len(record)}"
                    )
                rows.append(record)
                lines.append(reader.line_num)
    except FileNotFoundError:
        raise CLIError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CLIError(f"{path} is a directory, not a CSV file") from None
    except PermissionError:
        raise CLIError(f"{path}: permission denied") from None
    except UnicodeDecodeError:
        raise CLIError(f"{path} is not a UTF-8 text (CSV) file") from None
    except csv.Error as exc:
        raise CLIError(f"{path}: not a readable CSV file ({exc})") from None
    except OSError as exc:
        raise CLIError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if header is None:
        raise CLIError(f"{path} is empty; expected a header row and data rows")
    if any(name == "" for name in header):
        at = header.index("")
        raise CLIError(
            f"{path}: column {at + 1} of the header row has no name (an index "
            "written by pandas? save with to_csv(..., index=False))"
        )
    if all(_to_float(name) is not None for name in header):
        raise CLIError(
            f"{path}: the first line must be a header row naming the columns, "
            f"but it holds numbers ({', '.join(header[:5])}"
            f"{', ...' if len(header) > 5 else ''})"
        )
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise CLIError(
            f"{path}: repeated column names in the header: "
            f"{', '.join(map(repr, repeated))}"
        )
    if not rows:
        raise CLIError(f"{path} has a header but no data rows")
    return columns, rows, lines


def _numeric_columns(path, columns, rows, lines, names):
    """The columns ``names`` as a float64 array, or a CLIError naming the cell."""
    at = [columns.index(name) for name in names]
    X = np.empty((len(rows), len(names)))
    for i, row in enumerate(rows):
        for j, k in enumerate(at):
            text = row[k].strip()
            value = _to_float(text)
            if value is None or not math.isfinite(value):
                what = (
                    "a missing value"
                    if text == ""
                    else f"{text!r}, which is not a finite number"
                )
                raise CLIError(
                    f"{path}: non-numeric data in column {names[j]!r}, row {i + 1} "
                    f"(line {lines[i]}): {what}"
                )
            X[i, j] = value
    return X


def _check_writable(path, option):
    """Fail before the work when ``path`` cannot be written."""
    if os.path.isdir(path):
        raise CLIError(f"{option} {path} is a directory; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(folder):
        raise CLIError(
            f"cannot write {option} {path}: the directory {folder} does not exist"
        )
    if not os.path.isdir(folder):
        raise CLIError(f"cannot write {option} {path}: {folder} is not a directory")
    if not os.access(folder, os.W_OK) or (
        os.path.exists(path) and not os.access(path, os.W_OK)
    ):
        raise CLIError(f"cannot write {option} {path}: permission denied")


def _save(path, array):
    """``np.save`` to exactly ``path`` (no ``.npy`` appended)."""
    try:
        with open(path, "wb") as f:
            np.save(f, array)
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror or exc}") from None
