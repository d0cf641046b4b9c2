"""The command line's arguments: every option of every command, and its help.

The choices of ``--activation``, ``--dtype`` and ``--normalize`` are the
package's own constants, and the datasets of ``demo --datasets`` the demo's
``DATASETS``: adding one there adds it here.
"""

import argparse
import math

from .. import __version__
from .._kernels._normalize import NORMALIZATIONS
from .._model._network import ACTIVATIONS
from .._model._validation import DTYPES
from .._training._solvers import SOLVERS
from ._datasets import DATASETS
from ._demo import DemoError, check_dataset_names
from ._target import TASKS

PROG = "sklearn-pathkernel"


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


def _momentum(text):
    """A momentum coefficient: a number in [0, 1)."""
    value = _non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number below 1, got {text!r}")
    return value


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
    """``"digits,diabetes"`` -> ``["digits", "diabetes"]``, repeats dropped."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    try:
        check_dataset_names(names)
    except DemoError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return list(dict.fromkeys(names))  # keep order, drop repeats


def _delimiter(text):
    text = {"tab": "\t", "\\t": "\t"}.get(text, text)
    if len(text) != 1:
        raise argparse.ArgumentTypeError(
            f"expected a single character (or 'tab'), got {text!r}"
        )
    return text


def _choices(names):
    """``"a, b or c"``."""
    names = list(names)
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


# -- help texts ------------------------------------------------------------------
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

_KERNEL_EPILOG = """\
task detection (--task auto):
  the rule of PathKernelTransformer: classification when scikit-learn's
  type_of_target calls the target column "binary" or "multiclass", that is
  when it holds text (string labels work) or only whole numbers, however many
  distinct values; regression when it holds numbers that are not all whole
  ("continuous"). Pass --task to override, e.g. --task regression for counts.

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


# -- the parser --------------------------------------------------------------
def build_parser():
    """The ``argparse`` parser of the command line.

    Returns
    -------
    parser : argparse.ArgumentParser

    Examples
    --------
    >>> from sklearn_pathkernel.cli._parser import build_parser
    >>> args = build_parser().parse_args(["kernel", "t.csv", "--target", "y",
    ...                                   "-o", "K.npy", "--hidden-layer-sizes", "8,8"])
    >>> args.command, args.hidden_layer_sizes, args.task
    ('kernel', (8, 8), 'auto')
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", title="commands"
    )
    _add_demo_command(commands)
    _add_kernel_command(commands)
    return parser


def _add_common_options(parser, *, verbose_help, seed_help):
    """``--random-state``, ``--threads`` and ``-v``: on every command."""
    parser.add_argument(
        "--random-state",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help=f"{seed_help} (default: 0)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="CPU threads that torch and the BLAS may use (default: their own "
        "choice, one per core); on a busy machine fewer threads than cores can "
        "be much faster",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help=verbose_help)


def _add_command(commands, name, **texts):
    """A subcommand whose description and epilog keep their line breaks."""
    return commands.add_parser(
        name, formatter_class=argparse.RawDescriptionHelpFormatter, **texts
    )


def _add_demo_command(commands):
    demo = _add_command(
        commands,
        "demo",
        help="train on scikit-learn's datasets and report the path kernel",
        description=_DEMO_DESCRIPTION,
        epilog=_DEMO_EPILOG,
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
        help=f"comma-separated datasets to run, from {_choices(DATASETS)} "
        "(default: all)",
    )
    _add_common_options(
        demo,
        verbose_help="report progress on stderr while the demo runs",
        seed_help="seed of the train/test split, the subsampling, the folds and "
        "the networks",
    )


def _add_kernel_command(commands):
    kernel = _add_command(
        commands,
        "kernel",
        help="train on a CSV file and write its path kernel as .npy",
        description=_KERNEL_DESCRIPTION,
        epilog=_KERNEL_EPILOG,
    )
    _add_data_options(kernel)
    _add_network_options(kernel.add_argument_group("the network"))
    _add_training_options(kernel.add_argument_group("training"))
    _add_common_options(
        kernel,
        verbose_help="print settings and timings; twice (-vv) also the loss at "
        "every epoch",
        seed_help="seed of the initial weights (and of the shuffling with "
        "--batch-size): the same seed gives the same kernel",
    )


def _add_data_options(kernel):
    """The input and output files, the target and how the data are read."""
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
        choices=TASKS,
        default="auto",
        help="train a PathKernelClassifier or a PathKernelRegressor; 'auto' "
        "decides from the target column, see below (default: auto)",
    )
    kernel.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="standardize the feature columns (and a regression target) with the "
        "statistics of TRAIN, see below (default: on)",
    )
    kernel.add_argument(
        "--delimiter",
        type=_delimiter,
        default=",",
        metavar="CHAR",
        help="field separator of the CSV files, e.g. ';' or tab (default: ',')",
    )


def _add_network_options(group):
    """The network and where it runs; the kernel's scaling."""
    group.add_argument(
        "--hidden-layer-sizes",
        type=_layer_sizes,
        default=(100,),
        metavar="SIZES",
        help="widths of the network's hidden layers, comma-separated, e.g. "
        "64,64; 'none' for a linear model (default: 100)",
    )
    group.add_argument(
        "--activation",
        choices=list(ACTIVATIONS),
        default="tanh",
        help="activation of the hidden layers (default: tanh)",
    )
    group.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="float32",
        help="precision of the network; the kernel is accumulated in float64 "
        "either way (default: float32)",
    )
    group.add_argument(
        "--device",
        default="auto",
        help="'cpu', 'cuda' or 'auto' (a GPU when there is one; default: auto)",
    )
    group.add_argument(
        "--normalize",
        choices=NORMALIZATIONS,
        default="none",
        help="scaling of the kernel: 'none' keeps K_path, whose scale grows with "
        "learning rate times steps; 'mean_diagonal' divides by the mean of the "
        "training diagonal; 'cosine' gives every row unit self-similarity. The "
        "test kernel is scaled consistently (default: none)",
    )


