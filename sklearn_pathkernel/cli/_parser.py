"""The command line's arguments: every option of every command, and its help.

The kernel command's estimator options store estimator parameters through
``_settings.SetParameter`` (``--set NAME=VALUE`` and the dedicated options
such as ``--max-iter``); the list of them in ``kernel --help`` is generated
from ``_settings.PARAMETERS`` (the estimators' ``_parameter_constraints``,
written out) when the help is shown. The
datasets of ``demo --datasets`` are the demo's ``DATASETS``: adding one
there adds it here.

Nothing imported here imports numpy, torch or scikit-learn: ``--help`` and
a usage error come back at once (``tests/test_cli_imports.py`` checks it).
"""

import argparse

from .. import __version__
from ._datasets import DATASETS, check_dataset_names
from ._errors import DemoError
from ._settings import COMMAND_DEFAULTS, TASKS, SetParameter, parameters_help

PROG = "sklearn-pathkernel"


class _CommandParser(argparse.ArgumentParser):
    """A command's parser whose help can start its epilog with generated text.

    ``help_appendix`` (a function returning text) runs only when the help is
    shown, so that parsing does not pay for it.
    """

    def __init__(self, *args, help_appendix=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.help_appendix = help_appendix

    def format_help(self):
        if self.help_appendix is not None:
            generated = self.help_appendix().replace("%", "%%")
            self.epilog = "\n\n".join(filter(None, [generated, self.epilog]))
            self.help_appendix = None
        return super().format_help()


# -- argument types ------------------------------------------------------------
def _integer(*, positive):
    """An argparse type: an integer > 0, or >= 0."""
    sign = "positive" if positive else "non-negative"

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer, got {text!r}"
            ) from None
        if not (value > 0 if positive else value >= 0):
            raise argparse.ArgumentTypeError(f"expected a {sign} integer, got {text!r}")
        return value

    return parse


_positive_int = _integer(positive=True)
_non_negative_int = _integer(positive=False)


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
      --test test.csv --test-output K_test.npy --hidden-layer-sizes 64,64 \\
      --set quadrature=trapezoid --set kernel_nodes=20

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
    ...                                   "-o", "K.npy", "--hidden-layer-sizes", "8,8",
    ...                                   "--set", "quadrature=trapezoid"])
    >>> args.command, args.task
    ('kernel', 'auto')
    >>> {name: s.value for name, s in args.estimator_params.items()}
    {'hidden_layer_sizes': (8, 8), 'quadrature': 'trapezoid'}
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
        dest="command",
        metavar="COMMAND",
        title="commands",
        parser_class=_CommandParser,
    )
    _add_demo_command(commands)
    _add_kernel_command(commands)
    return parser


def _add_common_options(parser, *, verbose_help):
    """``--threads`` and ``-v``: on every command."""
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
    demo.add_argument(
        "--random-state",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="seed of the train/test split, the subsampling, the folds and the "
        "networks (default: 0)",
    )
    _add_common_options(
        demo, verbose_help="report progress on stderr while the demo runs"
    )


