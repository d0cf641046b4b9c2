"""The ``demo`` command: a trained network's path kernel on scikit-learn's datasets.

For each dataset (``load_digits``, ``load_breast_cancer``, ``load_diabetes``)
the demo holds out a quarter of the rows, standardizes X (and the target of
a regression) on the training rows, trains a network by full-batch gradient
descent in float64 with every step recorded, and reports:

- the path kernel of the training rows: its size, its symmetry
  ``max |K - K^T|``, its smallest eigenvalue relative to its largest (zero
  or positive up to rounding: the kernel is a positive sum of Gram
  matrices) and the time it took;
- how well the kernel machine reconstructs the network on a few test rows,
  in the paper's first-order form and in the exact form
  (``decompose(X, exact=False / True).error["max_rel"]``);
- cross-validated and held-out scores of the network itself, of ``SVC`` /
  ``KernelRidge`` on its path kernel (``PathKernelTransformer`` in a
  ``Pipeline``, so that every fold retrains the network on its own rows)
  and of the same kernel machine on an RBF kernel;
- the training examples that contribute most to a few test predictions.

``run_demo`` prints one table per dataset; ``run_dataset`` returns the
numbers behind it as a ``DemoResult``.
"""

import os
import sys
import textwrap
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DATASETS", "DemoResult", "run_dataset", "run_demo"]


@dataclass(frozen=True)
class _Dataset:
    """How the demo loads a dataset and which network it trains on it."""

    loader: str
    task: str
    hidden_layer_sizes: tuple
    learning_rate: float
    max_iter: int
    quick_max_iter: int
    image_shape: tuple = None


# Settings that give test scores close to the best of a small grid, with few
# steps: the kernel's cost is linear in the number of recorded steps.
DATASETS = {
    "digits": _Dataset(
        "load_digits",
        "classification",
        hidden_layer_sizes=(64,),
        learning_rate=0.5,
        max_iter=60,
        quick_max_iter=40,
        image_shape=(8, 8),
    ),
    "breast_cancer": _Dataset(
        "load_breast_cancer",
        "classification",
        hidden_layer_sizes=(32,),
        learning_rate=0.5,
        max_iter=60,
        quick_max_iter=40,
    ),
    "diabetes": _Dataset(
        "load_diabetes",
        "regression",
        hidden_layer_sizes=(32,),
        learning_rate=0.1,
        max_iter=60,
        quick_max_iter=40,
    ),
}

_QUICK_TRAIN_ROWS = 300
_QUICK_TEST_ROWS = 200
_TEST_SIZE = 0.25
_N_QUERIES = {False: 10, True: 5}  # test rows decomposed (full, quick)
_N_EXPLAINED = 3  # test rows whose top contributors are printed
_TOP_K = 5
_N_NODES = 8  # Gauss-Legendre nodes per step of the exact decomposition
_C_GRID = [0.1, 1.0, 10.0, 100.0, 1000.0]
_ALPHA_GRID = [1e-3, 1e-2, 0.1, 1.0, 10.0]
_INNER_FOLDS = 3
_WIDTH = 100  # wrap notes and contributor lines at this many characters


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
    rows : list of tuple
        ``(quantity, value, seconds)`` strings: the table.
    numbers : dict
        ``kernel_shape``, ``symmetry`` (max ``|K - K^T|``),
        ``min_eigenvalue_ratio`` (smallest over largest eigenvalue),
        ``error_first_order`` and ``error_exact`` (largest relative
        reconstruction error), ``cv`` and ``test`` (score per model:
        "network", "path kernel", "rbf"; the CV entries are arrays of fold
        scores), ``final_loss``.
    contributors : list of str
        One line per explained test row.
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
        """The result as printed: the table, the contributors and the notes.

        Returns
        -------
        text : str
        """
        header = ("quantity", "value", "seconds")
        widths = [
            max(len(header[j]), *(len(row[j]) for row in self.rows)) for j in range(3)
        ]
        rule = "  ".join("-" * w for w in widths)

        def line(cells):
            return (
                f"  {cells[0]:<{widths[0]}}  {cells[1]:<{widths[1]}}  "
                f"{cells[2]:>{widths[2]}}"
            ).rstrip()

        out = [self.title, line(header), "  " + rule]
        out += [line(row) for row in self.rows]
        out.append("  " + rule)
        for note in self.notes:
            out.append(
                textwrap.fill(
                    note, width=_WIDTH, initial_indent="  * ", subsequent_indent="    "
                )
            )
        if self.contributors:
            out.append("")
            out += self.contributors
        if self.figures:
            out.append("")
            out.append("  figures:")
            out += [f"    {path}" for path in self.figures]
        return "\n".join(out)


