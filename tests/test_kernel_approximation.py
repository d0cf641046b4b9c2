"""PathKernelNystroem and PathKernelFeatures: explicit features of the path kernel."""

import pickle
import warnings
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from _dispatch import Dispatched
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import Ridge, RidgeClassifier, SGDClassifier
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler, scale
from sklearn.svm import LinearSVC
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_pathkernel import (
    PathKernelClassifier,
    PathKernelFeatures,
    PathKernelNystroem,
    PathKernelRegressor,
    PathKernelTransformer,
)
from sklearn_pathkernel._compute import _blocking
from sklearn_pathkernel._kernel_approximation import inverse_sqrt
from sklearn_pathkernel._kernels._features import path_features

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def toy():
    return _toy(40)


def _toy(n_rows):
    rng = np.random.RandomState(0)
    X = rng.randn(n_rows, 3)
    return X, np.sin(X[:, 0]) + 0.5 * X[:, 1]


@pytest.fixture(scope="module")
def cancer():
    X, y = load_breast_cancer(return_X_y=True)
    return X[::3], y[::3]  # 190 rows, unscaled: the pipelines scale them


def _net(cls=PathKernelRegressor, **params):
    return cls(
        **{
            "hidden_layer_sizes": (8,),
            "max_iter": 20,
            "dtype": "float64",
            "random_state": 0,
            **params,
        }
    )


def _reference_inverse_sqrt(K):
    """``K^(-1/2)`` by numpy's ``eigh``, for a well-conditioned ``K``."""
    eigenvalues, eigenvectors = np.linalg.eigh(K)
    assert eigenvalues.min() > 1e-6 * eigenvalues.max()  # no floor reached
    return eigenvectors @ np.diag(eigenvalues**-0.5) @ eigenvectors.T


def _relative_error(A, B):
    return np.abs(A - B).max() / np.abs(B).max()


def _gram_and_kernel(ny, X):
    Z = ny.transform(X)
    return Z @ Z.T, ny.estimator_.kernel(X)


# -- the features against a plain reference ----------------------------------
def test_transform_is_the_kernel_against_the_landmarks_times_the_inverse_sqrt(toy):
    X, y = toy
    ny = PathKernelNystroem(_net(), n_components=10, random_state=0).fit(X, y)
    L = ny.components_
    np.testing.assert_array_equal(L, X[ny.component_indices_])
    K_LL = ny.estimator_.kernel(L)
    np.testing.assert_allclose(
        ny.normalization_, _reference_inverse_sqrt(K_LL), rtol=1e-8, atol=0
    )
    Z = ny.transform(X)
    assert Z.shape == (40, 10) and Z.dtype == np.float64
    expected = ny.estimator_.kernel(X, L) @ _reference_inverse_sqrt(K_LL)
    np.testing.assert_allclose(Z, expected, rtol=1e-8, atol=1e-12)


def test_features_reproduce_the_kernel_on_the_landmarks(toy):
    X, y = toy
    ny = PathKernelNystroem(_net(), n_components=12, random_state=0).fit(X, y)
    Z_L = ny.transform(X)[ny.component_indices_]
    K_LL = ny.estimator_.kernel(ny.components_)
    assert _relative_error(Z_L @ Z_L.T, K_LL) < 1e-8
    # Away from the landmarks Z Z^T only approximates K.
    assert _relative_error(*_gram_and_kernel(ny, X)) > 1e-6


def test_all_rows_as_landmarks_reproduce_the_full_kernel(toy):
    X, y = toy
    ny = PathKernelNystroem(_net(), n_components=30, random_state=0).fit(X[:30], y[:30])
    assert sorted(ny.component_indices_) == list(range(30))
    assert _relative_error(*_gram_and_kernel(ny, X[:30])) < 1e-8
    # K(X_new, X) = K(X_new, L) K(L, L)^-1 K(L, X) exactly when L is every row.
    Z_new, Z = ny.transform(X[30:]), ny.transform(X[:30])
    assert _relative_error(Z_new @ Z.T, ny.estimator_.kernel(X[30:], X[:30])) < 1e-8


