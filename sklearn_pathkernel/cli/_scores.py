"""The demo's scores: the network, SVC / KernelRidge on its path kernel, RBF.

The path-kernel machine is a ``Pipeline`` of ``StandardScaler``,
``PathKernelTransformer(normalize="mean_diagonal")`` and a grid-searched
``SVC`` or ``KernelRidge``, so that every cross-validation fold retrains the
network on its own rows. The RBF machine is the same without the network.
"""

from dataclasses import dataclass

import numpy as np
from sklearn.compose import TransformedTargetRegressor
from sklearn.kernel_ridge import KernelRidge
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.model_selection import cross_validate as sklearn_cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from .. import PathKernelTransformer
from ._timing import Timer
from ._warnings import collect_divergence

C_GRID = [0.1, 1.0, 10.0, 100.0, 1000.0]
ALPHA_GRID = [1e-3, 1e-2, 0.1, 1.0, 10.0]
INNER_FOLDS = 3
NORMALIZE = "mean_diagonal"  # the path kernel's scaling in every machine

#: The models scored, by key of ``Scores.values``.
MODELS = ("network", "path kernel", "rbf")


@dataclass
class Scores:
    """Scores of the three models, and the seconds the kernel machines took.

    Attributes
    ----------
    values : dict
        Score per model of ``MODELS``: a float, or for cross-validation an
        array of fold scores.
    seconds : dict
        ``"path kernel"`` and ``"rbf"``: the time as printed.
    n_diverged : int
        Cross-validation only: fold networks whose training diverged.
    """

    values: dict
    seconds: dict
    n_diverged: int = 0


def grid(classification):
    """``(name, values)`` of the kernel machines' grid-searched parameter."""
    return ("C", C_GRID) if classification else ("alpha", ALPHA_GRID)


def kernel_machines(template, classification):
    """The path-kernel and RBF machines, as unfitted pipelines on raw X.

    A regression pipeline standardizes the target too
    (``TransformedTargetRegressor``), as the demo's network does.
    """
    name, values = grid(classification)
    if classification:
        path_final, rbf_final = SVC(kernel="precomputed"), SVC(kernel="rbf")
    else:  # gamma defaults to 1 / n_features: "scale" for standardized X
        path_final = KernelRidge(kernel="precomputed")
        rbf_final = KernelRidge(kernel="rbf")
    path = make_pipeline(
        StandardScaler(),
        PathKernelTransformer(template, normalize=NORMALIZE),
        GridSearchCV(path_final, {name: values}, cv=INNER_FOLDS),
    )
    rbf = make_pipeline(
        StandardScaler(), GridSearchCV(rbf_final, {name: values}, cv=INNER_FOLDS)
    )
    if not classification:
        path = TransformedTargetRegressor(path, transformer=StandardScaler())
        rbf = TransformedTargetRegressor(rbf, transformer=StandardScaler())
    return path, rbf


def cross_validate(template, data, *, classification, n_folds, random_state):
    """Fold scores of the network, the path-kernel machine and the RBF one.

    The network's score in a fold is that of the network the path-kernel
    pipeline trained in the fold. The fits' ``DivergenceWarning`` are
    counted, not shown (each fit warns at most once).

    Parameters
    ----------
    template : PathKernelClassifier or PathKernelRegressor
        The unfitted network.
    data : DemoData
        Its raw training rows are split into folds.
    classification : bool
    n_folds : int
    random_state : int

    Returns
    -------
    scores : Scores
    """
    X, y = data.X_train_raw, data.y_train
    folds = (StratifiedKFold if classification else KFold)(
        n_folds, shuffle=True, random_state=random_state
    )
    path, rbf = kernel_machines(template, classification)
    with Timer() as t_path, collect_divergence() as diverged:
        done = sklearn_cross_validate(
            path, X, y, cv=folds, return_estimator=True, return_indices=True
        )
    with Timer() as t_rbf:
        rbf_done = sklearn_cross_validate(rbf, X, y, cv=folds)
    network = [
        _fold_network_score(model, X[test], y[test], classification)
        for model, test in zip(done["estimator"], done["indices"]["test"])
    ]
    values = {
        "network": np.asarray(network),
        "path kernel": done["test_score"],
        "rbf": rbf_done["test_score"],
    }
    seconds = {"path kernel": t_path.text, "rbf": t_rbf.text}
    return Scores(values, seconds, n_diverged=len(diverged))


def _fold_network_score(model, X, y, classification):
    """The score of the network inside a fitted path-kernel pipeline."""
    pipeline = model if classification else model.regressor_
    scaler, transformer = pipeline[0], pipeline[1]
    prediction = transformer.estimator_.predict(scaler.transform(X))
    if classification:
        return accuracy_score(y, prediction)
    # Back to the units of y.
    prediction = model.transformer_.inverse_transform(prediction.reshape(-1, 1))
    return r2_score(y, prediction.ravel())


def held_out_scores(est, K, data, *, classification):
    """Test scores of the network, its path kernel and the RBF baseline.

    The path-kernel machine reuses the network trained on all training rows
    and its kernel ``K``: the same as fitting the cross-validated pipeline
    on those rows, whose ``PathKernelTransformer`` divides by the same mean
    training diagonal.

    Parameters
    ----------
    est : PathKernelClassifier or PathKernelRegressor
        The network, fitted on ``data.X_train``.
    K : ndarray of shape (n_train, n_train)
        ``est.kernel(data.X_train, normalize="mean_diagonal")``.
    data : DemoData
    classification : bool

    Returns
    -------
    scores : Scores
    """
    path, rbf = kernel_machines(est, classification)
    search = path[-1] if classification else path.regressor[-1]
    with Timer() as t_path:
        K_test = est.kernel(data.X_test, data.X_train, normalize=NORMALIZE)
        search.fit(K, data.fit_y_train)
        path_score = search.score(K_test, data.fit_y_test)  # R^2: any units
    with Timer() as t_rbf:
        rbf.fit(data.X_train_raw, data.y_train)
        rbf_score = rbf.score(data.X_test_raw, data.y_test)
    values = {
        "network": est.score(data.X_test, data.fit_y_test),
        "path kernel": path_score,
        "rbf": rbf_score,
    }
    return Scores(values, {"path kernel": t_path.text, "rbf": t_rbf.text})
