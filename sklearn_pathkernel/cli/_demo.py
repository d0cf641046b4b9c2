"""The ``demo`` command: a trained network's path kernel on scikit-learn's datasets.

For each dataset of ``DATASETS`` the demo holds out a quarter of the rows,
standardizes X (and the target of a regression) on the training rows,
trains a network by full-batch gradient descent in float64 with every step
recorded, and reports:

- the path kernel of the training rows, divided by its mean diagonal: its
  size, its symmetry ``max |K - K^T|``, its smallest eigenvalue relative to
  its largest (zero or positive up to rounding: the kernel is a positive sum
  of Gram matrices) and the time it took;
- how well the kernel machine reconstructs the network on a few test rows,
  in the paper's first-order form and in the exact form
  (``decompose(X, exact=False / True).error["max_rel"]``);
- cross-validated and held-out scores of the network itself, of ``SVC`` /
  ``KernelRidge`` on its path kernel and of the same machine on an RBF
  kernel (``_scores.py``);
- the training examples that contribute most to a few test predictions;
- divergence, as the library reports it with ``DivergenceWarning``.

``run_demo`` prints one table per dataset; ``run_dataset`` returns the
numbers behind it as a ``DemoResult`` (``_report.py``).
"""

import sys
import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import clone

from .. import PathKernelClassifier, PathKernelRegressor
from ._datasets import (
    DATASETS,
    DatasetSpec,
    DemoData,
    check_dataset_names,
    load_dataset,
)
from ._errors import DemoError
from ._figures import write_figures
from ._report import (
    DemoResult,
    contributor_lines,
    divergence_notes,
    method_notes,
)
from ._scores import MODELS, NORMALIZE, cross_validate, held_out_scores
from ._timing import Timer
from ._warnings import collect_divergence

__all__ = [
    "DATASETS",
    "DemoError",
    "DemoResult",
    "check_dataset_names",
    "check_plotting",
    "run_dataset",
    "run_demo",
]

N_QUERIES = {False: 10, True: 5}  # test rows decomposed: full run, --quick
N_NODES = 8  # Gauss-Legendre nodes per step of the exact decomposition


def check_plotting():
    """Raise ``DemoError`` when matplotlib, which draws the figures, is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise DemoError(
            "--output writes figures with matplotlib, which is not installed: "
            "pip install matplotlib (or 'sklearn-pathkernel[plot]'), or leave "
            "out --output"
        ) from None


def run_demo(names=None, *, quick=False, output=None, random_state=0, verbose=0):
    """Run the demo on ``names`` and print one table per dataset.

    Parameters
    ----------
    names : list of str, default=None
        Datasets, from ``DATASETS``; all of them when None.
    quick : bool, default=False
        At most 300 training rows, shorter training, 3 folds instead of 5.
    output : str, default=None
        Folder for PNG figures; none are drawn when None.
    random_state : int, default=0
    verbose : int, default=0
        Report progress on stderr.

    Returns
    -------
    results : list of DemoResult

    Raises
    ------
    DemoError
        Before any work for an unknown dataset, or for ``output`` without
        matplotlib; after the work of a dataset when a figure cannot be
        written.
    """
    names = list(DATASETS) if names is None else list(names)
    check_dataset_names(names)
    if output is not None:
        check_plotting()
    print(
        f"sklearn_pathkernel demo, {'quick' if quick else 'full'} mode: networks "
        "trained by gradient descent and their path kernels"
    )
    start = time.perf_counter()
    results = []
    for name in names:
        result = run_dataset(
            name, quick=quick, output=output, random_state=random_state, verbose=verbose
        )
        print()
        print(result.table(), flush=True)
        results.append(result)
    print(f"\ndemo finished in {time.perf_counter() - start:.1f} s")
    return results


@dataclass
class _Run:
    """One dataset's run: its settings, its data, its network, its result."""

    name: str
    spec: DatasetSpec
    data: DemoData
    quick: bool
    random_state: int
    verbose: int
    template: object = None  # the unfitted network, cloned by every fold
    est: object = None  # the network trained on all training rows
    result: DemoResult = None
    divergence: list = field(default_factory=list)

    @property
    def classification(self):
        return self.spec.task == "classification"

    @property
    def max_iter(self):
        return self.spec.quick_max_iter if self.quick else self.spec.max_iter

    @property
    def n_folds(self):
        return 3 if self.quick else 5

    @property
    def n_queries(self):
        return min(N_QUERIES[self.quick], len(self.data.X_test))

    def log(self, message):
        if self.verbose:
            print(f"[{self.name}] {message}", file=sys.stderr, flush=True)