def check_output_directory(path):
    """Make sure figures can be written to ``path`` before any work is done.

    Parameters
    ----------
    path : str
        The ``--output`` folder; created when missing.

    Raises
    ------
    CLIError
        Without matplotlib, or when the folder cannot be created or written.
    """
    from ._cli import CLIError

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError(
            "--output writes figures with matplotlib, which is not installed: "
            "pip install matplotlib (or 'sklearn-pathkernel[plot]'), or leave "
            "out --output"
        ) from None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise CLIError(
            f"cannot create the --output directory {path}: {exc.strerror or exc}"
        ) from None
    if not os.access(path, os.W_OK):
        raise CLIError(f"cannot write to the --output directory {path}")


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
    """
    names = list(DATASETS) if names is None else names
    mode = "quick" if quick else "full"
    print(
        f"sklearn_pathkernel demo, {mode} mode: networks trained by gradient "
        "descent and their path kernels"
    )
    start = time.perf_counter()
    results = []
    for name in names:
        result = run_dataset(
            name,
            quick=quick,
            output=output,
            random_state=random_state,
            verbose=verbose,
        )
        print()
        print(result.table(), flush=True)
        results.append(result)
    print(f"\ndemo finished in {time.perf_counter() - start:.1f} s")
    return results


class _Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def _log(verbose, name, message):
    if verbose:
        print(f"[{name}] {message}", file=sys.stderr, flush=True)


def _load(name, *, quick, random_state):
    """Split, subsample (quick) and return raw rows, labels and images."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    spec = DATASETS[name]
    bunch = getattr(datasets, spec.loader)()
    X, y = bunch.data.astype(np.float64), bunch.target
    if spec.task == "classification" and name != "digits":
        y = np.asarray(bunch.target_names)[y]  # string labels work as well
    stratify = y if spec.task == "classification" else None
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=_TEST_SIZE, stratify=stratify, random_state=random_state
    )
    if quick:
        X_train, y_train = _head(
            X_train, y_train, _QUICK_TRAIN_ROWS, spec, random_state
        )
        X_test, y_test = _head(X_test, y_test, _QUICK_TEST_ROWS, spec, random_state)
    return X_train, X_test, y_train, y_test


def _head(X, y, n, spec, random_state):
    """A random (stratified) subsample of ``n`` rows, or all when fewer."""
    from sklearn.model_selection import train_test_split

    if len(X) <= n:
        return X, y
    stratify = y if spec.task == "classification" else None
    X, _, y, _ = train_test_split(
        X, y, train_size=n, stratify=stratify, random_state=random_state
    )
    return X, y


