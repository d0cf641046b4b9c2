"""The demo's datasets: how each is loaded and split, and its network.

To add a dataset, add an entry to ``DATASETS``: the name of its loader in
``sklearn.datasets``, its task and the settings of its network.

The parser lists and checks the names of ``DATASETS`` before any command
runs, so this module imports numpy and scikit-learn only when it loads data:
``--help`` and a usage error start without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._errors import DemoError

if TYPE_CHECKING:  # the annotations of DemoData only
    import numpy as np


@dataclass(frozen=True)
class DatasetSpec:
    """How the demo loads a dataset and which network it trains on it.

    Attributes
    ----------
    loader : str
        A ``sklearn.datasets`` function, e.g. ``"load_digits"``.
    task : {"classification", "regression"}
    hidden_layer_sizes : tuple of int
    learning_rate_init : float
    max_iter : int
        Full-batch steps of a full run.
    quick_max_iter : int
        Steps with ``--quick``.
    image_shape : tuple of int, default=None
        The shape of a row as an image, for the figure of contributing
        training images; None for data that are not images.
    """

    loader: str
    task: str
    hidden_layer_sizes: tuple
    learning_rate_init: float
    max_iter: int
    quick_max_iter: int
    image_shape: tuple = None


# Settings that give test scores close to the best of a small grid, with few
# steps: the kernel's cost is linear in the number of recorded steps.
DATASETS = {
    "digits": DatasetSpec(
        "load_digits",
        "classification",
        hidden_layer_sizes=(64,),
        learning_rate_init=0.5,
        max_iter=60,
        quick_max_iter=40,
        image_shape=(8, 8),
    ),
    "breast_cancer": DatasetSpec(
        "load_breast_cancer",
        "classification",
        hidden_layer_sizes=(32,),
        learning_rate_init=0.5,
        max_iter=60,
        quick_max_iter=40,
    ),
    "diabetes": DatasetSpec(
        "load_diabetes",
        "regression",
        hidden_layer_sizes=(32,),
        learning_rate_init=0.1,
        max_iter=60,
        quick_max_iter=40,
    ),
}


def check_dataset_names(names):
    """Raise ``DemoError`` unless ``names`` are one or more keys of ``DATASETS``.

    Examples
    --------
    >>> from sklearn_pathkernel.cli._datasets import check_dataset_names
    >>> check_dataset_names(["digits"])
    >>> check_dataset_names(["iris"])
    Traceback (most recent call last):
    ...
    sklearn_pathkernel.cli._errors.DemoError: unknown dataset 'iris'; choose from ...
    """
    unknown = [name for name in names if name not in DATASETS]
    if unknown or not names:
        what = ", ".join(map(repr, unknown)) or "none given"
        raise DemoError(f"unknown dataset {what}; choose from {','.join(DATASETS)}")


QUICK_TRAIN_ROWS = 300
QUICK_TEST_ROWS = 200
TEST_SIZE = 0.25


@dataclass(frozen=True)
class DemoData:
    """One dataset, split into training and test rows, as the demo uses it.

    Attributes
    ----------
    X_train_raw, X_test_raw : ndarray
        The features as loaded.
    X_train, X_test : ndarray
        Standardized with the training rows' mean and standard deviation.
    y_train, y_test : ndarray
        The targets as loaded: class labels, or values in the target's units.
    fit_y_train, fit_y_test : ndarray
        What the network is trained and scored on: the labels, or for a
        regression the target standardized like X (gradient descent takes
        absolute steps; R^2 does not change).
    y_mean, y_scale : float
        ``y = y_mean + y_scale * fit_y`` (0 and 1 for classification).
    """

    X_train_raw: np.ndarray
    X_test_raw: np.ndarray
    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    fit_y_train: np.ndarray
    fit_y_test: np.ndarray
    y_mean: float = 0.0
    y_scale: float = 1.0


def load_dataset(name, *, quick=False, random_state=0):
    """Load, split (a quarter held out), subsample with ``quick``, standardize.

    Parameters
    ----------
    name : str
        A key of ``DATASETS``.
    quick : bool, default=False
        At most ``QUICK_TRAIN_ROWS`` training and ``QUICK_TEST_ROWS`` test
        rows, drawn at random (stratified for classification).
    random_state : int, default=0

    Returns
    -------
    data : DemoData

    Examples
    --------
    >>> from sklearn_pathkernel.cli._datasets import load_dataset
    >>> data = load_dataset("diabetes", quick=True)
    >>> data.X_train.shape, data.X_test.shape
    ((300, 10), (111, 10))
    >>> bool(abs(data.fit_y_train.mean()) < 1e-12)
    True
    """
    import numpy as np
    from sklearn import datasets
    from sklearn.preprocessing import StandardScaler

    spec = DATASETS[name]
    bunch = getattr(datasets, spec.loader)()
    X, y = bunch.data.astype(np.float64), bunch.target
    if spec.task == "classification" and name != "digits":
        y = np.asarray(bunch.target_names)[y]  # string labels work as well
    X_train, X_test, y_train, y_test = _split(
        X, y, spec, test_size=TEST_SIZE, random_state=random_state
    )
    if quick:
        X_train, y_train = _subsample(
            X_train, y_train, QUICK_TRAIN_ROWS, spec, random_state
        )
        X_test, y_test = _subsample(X_test, y_test, QUICK_TEST_ROWS, spec, random_state)
    scaler = StandardScaler().fit(X_train)
    return DemoData(
        X_train_raw=X_train,
        X_test_raw=X_test,
        X_train=scaler.transform(X_train),
        X_test=scaler.transform(X_test),
        y_train=y_train,
        y_test=y_test,
        **_fit_targets(spec, y_train, y_test),
    )


def _fit_targets(spec, y_train, y_test):
    """The labels as they are; a regression target standardized on y_train."""
    if spec.task == "classification":
        return {"fit_y_train": y_train, "fit_y_test": y_test}
    y_mean, y_scale = float(y_train.mean()), float(y_train.std())
    return {
        "fit_y_train": (y_train - y_mean) / y_scale,
        "fit_y_test": (y_test - y_mean) / y_scale,
        "y_mean": y_mean,
        "y_scale": y_scale,
    }


def _split(X, y, spec, **options):
    """``train_test_split``, stratified for classification."""
    from sklearn.model_selection import train_test_split

    stratify = y if spec.task == "classification" else None
    return train_test_split(X, y, stratify=stratify, **options)


def _subsample(X, y, n, spec, random_state):
    """A random (stratified) subsample of ``n`` rows, or all when fewer."""
    if len(X) <= n:
        return X, y
    X, _, y, _ = _split(X, y, spec, train_size=n, random_state=random_state)
    return X, y