def run_dataset(name, *, quick=False, output=None, random_state=0, verbose=0):
    """Train, measure and score on one dataset.

    Parameters
    ----------
    name : str
        A key of ``DATASETS``: "digits", "breast_cancer" or "diabetes".
    quick : bool, default=False
    output : str, default=None
        Folder for PNG figures (created when missing); none when None.
    random_state : int, default=0
    verbose : int, default=0

    Returns
    -------
    result : DemoResult
    """
    check_dataset_names([name])
    if output is not None:
        check_plotting()
    run = _start(name, quick=quick, random_state=random_state, verbose=verbose)
    _train(run)
    K = _measure_kernel(run)
    machines = _measure_kernel_machine(run)
    cv = _cross_validate(run)
    _score_held_out(run, K)
    run.result.notes += method_notes(
        classification=run.classification,
        n_folds=run.n_folds,
        n_queries=run.n_queries,
        n_nodes=N_NODES,
    )
    run.result.notes += divergence_notes(
        run.divergence, n_diverged_folds=cv.n_diverged, n_folds=run.n_folds
    )
    run.result.contributors = contributor_lines(
        machines[1], est=run.est, data=run.data, classification=run.classification
    )
    if output is not None:
        run.result.figures = _draw_figures(run, output, K, machines)
    return run.result


def _start(name, *, quick, random_state, verbose):
    """Load the data, set up the network and the result with its title."""
    spec = DATASETS[name]
    run = _Run(
        name=name,
        spec=spec,
        data=load_dataset(name, quick=quick, random_state=random_state),
        quick=quick,
        random_state=random_state,
        verbose=verbose,
    )
    cls = PathKernelClassifier if run.classification else PathKernelRegressor
    run.template = cls(
        spec.hidden_layer_sizes,
        learning_rate_init=spec.learning_rate_init,
        max_iter=run.max_iter,
        tol=0.0,
        dtype="float64",
        random_state=random_state,
    )
    run.est = clone(run.template)
    n_train, n_features = run.data.X_train.shape
    run.result = DemoResult(
        name=name,
        task=spec.task,
        metric="accuracy" if run.classification else "R^2",
        n_train=n_train,
        n_test=len(run.data.X_test),
        n_features=n_features,
        estimator=run.est,
        title=_title(run),
    )
    return run


def _title(run):
    """The dataset's size and task, and the network trained on it."""
    n_train, n_features = run.data.X_train.shape
    if run.classification:
        what = f"{len(np.unique(run.data.y_train))} classes"
    else:
        what = "regression"
    return (
        f"{run.name}: {what}, {n_features} features, {n_train} training / "
        f"{len(run.data.X_test)} test rows\n  network: "
        f"{type(run.template).__name__}, tanh layers "
        f"{run.spec.hidden_layer_sizes}, float64, {run.max_iter} full-batch GD "
        f"steps, learning_rate_init {run.spec.learning_rate_init}"
    )


def _train(run):
    """Fit the network on the training rows; keep its DivergenceWarning."""
    run.log(f"training the network ({run.max_iter} steps)")
    with Timer() as timer, collect_divergence() as diverged:
        run.est.fit(run.data.X_train, run.data.fit_y_train)
    run.divergence = diverged
    loss = run.est.loss_curve_
    run.result.numbers["final_loss"] = loss[-1]
    run.result.rows.append(
        (
            f"training loss, {run.est.trajectory_.n_steps} steps",
            f"{loss[0]:.4g} -> {loss[-1]:.4g}",
            timer.text,
        )
    )