def run_dataset(name, *, quick=False, output=None, random_state=0, verbose=0):
    """Train, measure and score on one dataset.

    Parameters
    ----------
    name : {"digits", "breast_cancer", "diabetes"}
    quick : bool, default=False
    output : str, default=None
        Folder for PNG figures (created when missing); none when None.
    random_state : int, default=0
    verbose : int, default=0

    Returns
    -------
    result : DemoResult
    """
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler

    from ._estimators import PathKernelClassifier, PathKernelRegressor
    from .exceptions import DivergenceWarning

    spec = DATASETS[name]
    classification = spec.task == "classification"
    X_train_raw, X_test_raw, y_train, y_test = _load(
        name, quick=quick, random_state=random_state
    )
    scaler = StandardScaler().fit(X_train_raw)
    X_train, X_test = scaler.transform(X_train_raw), scaler.transform(X_test_raw)
    if classification:
        fit_y_train, fit_y_test = y_train, y_test
        y_scale = 1.0
    else:  # the step size is absolute: standardize the target too (R^2 unchanged)
        y_mean, y_scale = y_train.mean(), y_train.std()
        fit_y_train = (y_train - y_mean) / y_scale
        fit_y_test = (y_test - y_mean) / y_scale
    max_iter = spec.quick_max_iter if quick else spec.max_iter
    n_folds = 3 if quick else 5
    n_queries = min(_N_QUERIES[quick], len(X_test))
    cls = PathKernelClassifier if classification else PathKernelRegressor
    template = cls(
        spec.hidden_layer_sizes,
        learning_rate=spec.learning_rate,
        max_iter=max_iter,
        tol=0.0,
        dtype="float64",
        random_state=random_state,
    )
    est = clone(template)

    result = DemoResult(
        name,
        spec.task,
        "accuracy" if classification else "R^2",
        len(X_train),
        len(X_test),
        X_train.shape[1],
        est,
    )
    numbers = result.numbers
    what = f"{len(np.unique(y_train))} classes" if classification else "regression"
    result.title = (
        f"{name}: {what}, {X_train.shape[1]} features, {len(X_train)} training / "
        f"{len(X_test)} test rows\n  network: {cls.__name__}, tanh layers "
        f"{spec.hidden_layer_sizes}, float64, {max_iter} full-batch GD steps, "
        f"learning_rate {spec.learning_rate}"
    )
    rows = result.rows
    metric = result.metric

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _log(verbose, name, f"training the network ({max_iter} steps)")
        with _Timer() as t_fit:
            est.fit(X_train, fit_y_train)
        loss = est.loss_curve_
        numbers["final_loss"] = loss[-1]
        steps = est.trajectory_.n_steps
        rows.append(
            (
                f"training loss, {steps} steps",
                f"{loss[0]:.4g} -> {loss[-1]:.4g}",
                f"{t_fit.seconds:.2f}",
            )
        )

        _log(verbose, name, "path kernel of the training rows")
        with _Timer() as t_kernel:
            K = est.kernel(X_train)
        eigenvalues = np.linalg.eigvalsh(K)
        numbers["kernel_shape"] = K.shape
        numbers["symmetry"] = float(np.abs(K - K.T).max())
        numbers["min_eigenvalue_ratio"] = float(eigenvalues[0] / eigenvalues[-1])
        rows += [
            (
                f"path kernel size ({len(est.trajectory_)} checkpoints)",
                f"{K.shape[0]} x {K.shape[1]}",
                f"{t_kernel.seconds:.2f}",
            ),
            ("path kernel symmetry max|K - K^T|", f"{numbers['symmetry']:.1e}", ""),
            (
                "smallest / largest eigenvalue",
                f"{numbers['min_eigenvalue_ratio']:.1e}",
                "",
            ),
        ]

        _log(verbose, name, f"kernel machine on {n_queries} test rows")
        queries = X_test[:n_queries]
        with _Timer() as t_first:
            first = est.decompose(queries)
        with _Timer() as t_exact:
            exact = est.decompose(queries, exact=True, n_nodes=_N_NODES)
        numbers["error_first_order"] = first.error["max_rel"]
        numbers["error_exact"] = exact.error["max_rel"]
        rows += [
            (
                f"kernel machine error, first order ({n_queries} test rows)",
                f"{numbers['error_first_order']:.1e}",
                f"{t_first.seconds:.2f}",
            ),
            (
                "kernel machine error, exact",
                f"{numbers['error_exact']:.1e}",
                f"{t_exact.seconds:.2f}",
            ),
        ]

        _log(verbose, name, f"{n_folds}-fold cross-validation")
        cv, cv_seconds, fold_networks = _cross_validate(
            template, X_train_raw, y_train, classification, n_folds, random_state
        )
        numbers["cv"] = cv
        kind = "SVC" if classification else "KernelRidge"
        names = {
            "network": "network",
            "path kernel": f"{kind} on the path kernel",
            "rbf": f"{kind} on an RBF kernel",
        }
        for key, label in names.items():
            scores = cv[key]
            rows.append(
                (
                    f"{metric}, {n_folds}-fold CV: {label}",
                    f"{scores.mean():.3f} +- {scores.std():.3f}",
                    cv_seconds.get(key, ""),
                )
            )

        _log(verbose, name, "held-out scores")
        test, test_seconds = _test_scores(
            est,
            K,
            X_train,
            X_test,
            fit_y_train,
            fit_y_test,
            X_train_raw,
            X_test_raw,
            y_train,
            y_test,
            classification,
        )
        numbers["test"] = test
        for key, label in names.items():
            rows.append(
                (
                    f"{metric}, held-out test: {label}",
                    f"{test[key]:.3f}",
                    test_seconds.get(key, ""),
                )
            )

    divergence = [
        str(w.message) for w in caught if issubclass(w.category, DivergenceWarning)
    ]
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    folds = "stratified folds" if classification else "folds"
    parameter, grid = ("C", _C_GRID) if classification else ("alpha", _ALPHA_GRID)
    result.notes += [
        f"CV: {n_folds} {folds} of the training rows. Each fold standardizes X and "
        "retrains the network on its own rows (PathKernelTransformer in a "
        "Pipeline); the network's CV scores are those fold networks', and the "
        "path kernel's CV seconds include training them.",
        f"{parameter} of both kernel machines: a {_INNER_FOLDS}-fold grid search "
        f"over {grid} inside every fit; the path kernel is divided by its mean "
        "diagonal.",
        f"Kernel machine f(x) = b(x) + sum_i phi_i(x): largest relative error "
        f"against the network on the first {n_queries} test rows; the exact form "
        f"uses {_N_NODES} Gauss-Legendre nodes per step.",
    ]
    result.notes += _divergence_notes(divergence, est, fold_networks)

    result.contributors = _contributor_lines(
        est, exact, y_train, y_test, classification, y_scale
    )
    if output is not None:
        _log(verbose, name, f"figures in {output}")
        result.figures = _write_figures(
            name,
            output,
            est,
            K,
            first,
            exact,
            X_train_raw,
            X_test_raw[:n_queries],
            y_train,
            classification,
            spec.image_shape,
        )
    return result


