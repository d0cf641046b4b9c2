"""What the demo prints: ``DemoResult``, its table, notes and contributors."""

import textwrap
from dataclasses import dataclass, field

import numpy as np

from ._scores import INNER_FOLDS, grid

WIDTH = 100  # notes and contributor lines are wrapped at this many characters
N_EXPLAINED = 3  # test rows whose top contributors are printed
TOP_K = 5  # training rows printed per test row


@dataclass
class DemoResult:
    """The numbers behind one dataset's table.

    Attributes
    ----------
    name : str
        The dataset.
    task : {"classification", "regression"}
    metric : {"accuracy", "R^2"}
    n_train, n_test, n_features : int
    estimator : PathKernelClassifier or PathKernelRegressor
        The network trained on the (standardized) training rows.
    title : str
        The lines above the table: the dataset and the network.
    rows : list of tuple
        ``(quantity, value, seconds)`` strings: the table.
    numbers : dict
        ``kernel_shape``, ``symmetry`` (max ``|K - K^T|`` of the kernel
        divided by its mean diagonal), ``min_eigenvalue_ratio`` (smallest
        over largest eigenvalue), ``error_first_order`` and ``error_exact``
        (largest relative reconstruction error), ``cv`` and ``test`` (score
        per model: "network", "path kernel", "rbf"; the CV entries are
        arrays of fold scores), ``final_loss``.
    contributors : list of str
        A heading and two lines per explained test row.
    notes : list of str
        Footnotes, divergence reports included.
    figures : list of str
        Paths of the PNG files written.
    """

    name: str
    task: str
    metric: str
    n_train: int
    n_test: int
    n_features: int
    estimator: object
    title: str = ""
    rows: list = field(default_factory=list)
    numbers: dict = field(default_factory=dict)
    contributors: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    figures: list = field(default_factory=list)

    def table(self):
        """The result as printed: the table, the notes, contributors, figures.

        Returns
        -------
        text : str

        Examples
        --------
        >>> from sklearn_pathkernel.cli._report import DemoResult
        >>> result = DemoResult("toy", "regression", "R^2", 2, 1, 1, None,
        ...                     title="toy: a table", rows=[("a", "1", "0.10")],
        ...                     notes=["a note"])
        >>> print(result.table())
        toy: a table
          quantity  value  seconds
          --------  -----  -------
          a         1         0.10
          --------  -----  -------
          * a note
        """
        out = [self.title, *format_table(self.rows)]
        out += [_wrap(note, "  * ", "    ") for note in self.notes]
        if self.contributors:
            out += ["", *self.contributors]
        if self.figures:
            out += ["", "  figures:", *(f"    {path}" for path in self.figures)]
        return "\n".join(out)


def format_table(rows):
    """Lines of a three-column table: header, rule, rows, rule.

    The quantity and value columns are left-aligned, the seconds
    right-aligned; every line is indented by two spaces.
    """
    header = ("quantity", "value", "seconds")
    widths = [max(len(header[j]), *(len(row[j]) for row in rows)) for j in range(3)]
    rule = "  " + "  ".join("-" * width for width in widths)

    def line(cells):
        quantity, value, seconds = cells
        return (
            f"  {quantity:<{widths[0]}}  {value:<{widths[1]}}  {seconds:>{widths[2]}}"
        ).rstrip()

    return [line(header), rule, *(line(row) for row in rows), rule]


def _wrap(text, first, rest):
    return textwrap.fill(
        text,
        width=WIDTH,
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
    )


def method_notes(*, classification, n_folds, n_queries, n_nodes):
    """The footnotes that say how the numbers were obtained."""
    folds = "stratified folds" if classification else "folds"
    parameter, values = grid(classification)
    return [
        f"CV: {n_folds} {folds} of the training rows. Each fold standardizes X and "
        "retrains the network on its own rows (PathKernelTransformer in a "
        "Pipeline); the network's CV scores are those fold networks', and the "
        "path kernel's CV seconds include training them.",
        f"{parameter} of both kernel machines: a {INNER_FOLDS}-fold grid search "
        f"over {values} inside every fit; the path kernel is divided by its mean "
        "diagonal.",
        f"Kernel machine f(x) = b(x) + sum_i phi_i(x): largest relative error "
        f"against the network on the first {n_queries} test rows; the exact form "
        f"uses {n_nodes} Gauss-Legendre nodes per step.",
    ]