def _add_training_options(group):
    """Gradient descent: steps, step size, batches, penalty, recording."""
    group.add_argument(
        "--max-iter",
        type=_positive_int,
        default=200,
        metavar="N",
        help="number of epochs of gradient descent; one step each unless "
        "--batch-size is given. The kernel's cost grows linearly with the "
        "number of steps (default: 200)",
    )
    group.add_argument(
        "--solver",
        choices=list(SOLVERS),
        default="sgd",
        help="update rule, as torch.optim takes it: sgd (with --momentum), adam, "
        "or adamw (--alpha is then the decoupled weight decay). Each has its "
        "own path kernel (default: sgd)",
    )
    group.add_argument(
        "--momentum",
        type=_momentum,
        default=0.0,
        metavar="MU",
        help="heavy-ball momentum of sgd, in [0, 1); Nesterov's form, as "
        "scikit-learn's MLP uses by default (default: 0)",
    )
    group.add_argument(
        "--learning-rate-init",
        type=_positive_float,
        default=0.1,
        metavar="LR",
        help="step size (the estimators' learning_rate_init; default: 0.1)",
    )
    group.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="rows per step; full-batch gradient descent when not given, the "
        "setting of the paper's theorem",
    )
    group.add_argument(
        "--alpha",
        type=_non_negative_float,
        default=0.0,
        metavar="A",
        help="L2 penalty on the network's parameters (default: 0)",
    )
    group.add_argument(
        "--tol",
        type=_non_negative_float,
        default=1e-4,
        metavar="TOL",
        help="stop early when the loss has not improved by TOL for 10 epochs; 0 "
        "always runs --max-iter epochs (default: 1e-4)",
    )
    group.add_argument(
        "--record-every",
        type=_positive_int,
        default=1,
        metavar="K",
        help="keep the parameters every K steps only: the kernel costs about K "
        "times less and sums the same path more coarsely (default: 1)",
    )