def _measure_kernel(run):
    """The training rows' path kernel (divided by its mean diagonal)."""
    run.log("path kernel of the training rows")
    with Timer() as timer:
        K = run.est.kernel(run.data.X_train, normalize=NORMALIZE)
    eigenvalues = np.linalg.eigvalsh(K)
    numbers = run.result.numbers
    numbers["kernel_shape"] = K.shape
    numbers["symmetry"] = float(np.abs(K - K.T).max())
    numbers["min_eigenvalue_ratio"] = float(eigenvalues[0] / eigenvalues[-1])
    run.result.rows += [
        (
            f"path kernel size ({len(run.est.trajectory_.kernel_nodes())} nodes, "
            f"{run.est.trajectory_.n_steps} steps)",
            f"{K.shape[0]} x {K.shape[1]}",
            timer.text,
        ),
        ("path kernel symmetry max|K - K^T|", f"{numbers['symmetry']:.1e}", ""),
        ("smallest / largest eigenvalue", f"{numbers['min_eigenvalue_ratio']:.1e}", ""),
    ]
    return K


def _measure_kernel_machine(run):
    """Decompose the first test rows, first-order and exact; their errors."""
    n = run.n_queries
    run.log(f"kernel machine on {n} test rows")
    queries = run.data.X_test[:n]
    with Timer() as t_first:
        first = run.est.decompose(queries)
    with Timer() as t_exact:
        exact = run.est.decompose(queries, exact=True, n_nodes=N_NODES)
    numbers = run.result.numbers
    numbers["error_first_order"] = first.error["max_rel"]
    numbers["error_exact"] = exact.error["max_rel"]
    run.result.rows += [
        (
            f"kernel machine error, first order ({n} test rows)",
            f"{numbers['error_first_order']:.1e}",
            t_first.text,
        ),
        ("kernel machine error, exact", f"{numbers['error_exact']:.1e}", t_exact.text),
    ]
    return first, exact


def _cross_validate(run):
    run.log(f"{run.n_folds}-fold cross-validation")
    scores = cross_validate(
        run.template,
        run.data,
        classification=run.classification,
        n_folds=run.n_folds,
        random_state=run.random_state,
    )
    run.result.numbers["cv"] = scores.values
    _add_score_rows(run, scores, f"{run.n_folds}-fold CV")
    return scores


def _score_held_out(run, K):
    run.log("held-out scores")
    scores = held_out_scores(run.est, K, run.data, classification=run.classification)
    run.result.numbers["test"] = scores.values
    _add_score_rows(run, scores, "held-out test")


def _add_score_rows(run, scores, how):
    """One table row per model: a score, or the mean +- std of fold scores."""
    kind = "SVC" if run.classification else "KernelRidge"
    labels = {
        "network": "network",
        "path kernel": f"{kind} on the path kernel",
        "rbf": f"{kind} on an RBF kernel",
    }
    for model in MODELS:
        score = scores.values[model]
        if np.ndim(score):
            value = f"{score.mean():.3f} +- {score.std():.3f}"
        else:
            value = f"{score:.3f}"
        run.result.rows.append(
            (
                f"{run.result.metric}, {how}: {labels[model]}",
                value,
                scores.seconds.get(model, ""),
            )
        )


def _draw_figures(run, output, K, machines):
    run.log(f"figures in {output}")
    try:
        return write_figures(
            output,
            run.name,
            est=run.est,
            K=K,
            machines=machines,
            data=run.data,
            spec=run.spec,
        )
    except OSError as exc:
        raise DemoError(
            f"cannot write the figures of {run.name} to {output}: {exc.strerror or exc}"
        ) from None