def _add_kernel_command(commands):
    kernel = _add_command(
        commands,
        "kernel",
        help="train on a CSV file and write its path kernel as .npy",
        description=_KERNEL_DESCRIPTION,
        epilog=_KERNEL_EPILOG,
        help_appendix=parameters_help,
    )
    _add_data_options(kernel)
    _add_network_options(kernel.add_argument_group("the network"))
    _add_training_options(kernel.add_argument_group("training"))
    _add_sampling_options(kernel.add_argument_group("training (continued)"))
    _add_common_options(
        kernel,
        verbose_help="print settings and timings; twice (-vv) also the loss at "
        "every epoch (as --set verbose=1)",
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


def _forward(group, flag, parameter, *, metavar, help):
    """An option that sets estimator parameter ``parameter``, as ``--set`` does."""
    group.add_argument(
        flag,
        action=SetParameter,
        parameter=parameter,
        dest="estimator_params",
        metavar=metavar,
        help=f"{help} [--set {parameter}]",
    )


def _add_network_options(group):
    """The network and where it runs; the kernel's scaling."""
    _forward(
        group,
        "--hidden-layer-sizes",
        "hidden_layer_sizes",
        metavar="SIZES",
        help="widths of the network's hidden layers, comma-separated, e.g. "
        "64,64; 'none' for a linear model (default: 100)",
    )
    _forward(
        group,
        "--activation",
        "activation",
        metavar="NAME",
        help="activation of the hidden layers, e.g. relu (default: tanh)",
    )
    _forward(
        group,
        "--dtype",
        "dtype",
        metavar="DTYPE",
        help="precision of the network, float32 or float64; the kernel is "
        "accumulated in float64 either way (default: float32)",
    )
    _forward(
        group,
        "--device",
        "device",
        metavar="DEVICE",
        help="'cpu', 'cuda' or 'auto' (a GPU when there is one; default: auto)",
    )
    _forward(
        group,
        "--normalize",
        "kernel_normalize",
        metavar="HOW",
        help="scaling of the kernel: 'none' keeps K_path, whose scale grows with "
        "learning rate times steps; 'mean_diagonal' divides by the mean of the "
        "training diagonal; 'cosine' gives every row unit self-similarity. The "
        "test kernel is scaled consistently (default: none)",
    )


def _add_training_options(group):
    """Gradient descent: steps, step size, update rule."""
    _forward(
        group,
        "--max-iter",
        "max_iter",
        metavar="N",
        help="number of epochs of gradient descent; one step each unless "
        "--batch-size is given. The kernel's cost grows linearly with the "
        "number of steps (default: 200)",
    )
    _forward(
        group,
        "--solver",
        "solver",
        metavar="NAME",
        help="update rule, as torch.optim takes it: sgd (with --momentum), adam, "
        "or adamw (--alpha is then the decoupled weight decay). Each has its "
        "own path kernel (default: sgd)",
    )
    _forward(
        group,
        "--momentum",
        "momentum",
        metavar="MU",
        help="heavy-ball momentum of sgd, in [0, 1); Nesterov's form, as "
        "scikit-learn's MLP uses by default (default: 0)",
    )
    _forward(
        group,
        "--learning-rate-init",
        "learning_rate_init",
        metavar="LR",
        help="step size (the estimators' learning_rate_init; default: 0.1)",
    )


def _add_sampling_options(group):
    """Batches, penalty, stopping, recording, seed; and ``--set``."""
    _forward(
        group,
        "--batch-size",
        "batch_size",
        metavar="N",
        help="rows per step; full-batch gradient descent when not given, the "
        "setting of the paper's theorem",
    )
    _forward(
        group,
        "--alpha",
        "alpha",
        metavar="A",
        help="L2 penalty on the network's parameters (default: 0)",
    )
    _forward(
        group,
        "--tol",
        "tol",
        metavar="TOL",
        help="stop early when the loss has not improved by TOL for 10 epochs; 0 "
        "always runs --max-iter epochs (default: 1e-4)",
    )
    _forward(
        group,
        "--record-every",
        "record_every",
        metavar="K",
        help="keep the parameters every K steps only: the kernel costs about K "
        "times less and sums the same path more coarsely (default: 1)",
    )
    _forward(
        group,
        "--random-state",
        "random_state",
        metavar="N",
        help="seed of the initial weights (and of the shuffling with "
        "--batch-size): the same seed gives the same kernel (default: "
        f"{COMMAND_DEFAULTS['random_state']})",
    )
    group.add_argument(
        "--set",
        action=SetParameter,
        dest="estimator_params",
        metavar="NAME=VALUE",
        help="set any parameter of the estimator, e.g. --set quadrature=trapezoid "
        "--set kernel_nodes=0.2; repeatable. The names, their values and how "
        "VALUE is read are listed below; the estimator checks the value",
    )