def divergence_notes(messages, *, n_diverged_folds, n_folds):
    """Footnotes for the ``DivergenceWarning`` of the network and of the folds.

    Parameters
    ----------
    messages : list of str
        The warnings of the network trained on all training rows.
    n_diverged_folds : int
        Cross-validation fits that warned.
    n_folds : int

    Returns
    -------
    notes : list of str

    Examples
    --------
    >>> from sklearn_pathkernel.cli._report import divergence_notes
    >>> divergence_notes(["it blew up"], n_diverged_folds=2, n_folds=3)
    ['WARNING: it blew up', 'WARNING: the network diverged in 2 of the 3 cross-validation folds']
    """  # noqa: E501
    notes = [f"WARNING: {message}" for message in dict.fromkeys(messages)]
    if n_diverged_folds:
        notes.append(
            f"WARNING: the network diverged in {n_diverged_folds} of the {n_folds} "
            "cross-validation folds"
        )
    return notes


def format_label(value):
    """A class label or target value as printed: ``3`` for 3.0, ``2.5``, ``'a'``."""
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else f"{value:.4g}"
    return str(value)


def contributor_lines(machine, *, est, data, classification):
    """The training rows that contribute most to the first test predictions.

    Each test row is ranked on its predicted output
    (``top_contributors(k, output="predicted")``): the logit of the
    predicted class for a multi-class network, the one output otherwise.

    Parameters
    ----------
    machine : KernelMachine
        The decomposition of the first test rows.
    est : PathKernelClassifier or PathKernelRegressor
    data : DemoData
        The labels, and a regression target's scale.
    classification : bool

    Returns
    -------
    lines : list of str
        A heading, then two lines per test row.
    """
    n_train = machine.contributions.shape[1]
    n = min(N_EXPLAINED, machine.contributions.shape[0])
    k = min(TOP_K, n_train)
    top = machine.top_contributors(k, output="predicted")
    heading = (
        f"training examples that contribute most to {n} test predictions "
        f"(exact form; phi_i(x) to {_ranked_output(est, machine, classification)}):"
    )
    lines = [_wrap(heading, "  ", "    ")]
    for q in range(n):
        outputs = machine.network_output[q]
        column = int(np.argmax(outputs))
        values = top.values[q, :, column]
        if classification:
            about = (
                f"true {format_label(data.y_test[q])}, "
                f"predicted {_predicted_class(est, outputs)}"
            )
        else:  # in the units of the target
            values = values * data.y_scale
            predicted = data.y_mean + outputs[0] * data.y_scale
            about = f"target {format_label(data.y_test[q])}, predicted {predicted:.1f}"
        lines.append(
            f"    test row {q} ({about}): the top {k} of {n_train} carry "
            f"{top.share[q]:.0%} of sum |phi_i|"
        )
        parts = [
            f"#{i} ({format_label(data.y_train[i])}) {value:+.3g}"
            for i, value in zip(top.indices[q], values)
        ]
        lines.append(_wrap(", ".join(parts), "      ", "      "))
    return lines


def _ranked_output(est, machine, classification):
    if not classification:
        return "the prediction, in units of the target"
    if machine.network_output.shape[1] > 1:
        return "the logit of the predicted class"
    return f"the logit of {str(est.classes_[1])!r}"


def _predicted_class(est, outputs):
    """The class a row of logits predicts (one logit: positive is classes_[1])."""
    if len(outputs) > 1:
        return est.classes_[int(np.argmax(outputs))]
    return est.classes_[int(outputs[0] > 0)]
