"""PathKernelTransformer in pipelines, and what it shares with PathKernelFeatures."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.exceptions import NotFittedError
from sklearn.kernel_ridge import KernelRidge
from sklearn.model_selection import (
    GridSearchCV,
    KFold,
    cross_val_score,
    cross_validate,
)
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import scale
from sklearn.svm import SVC
from sklearn.utils import get_tags

from sklearn_pathkernel import (
    PathKernelClassifier,
    PathKernelFeatures,
    PathKernelRegressor,
    PathKernelTransformer,
)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def cancer():
    X, y = load_breast_cancer(return_X_y=True)
    return scale(X)[::3], y[::3]  # 190 rows


@pytest.fixture(scope="module")
def diabetes():
    X, y = load_diabetes(return_X_y=True)
    return scale(X), scale(y)


@pytest.fixture(scope="module")
def toy():
    rng = np.random.RandomState(0)
    X = rng.randn(30, 3)
    return X, np.sin(X[:, 0]) + 0.5 * X[:, 1]


def _net(cls=PathKernelRegressor, **params):
    return cls(
        **{"hidden_layer_sizes": (8,), "max_iter": 20, "random_state": 0, **params}
    )


# -- PathKernelTransformer -------------------------------------------------
def test_transform_is_the_kernel_against_the_training_rows(toy):
    X, y = toy
    pk = PathKernelTransformer(_net()).fit(X[:20], y[:20])
    K = pk.transform(X[20:])
    assert K.shape == (10, 20) and K.dtype == np.float64
    np.testing.assert_array_equal(K, pk.estimator_.kernel(X[20:], X[:20]))
    assert pk.n_samples_fit_ == 20 and pk.n_features_in_ == 3
    assert pk.X_fit_ is pk.estimator_._fit_X


def test_fit_transform_is_the_symmetric_training_kernel(toy):
    X, y = toy
    pk = PathKernelTransformer(_net())
    K = pk.fit_transform(X, y)
    np.testing.assert_array_equal(K, K.T)
    np.testing.assert_allclose(K, pk.transform(X), rtol=1e-5)
    assert np.linalg.eigvalsh(K).min() > -1e-6 * np.abs(K).max()


def test_the_wrapped_estimator_is_cloned_not_trained(toy):
    X, y = toy
    net = _net()
    pk = PathKernelTransformer(net).fit(X, y)
    assert not hasattr(net, "module_")
    assert pk.estimator_ is not net and hasattr(pk.estimator_, "module_")


@pytest.mark.parametrize("Transformer", [PathKernelTransformer, PathKernelFeatures])
def test_default_estimator_follows_the_target(Transformer, toy):
    X, y = toy
    labels = np.where(y > 0, "up", "down")
    assert isinstance(
        Transformer(random_state=0).fit(X, labels).estimator_, PathKernelClassifier
    )
    indicator = np.column_stack([y > 0, X[:, 0] > 0]).astype(int)  # multilabel
    assert isinstance(
        Transformer(random_state=0).fit(X, indicator).estimator_, PathKernelClassifier
    )
    reg = Transformer(random_state=0).fit(X, y).estimator_
    assert isinstance(reg, PathKernelRegressor) and reg.random_state == 0


def test_random_state_seeds_only_the_default_estimator(toy):
    X, y = toy
    a = PathKernelTransformer(random_state=0).fit_transform(X, y)
    b = PathKernelTransformer(random_state=0).fit_transform(X, y)
    np.testing.assert_array_equal(a, b)
    pk = PathKernelTransformer(_net(random_state=3), random_state=0).fit(X, y)
    assert pk.estimator_.random_state == 3


def test_sample_weight_reaches_the_network(toy):
    X, y = toy
    weights = np.r_[np.ones(15), np.zeros(15)]
    weighted = PathKernelTransformer(_net()).fit(X, y, sample_weight=weights)
    subset = PathKernelTransformer(_net()).fit(X[:15], y[:15])
    np.testing.assert_allclose(
        weighted.estimator_.predict(X), subset.estimator_.predict(X), rtol=1e-4
    )


def test_pipeline_with_svc_in_grid_search_and_cross_val_score(cancer):
    X, y = cancer
    pipe = Pipeline(
        [
            ("pk", PathKernelTransformer(_net(PathKernelClassifier))),
            ("svc", SVC(kernel="precomputed")),
        ]
    )
    grid = {"pk__estimator__learning_rate_init": [0.05, 0.2], "svc__C": [0.1, 10.0]}
    search = GridSearchCV(pipe, grid, cv=3).fit(X, y)
    assert set(search.best_params_) == set(grid)
    assert search.best_score_ > 0.9
    assert (
        search.best_estimator_["pk"].estimator_.learning_rate_init
        == (search.best_params_["pk__estimator__learning_rate_init"])
    )
    assert cross_val_score(pipe, X, y, cv=3).mean() > 0.9


class _RecordingClassifier(PathKernelClassifier):
    """Keeps a copy of every X its network is trained on."""

    seen = []

    def fit(self, X, y, sample_weight=None):
        _RecordingClassifier.seen.append(np.array(X, copy=True))
        return super().fit(X, y, sample_weight=sample_weight)


def _rows(X):
    return {row.tobytes() for row in np.ascontiguousarray(X)}


def test_no_held_out_row_reaches_the_network(cancer):
    X, y = cancer
    cv = KFold(3, shuffle=True, random_state=0)
    splits = list(cv.split(X))
    pipe = Pipeline(
        [
            ("pk", PathKernelTransformer(_RecordingClassifier((8,), max_iter=10))),
            ("svc", SVC(kernel="precomputed")),
        ]
    )

    # cross_validate: each fold's network holds exactly that fold's rows.
    result = cross_validate(
        pipe, X, y, cv=cv, return_estimator=True, return_indices=True
    )
    for fitted, train, test in zip(
        result["estimator"], result["indices"]["train"], result["indices"]["test"]
    ):
        net = fitted["pk"].estimator_
        np.testing.assert_array_equal(net._fit_X, X[train])
        assert not _rows(net._fit_X) & _rows(X[test])
        batches = [net.trajectory_.step(t).batch for t in range(net.n_iter_)]
        assert max(int(b.max()) for b in batches) < len(train)

    # GridSearchCV: every network trained on one fold's training rows (one
    # per candidate and fold), and the refit on all rows.
    _RecordingClassifier.seen.clear()
    grid = {"pk__estimator__learning_rate_init": [0.05, 0.2], "svc__C": [0.1, 10.0]}
    GridSearchCV(pipe, grid, cv=cv).fit(X, y)
    seen = _RecordingClassifier.seen
    expected = [X[train].tobytes() for train, _ in splits] * 4 + [X.tobytes()]
    assert sorted(x.tobytes() for x in seen) == sorted(expected)
    for x in seen[:-1]:
        test = next(te for tr, te in splits if np.array_equal(x, X[tr]))
        assert not _rows(x) & _rows(X[test])


def test_tags(toy):
    for transformer in (PathKernelTransformer(), PathKernelFeatures()):
        tags = get_tags(transformer)
        assert tags.target_tags.required
        assert not tags.input_tags.pairwise  # it consumes raw features
    pipe = make_pipeline(PathKernelTransformer(), SVC(kernel="precomputed"))
    assert not get_tags(pipe).input_tags.pairwise  # cross-validation slices rows
    assert get_tags(SVC(kernel="precomputed")).input_tags.pairwise
    assert not get_tags(PathKernelRegressor()).input_tags.pairwise


def test_feature_names_and_set_output(toy):
    pd = pytest.importorskip("pandas")
    X, y = toy
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    pk = PathKernelTransformer(_net()).set_output(transform="pandas")
    out = pk.fit(frame, y).transform(frame.iloc[:4])
    assert list(out.columns) == [f"pathkerneltransformer{i}" for i in range(30)]
    assert out.shape == (4, 30)
    features = PathKernelFeatures(_net(), n_components=7, random_state=0)
    names = features.fit(frame, y).get_feature_names_out()
    assert names.tolist() == [f"pathkernelfeatures{i}" for i in range(7)]
    out = features.set_output(transform="pandas").transform(frame)
    assert list(out.columns) == names.tolist()


def test_unfitted_transformers_raise(toy):
    X, _ = toy
    for transformer in (PathKernelTransformer(), PathKernelFeatures()):
        with pytest.raises(NotFittedError):
            transformer.transform(X)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"n_components": 0}, "'n_components' parameter of PathKernelFeatures"),
        ({"normalize": "max"}, "'normalize' parameter of PathKernelFeatures"),
        ({"estimator": SVC()}, "'estimator' parameter of PathKernelFeatures"),
    ],
)
def test_features_parameters_are_validated(params, match, toy):
    X, y = toy
    with pytest.raises(ValueError, match=match):
        PathKernelFeatures(**params).fit(X, y)


def test_transformer_needs_a_kernel_estimator(toy):
    X, y = toy
    with pytest.raises(ValueError, match="'estimator' parameter of PathKernelTrans"):
        PathKernelTransformer(SVC()).fit(X, y)


def test_transformers_pickle(toy):
    X, y = toy
    for transformer in (
        PathKernelTransformer(_net()),
        PathKernelFeatures(_net(), n_components=5, random_state=0),
    ):
        fitted = transformer.fit(X, y)
        loaded = pickle.loads(pickle.dumps(fitted))
        np.testing.assert_array_equal(loaded.transform(X), fitted.transform(X))


# -- normalisation -----------------------------------------------------------
def test_kernel_normalize_modes(toy):
    X, y = toy
    est = _net().fit(X[:20], y[:20])
    K, K_new = est.kernel(X[:20]), est.kernel(X[20:], X[:20])
    d_fit, d_new = np.diag(K), est.kernel_diagonal(X[20:])
    np.testing.assert_allclose(d_new, np.diag(est.kernel(X[20:])), rtol=1e-5)

    # mean_diagonal: the training rows' scale, for new rows as well.
    np.testing.assert_allclose(
        est.kernel(X[20:], X[:20], normalize="mean_diagonal"),
        K_new / d_fit.mean(),
        rtol=1e-5,
    )
    # cosine: unit diagonal, entries K / sqrt(d_x d_y).
    cosine = est.kernel(X[:20], normalize="cosine")
    np.testing.assert_allclose(np.diag(cosine), 1.0, rtol=1e-12)
    np.testing.assert_allclose(
        est.kernel(X[20:], X[:20], normalize="cosine"),
        K_new / np.sqrt(np.outer(d_new, d_fit)),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        est.kernel_diagonal(X[20:], normalize="mean_diagonal"),
        d_new / d_fit.mean(),
        rtol=1e-5,
    )
    assert (est.kernel_diagonal(X, normalize="cosine") == 1.0).all()

    # The constructor parameter is the default of the keyword.
    cos = clone(est).set_params(kernel_normalize="cosine").fit(X[:20], y[:20])
    np.testing.assert_allclose(cos.kernel(X[:20]), cosine, rtol=1e-12)
    with pytest.raises(
        ValueError,
        match=r"^The 'normalize' parameter of PathKernelRegressor\.kernel must be "
        r"None or a str among \{.*\}\. Got 'max' instead\.",
    ):
        est.kernel(X, normalize="max")
    with pytest.raises(
        ValueError, match="'normalize' parameter of PathKernelRegressor.kernel_diagonal"
    ):
        est.kernel_diagonal(X, normalize="max")
    with pytest.raises(ValueError, match="'kernel_normalize' parameter"):
        clone(est).set_params(kernel_normalize="max").fit(X, y)


def test_mean_diagonal_weighs_rows_like_repetitions(toy):
    X, y = toy
    weights = np.r_[np.full(10, 2), np.ones(20)]
    weighted = _net(dtype="float64").fit(X, y, sample_weight=weights)
    repeated = _net(dtype="float64").fit(np.r_[X, X[:10]], np.r_[y, y[:10]])
    np.testing.assert_allclose(
        weighted.kernel(X, normalize="mean_diagonal"),
        repeated.kernel(X, normalize="mean_diagonal"),
        rtol=1e-8,
    )


@pytest.mark.parametrize("mode", ["mean_diagonal", "cosine"])
def test_transformer_normalize(mode, toy):
    X, y = toy
    pk = PathKernelTransformer(_net(), normalize=mode).fit(X[:20], y[:20])
    expected = pk.estimator_.kernel(X[20:], X[:20], normalize=mode)
    np.testing.assert_array_equal(pk.transform(X[20:]), expected)
    # None defers to the estimator's own kernel_normalize.
    deferred = PathKernelTransformer(_net(kernel_normalize=mode)).fit(X[:20], y[:20])
    np.testing.assert_allclose(deferred.transform(X[20:]), expected, rtol=1e-12)


def _network(hidden_layer_sizes, max_iter):
    # Ten checkpoints whatever the length: the kernel's cost stays the same.
    return PathKernelRegressor(
        hidden_layer_sizes,
        max_iter=max_iter,
        record_every=max_iter // 10,
        tol=0,
        random_state=0,
    )


def test_normalized_kernel_does_not_depend_on_training_length(diabetes):
    X, y = diabetes[0][:60], diabetes[1][:60]
    # A linear model's path kernel is (learning_rate_init * steps) * (X X^T + 1):
    # raw, ten times more training multiplies it by ten; normalised, it is
    # the same kernel, so every tuned score is the same too.
    kernels = {
        (normalize, T): PathKernelTransformer(_network((), T), normalize=normalize)
        .fit(X[:40], y[:40])
        .transform(X[40:])
        for normalize in ("none", "mean_diagonal", "cosine")
        for T in (10, 100)
    }
    np.testing.assert_allclose(
        kernels["none", 100], 10 * kernels["none", 10], rtol=1e-5
    )
    for normalize in ("mean_diagonal", "cosine"):
        np.testing.assert_allclose(
            kernels[normalize, 100], kernels[normalize, 10], rtol=1e-5
        )


def test_normalized_tuning_does_not_depend_on_training_length(diabetes, tmp_path):
    X, y = diabetes
    X, y = X[::2], y[::2]

    def tune(normalize, max_iter):
        transformer = PathKernelTransformer(
            _network((16,), max_iter), normalize=normalize
        )
        pipe = Pipeline(
            [
                ("pk", transformer),
                ("ridge", KernelRidge(kernel="precomputed")),
            ],
            memory=str(tmp_path),  # one network per fold, not one per alpha
        )
        grid = {"ridge__alpha": np.logspace(-2, 2, 5)}
        return GridSearchCV(pipe, grid, cv=KFold(3)).fit(X, y)

    # A trained MLP: along the path the kernel's shape changes a little, its
    # scale a lot. Normalised, one grid finds the same alpha and about the
    # same score after 10 and 100 steps; raw, the best alpha moves.
    short, long = (tune("mean_diagonal", T) for T in (10, 100))
    assert short.best_params_ == long.best_params_
    assert abs(short.best_score_ - long.best_score_) < 0.02
    short, long = (tune("none", T) for T in (10, 100))
    assert long.best_params_["ridge__alpha"] > short.best_params_["ridge__alpha"]