def test_inverse_sqrt_floors_small_and_negative_eigenvalues():
    rng = np.random.RandomState(0)
    B = rng.randn(6, 2)
    K = B @ B.T  # rank 2: four eigenvalues are rounding noise, some negative
    N = inverse_sqrt(K, rtol=6 * np.finfo(np.float64).eps)
    np.testing.assert_array_equal(N, N.T)
    assert np.isfinite(N).all()
    Z = K @ N
    np.testing.assert_allclose(Z @ Z.T, K, atol=1e-10)
    # Full rank: an exact inverse square root.
    A = K + np.eye(6)
    N = inverse_sqrt(A, rtol=1e-15)
    np.testing.assert_allclose(N @ A @ N, np.eye(6), atol=1e-12)
    # An all-zero kernel gives zero features, not NaN.
    zeros = np.zeros((3, 3))
    np.testing.assert_array_equal(zeros @ inverse_sqrt(zeros, rtol=0), zeros)


def test_float32_rounding_noise_is_not_amplified():
    # A linear model's path kernel has rank n_features + 1, so most
    # eigenvalues of K(L, L) are float32 rounding noise, some of them
    # negative; floored at 1e-12 alone (scikit-learn's Nystroem) they would
    # amplify that noise to a 10% error of Z Z^T.
    rng = np.random.RandomState(0)
    X = rng.randn(60, 3)
    y = X @ [1.0, -2.0, 0.5]
    net = _net(hidden_layer_sizes=(), dtype="float32")
    ny = PathKernelNystroem(net, n_components=30, random_state=0).fit(X[:40], y[:40])
    assert _relative_error(*_gram_and_kernel(ny, X[40:])) < 1e-5


# -- landmarks and seeds ------------------------------------------------------
def test_landmarks_are_drawn_as_scikit_learns_nystroem_draws_them(toy):
    X, y = toy
    ny = PathKernelNystroem(_net(), n_components=7, random_state=3).fit(X, y)
    reference = Nystroem(n_components=7, random_state=3).fit(X)
    np.testing.assert_array_equal(ny.component_indices_, reference.component_indices_)
    assert ny.component_indices_.dtype == np.int64
    assert len(set(ny.component_indices_)) == 7  # without replacement


def test_nystroem_features_are_seeded(toy):
    X, y = toy

    def features(random_state):
        ny = PathKernelNystroem(_net(), n_components=8, random_state=random_state)
        return ny.fit(X, y).transform(X)

    np.testing.assert_array_equal(features(0), features(0))
    assert not np.allclose(features(0), features(1))
    # A RandomState instance draws reproducibly from its state.
    np.testing.assert_array_equal(
        features(np.random.RandomState(5)), features(np.random.RandomState(5))
    )


def test_too_many_components_warn_and_use_every_row(toy):
    X, y = toy
    ny = PathKernelNystroem(_net(), n_components=50, random_state=0)
    with pytest.warns(UserWarning, match="n_components=50 is larger than the 40"):
        ny.fit(X, y)
    assert ny.transform(X).shape == (40, 40)
    assert ny.components_.shape == (40, 3) and ny.normalization_.shape == (40, 40)
    assert len(ny.get_feature_names_out()) == 40


# -- normalisation ------------------------------------------------------------
@pytest.mark.parametrize("mode", ["none", "mean_diagonal", "cosine"])
def test_normalize_modes(mode, toy):
    X, y = toy
    ny = PathKernelNystroem(_net(), n_components=10, normalize=mode, random_state=0)
    Z = ny.fit(X[:30], y[:30]).transform(X)
    est, L = ny.estimator_, ny.components_
    inv = _reference_inverse_sqrt(est.kernel(L, normalize=mode))
    np.testing.assert_allclose(
        Z, est.kernel(X, L, normalize=mode) @ inv, rtol=1e-8, atol=1e-12
    )
    if mode == "cosine":  # unit self-similarity, exact on the landmarks
        Z_L = ny.transform(L)
        np.testing.assert_allclose(np.einsum("ij,ij->i", Z_L, Z_L), 1.0, rtol=1e-8)