def _kernel_machines(template, classification):
    """The two cross-validated kernel machines, as unfitted pipelines."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from ._transformers import PathKernelTransformer

    if classification:
        path_final = GridSearchCV(
            SVC(kernel="precomputed"), {"C": _C_GRID}, cv=_INNER_FOLDS
        )
        rbf_final = GridSearchCV(SVC(kernel="rbf"), {"C": _C_GRID}, cv=_INNER_FOLDS)
    else:
        path_final = GridSearchCV(
            KernelRidge(kernel="precomputed"), {"alpha": _ALPHA_GRID}, cv=_INNER_FOLDS
        )
        # gamma defaults to 1 / n_features: "scale" for standardized X.
        rbf_final = GridSearchCV(
            KernelRidge(kernel="rbf"), {"alpha": _ALPHA_GRID}, cv=_INNER_FOLDS
        )
    path = make_pipeline(
        StandardScaler(),
        PathKernelTransformer(template, normalize="mean_diagonal"),
        path_final,
    )
    rbf = make_pipeline(StandardScaler(), rbf_final)
    if not classification:
        path = TransformedTargetRegressor(path, transformer=StandardScaler())
        rbf = TransformedTargetRegressor(rbf, transformer=StandardScaler())
    return path, rbf


def _cross_validate(template, X, y, classification, n_folds, random_state):
    """Fold scores of the network, the path-kernel machine and the RBF one."""
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import KFold, StratifiedKFold, cross_validate

    folds = (StratifiedKFold if classification else KFold)(
        n_folds, shuffle=True, random_state=random_state
    )
    path, rbf = _kernel_machines(template, classification)
    with _Timer() as t_path:
        done = cross_validate(
            path, X, y, cv=folds, return_estimator=True, return_indices=True
        )
    with _Timer() as t_rbf:
        rbf_done = cross_validate(rbf, X, y, cv=folds)
    network_scores, networks = [], []
    for model, test in zip(done["estimator"], done["indices"]["test"]):
        pipeline = model if classification else model.regressor_
        scaler, transformer = pipeline[0], pipeline[1]
        network = transformer.estimator_
        networks.append(network)
        prediction = network.predict(scaler.transform(X[test]))
        if classification:
            network_scores.append(accuracy_score(y[test], prediction))
        else:  # back to the units of y
            prediction = model.transformer_.inverse_transform(
                prediction.reshape(-1, 1)
            ).ravel()
            network_scores.append(r2_score(y[test], prediction))
    scores = {
        "network": np.asarray(network_scores),
        "path kernel": done["test_score"],
        "rbf": rbf_done["test_score"],
    }
    seconds = {"path kernel": f"{t_path.seconds:.2f}", "rbf": f"{t_rbf.seconds:.2f}"}
    return scores, seconds, networks


def _test_scores(
    est,
    K,
    X_train,
    X_test,
    fit_y_train,
    fit_y_test,
    X_train_raw,
    X_test_raw,
    y_train,
    y_test,
    classification,
):
    """Held-out scores: the network, its path kernel, and the RBF baseline.

    The path-kernel machine reuses the network trained on all training rows
    and its kernel: the same as fitting the cross-validated pipeline on them.
    """
    path, rbf = _kernel_machines(est, classification)
    search = path[-1] if classification else path.regressor[-1]
    scale = float(np.mean(np.diag(K)))  # "mean_diagonal", as in the pipeline
    with _Timer() as t_path:
        K_test = est.kernel(X_test, X_train) / scale
        search.fit(K / scale, fit_y_train)
        path_score = search.score(K_test, fit_y_test)  # R^2: same in any units
    with _Timer() as t_rbf:
        rbf_score = rbf.fit(X_train_raw, y_train).score(X_test_raw, y_test)
    scores = {
        "network": est.score(X_test, fit_y_test),
        "path kernel": path_score,
        "rbf": rbf_score,
    }
    seconds = {"path kernel": f"{t_path.seconds:.2f}", "rbf": f"{t_rbf.seconds:.2f}"}
    return scores, seconds


def _diverged(network):
    loss = np.asarray(network.loss_curve_, dtype=float)
    return loss.size and (not np.isfinite(loss).all() or loss[-1] > loss[0])


def _divergence_notes(messages, est, fold_networks):
    """Report divergence: warnings raised, or a loss that ended above its start."""
    notes = [f"WARNING: {message}" for message in dict.fromkeys(messages)]
    if _diverged(est):
        notes.append(
            "WARNING: the training loss grew from "
            f"{est.loss_curve_[0]:.4g} to {est.loss_curve_[-1]:.4g}: gradient "
            "descent diverged; use a smaller learning_rate"
        )
    bad = sum(bool(_diverged(network)) for network in fold_networks)
    if bad:
        notes.append(
            f"WARNING: the network diverged in {bad} of the {len(fold_networks)} "
            "cross-validation folds"
        )
    return notes


def _format_label(value):
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def _contributor_lines(est, machine, y_train, y_test, classification, y_scale):
    """``top_contributors`` of the first test rows: a heading and two lines each.

    With several outputs (a multi-class network) each row is ranked on the
    logit of its predicted class, as ``plot_contributions`` does: the
    machine is cut down to that output first.
    """
    from ._decompose import KernelMachine

    n = min(_N_EXPLAINED, machine.contributions.shape[0])
    k = min(_TOP_K, machine.contributions.shape[1])
    outputs = machine.network_output
    several = outputs.shape[1] > 1
    if not classification:
        of = "the prediction, in units of the target"
    elif several:
        of = "the logit of the predicted class"
    else:
        of = f"the logit of {str(est.classes_[1])!r}"
    lines = [
        textwrap.fill(
            f"training examples that contribute most to {n} test predictions "
            f"(exact form; phi_i(x) to {of}):",
            width=_WIDTH,
            initial_indent="  ",
            subsequent_indent="    ",
        )
    ]
    for q in range(n):
        column = int(np.argmax(outputs[q])) if several else 0
        row = KernelMachine(
            machine.bias[q : q + 1, [column]],
            machine.contributions[q : q + 1, :, [column]],
            machine.network_output[q : q + 1, [column]],
            machine.kernel[q : q + 1],
            machine.exact,
        )
        top = row.top_contributors(k)
        values = top.values[0, :, 0]
        if classification:
            predicted = (
                est.classes_[column]
                if several
                else est.classes_[int(outputs[q, 0] > 0)]
            )
            about = f"true {_format_label(y_test[q])}, predicted {predicted}"
        else:
            values = values * y_scale
            network = float(np.mean(y_train)) + outputs[q, 0] * y_scale
            about = f"target {_format_label(y_test[q])}, predicted {network:.1f}"
        parts = [
            f"#{i} ({_format_label(y_train[i])}) {value:+.3g}"
            for i, value in zip(top.indices[0], values)
        ]
        lines.append(
            f"    test row {q} ({about}): the top {k} of {len(y_train)} carry "
            f"{top.share[0]:.0%} of sum |phi_i|"
        )
        lines.append(
            textwrap.fill(
                ", ".join(parts),
                width=_WIDTH,
                initial_indent="      ",
                subsequent_indent="      ",
                break_long_words=False,
            )
        )
    return lines


def _write_figures(
    name,
    folder,
    est,
    K,
    first,
    exact,
    X_train_raw,
    X_query_raw,
    y_train,
    classification,
    image_shape,
):
    """Draw the dataset's figures with ``sklearn_pathkernel.plotting``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import plotting

    os.makedirs(folder, exist_ok=True)
    paths = []

    def save(figure, stem):
        path = os.path.join(folder, f"{name}_{stem}.png")
        figure.savefig(path, dpi=100)
        plt.close(figure)
        paths.append(path)

    if classification:
        ax = plotting.plot_gram(
            K,
            labels=y_train,
            title=f"{name}: path kernel of {len(K)} training rows, by class",
        )
    else:
        order = np.argsort(y_train, kind="stable")
        ax = plotting.plot_gram(
            K[np.ix_(order, order)],
            title=f"{name}: path kernel of {len(K)} training rows, by target",
        )
    save(ax.figure, "gram")

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    plotting.plot_reconstruction(first, ax=left, title="First-order (the paper)")
    plotting.plot_reconstruction(exact, ax=right, title="Exact (Gauss-Legendre)")
    fig.suptitle(f"{name}: network output vs kernel-machine prediction")
    fig.tight_layout()
    save(fig, "reconstruction")

    labels = [_format_label(value) for value in y_train]
    ax = plotting.plot_contributions(exact, query=0, k=10, labels=labels)
    ax.figure.set_size_inches(8, 4.5)
    ax.figure.tight_layout()
    save(ax.figure, "contributions")

    if image_shape is not None:
        fig, _ = plotting.plot_contributing_images(
            exact,
            X_train_raw,
            query=0,
            X_query=X_query_raw,
            k=8,
            image_shape=image_shape,
            labels=labels,
        )
        fig.tight_layout()
        save(fig, "contributing_images")

    ax = plotting.plot_loss_curve(est)
    ax.set_title(f"{name}: training loss")
    save(ax.figure, "loss")
    return paths