def test_normalize_none_takes_the_estimators_kernel_normalize(toy):
    X, y = toy
    by_estimator = PathKernelNystroem(
        _net(kernel_normalize="cosine"), n_components=10, random_state=0
    ).fit(X, y)
    by_transformer = PathKernelNystroem(
        _net(), n_components=10, normalize="cosine", random_state=0
    ).fit(X, y)
    np.testing.assert_array_equal(
        by_estimator.transform(X), by_transformer.transform(X)
    )
    # An explicit mode overrides the estimator's.
    overridden = PathKernelNystroem(
        _net(kernel_normalize="cosine"),
        n_components=10,
        normalize="none",
        random_state=0,
    ).fit(X, y)
    plain = PathKernelNystroem(_net(), n_components=10, random_state=0).fit(X, y)
    np.testing.assert_array_equal(overridden.transform(X), plain.transform(X))


# -- the estimator around the network ----------------------------------------
def test_default_estimator_follows_the_target(toy):
    X, y = toy
    labels = (y > 0).astype(int)
    classes = PathKernelNystroem(n_components=5, random_state=0).fit(X, labels)
    values = PathKernelNystroem(n_components=5, random_state=0).fit(X, y)
    assert isinstance(classes.estimator_, PathKernelClassifier)
    assert isinstance(values.estimator_, PathKernelRegressor)
    assert classes.estimator_.random_state == 0


def test_estimator_is_cloned_and_sample_weight_reaches_it(toy):
    X, y = toy
    net = _net()
    weights = np.linspace(0.0, 2.0, len(X))
    ny = PathKernelNystroem(net, n_components=5, random_state=0)
    ny.fit(X, y, sample_weight=weights)
    assert not hasattr(net, "module_") and ny.estimator_ is not net
    np.testing.assert_array_equal(ny.estimator_._fit_sample_weight, weights)
    unweighted = PathKernelNystroem(net, n_components=5, random_state=0).fit(X, y)
    assert not np.allclose(ny.transform(X), unweighted.transform(X))


def test_feature_names_and_pickle(toy):
    X, y = toy
    ny = PathKernelNystroem(_net(), n_components=4, random_state=0).fit(X, y)
    np.testing.assert_array_equal(
        ny.get_feature_names_out(), [f"pathkernelnystroem{i}" for i in range(4)]
    )
    restored = pickle.loads(pickle.dumps(ny))
    np.testing.assert_array_equal(restored.transform(X), ny.transform(X))
    assert clone(ny).get_params()["n_components"] == 4


def test_pipeline_in_grid_search_and_cross_val_score(cancer):
    X, y = cancer
    pipe = make_pipeline(
        StandardScaler(),
        PathKernelNystroem(
            _net(PathKernelClassifier, max_iter=30, record_every=5),
            normalize="mean_diagonal",
            random_state=0,
        ),
        RidgeClassifier(),
    )
    search = GridSearchCV(
        pipe,
        {
            "pathkernelnystroem__n_components": [10, 30],
            "ridgeclassifier__alpha": [0.1, 10.0],
        },
        cv=3,
    ).fit(X, y)
    assert search.best_score_ > 0.9
    assert search.best_estimator_[1].transform(scale(X)[:2]).shape[1] in (10, 30)
    scores = cross_val_score(pipe.set_params(**search.best_params_), X, y, cv=3)
    assert scores.mean() > 0.9


# -- errors ------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        {"n_components": 0},
        {"n_components": -3},
        {"n_components": 2.5},
        {"n_components": "10"},
        {"normalize": "unit"},
        {"estimator": object()},
    ],
)
def test_parameters_are_validated(params, toy):
    X, y = toy
    with pytest.raises(InvalidParameterError, match=f"'{next(iter(params))}'"):
        PathKernelNystroem(**{"estimator": _net(), **params}).fit(X, y)


def test_unfitted_and_wrong_feature_count_raise(toy):
    X, y = toy
    with pytest.raises(NotFittedError, match="PathKernelNystroem"):
        PathKernelNystroem(_net()).transform(X)
    ny = PathKernelNystroem(_net(), n_components=5, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="X has 2 features, but PathKernelNystroem"):
        ny.transform(X[:, :2])


# -- scikit-learn's estimator checks -----------------------------------------
@parametrize_with_checks(
    [
        PathKernelNystroem(
            PathKernelRegressor(
                hidden_layer_sizes=(8,), max_iter=20, dtype="float64", random_state=0
            ),
            n_components=10,
            random_state=0,
        )
    ],
    expected_failed_checks=lambda estimator: {
        "check_sample_weight_equivalence_on_dense_data": (
            "the landmarks are drawn among the rows, so repeating a row instead "
            "of weighting it changes which rows are drawn"
        ),
    },
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


# -- PathKernelFeatures ------------------------------------------------------
# The features' own data: float32 networks on scaled rows.


@pytest.fixture(scope="module")
def toy30():
    return _toy(30)


@pytest.fixture(scope="module")
def scaled_cancer():
    X, y = load_breast_cancer(return_X_y=True)
    return scale(X)[::3], y[::3]  # 190 rows


@pytest.fixture(scope="module")
def diabetes():
    X, y = load_diabetes(return_X_y=True)
    return scale(X), scale(y)


def _net32(cls=PathKernelRegressor, **params):
    """``_net`` in the estimators' default dtype, float32."""
    return _net(cls, **{"dtype": "float32", **params})


@pytest.mark.parametrize(
    "engine, sketch", [("auto", "structured"), ("jacobian", "jacobian")]
)
def test_features_sketch_with_the_estimators_engine(engine, sketch, toy30):
    X, y = toy30
    classes = np.digitize(y, [-0.5, 0.5])  # three classes: three outputs
    est = _net32(PathKernelClassifier, dtype="float64", engine=engine)
    features = PathKernelFeatures(est, n_components=6, random_state=0)
    phi = features.fit(X, classes).transform(X)
    net = features.estimator_

    def sketched(engine):
        return path_features(
            net.module_,
            net.trajectory_,
            X,
            n_components=6,
            seed=features.seed_,
            engine=engine,
        )[0]

    # An MLP gets the structured engine's Kronecker sketch under "auto"; a
    # named engine is respected.
    np.testing.assert_array_equal(phi, sketched(sketch))
    other = "jacobian" if sketch == "structured" else "structured"
    assert not np.allclose(phi, sketched(other))


def test_features_do_not_depend_on_blocking(toy30):
    X, y = toy30
    net = _net32(dtype="float64", record_every=5)
    features = PathKernelFeatures(net, n_components=9, random_state=0).fit(X, y)
    full = features.transform(X)
    features.estimator_.working_memory = 1e-4  # one row per block
    np.testing.assert_allclose(features.transform(X), full, rtol=1e-10)
    np.testing.assert_allclose(features.transform(X[7:9]), full[7:9], rtol=1e-10)


def test_features_are_bit_identical_across_budgets_that_hold_a_tile(toy30, monkeypatch):
    X, y = toy30
    monkeypatch.setattr(_blocking, "TILE_ROWS", 4)  # several tiles of toy30 rows
    features = PathKernelFeatures(_net32(), n_components=9, random_state=0).fit(X, y)
    full = features.transform(X)
    for memory in (1.0, 64.0):
        features.estimator_.working_memory = memory
        assert np.array_equal(features.transform(X), full)


def test_features_are_seeded(toy30):
    X, y = toy30
    a = PathKernelFeatures(_net32(), n_components=5, random_state=0).fit_transform(X, y)
    b = PathKernelFeatures(_net32(), n_components=5, random_state=0).fit_transform(X, y)
    c = PathKernelFeatures(_net32(), n_components=5, random_state=1).fit_transform(X, y)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("mode", ["mean_diagonal", "cosine"])
def test_features_normalize(mode, toy30):
    X, y = toy30
    features = PathKernelFeatures(
        _net32(dtype="float64"), n_components=4000, normalize=mode, random_state=0
    ).fit(X, y)
    phi = features.transform(X)
    K = features.estimator_.kernel(X, normalize=mode)
    assert np.linalg.norm(phi @ phi.T - K) / np.linalg.norm(K) < 0.06
    if mode == "cosine":
        # Each row is scaled by the exact K(x, x): unit norms on average.
        assert abs(np.mean(np.sum(phi**2, axis=1)) - 1.0) < 0.05


@pytest.mark.parametrize(
    "model", [LinearSVC(), SGDClassifier(random_state=0), Ridge()], ids=repr
)
def test_features_in_front_of_linear_models(model, scaled_cancer, diabetes):
    regression = isinstance(model, Ridge)
    X, y = diabetes if regression else scaled_cancer
    net = _net32(PathKernelRegressor if regression else PathKernelClassifier)
    features = PathKernelFeatures(
        net, n_components=200, normalize="mean_diagonal", random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(make_pipeline(features, model), X, y, cv=3)
    assert scores.mean() > (0.3 if regression else 0.9), scores


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_features_and_kernel_on_the_gpu_agree_with_the_cpu(toy30):
    X, y = toy30
    results = {}
    for device in ("cpu", "cuda"):
        net = _net32(dtype="float64", device=device)
        features = PathKernelFeatures(net, n_components=8, random_state=0)
        kernel = PathKernelTransformer(net, normalize="cosine")
        results[device] = (
            features.fit(X, y).transform(X),
            kernel.fit(X, y).transform(X),
        )
    for on_cpu, on_gpu in zip(results["cpu"], results["cuda"]):
        np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-8, atol=1e-12)


# -- the device tile policy (issue 21) ---------------------------------------
def test_nystroem_on_the_device_grid_dispatches_fewer_operations(toy):
    X, y = toy
    ny = PathKernelNystroem(_net(), n_components=10, random_state=0).fit(X, y)
    rows = np.random.RandomState(1).randn(4096, 3)
    runs = []
    for policy in (nullcontext(), _blocking.device_policy(2**34)):
        counted = Dispatched()
        with policy, counted:
            runs.append((counted, ny.transform(rows)))
    (cpu, on_cpu), (device, on_device) = runs
    assert cpu.total >= 3 * device.total  # 8 row tiles a checkpoint, then one
    # The rows' finiteness checks (one each for X and the landmarks), once a
    # call: none inside the loop over checkpoints and tiles.
    assert cpu.synchronising == device.synchronising == ["_local_scalar_dense"] * 2
    np.testing.assert_allclose(on_device, on_cpu, rtol=1e-10, atol=1e-14)


def test_nystroem_on_the_device_grid_matches_the_reference(toy):
    X, y = toy
    with _blocking.device_policy(2**17):  # a small device: tiles of a few rows
        ny = PathKernelNystroem(_net(), n_components=10, random_state=0).fit(X, y)
        Z = ny.transform(X)
    K_LL = ny.estimator_.kernel(ny.components_)
    np.testing.assert_allclose(
        ny.normalization_, _reference_inverse_sqrt(K_LL), rtol=1e-8, atol=0
    )
    expected = ny.estimator_.kernel(X, ny.components_) @ _reference_inverse_sqrt(K_LL)
    np.testing.assert_allclose(Z, expected, rtol=1e-8, atol=1e-12)
