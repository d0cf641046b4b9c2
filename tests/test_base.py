"""The shared base: fitting plumbing, parameters, devices, determinism, pickling."""

import gc
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from _fits import interrupt_at_step, quiet_fit
from _oracle import path_kernel_reference
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import cross_val_score
from sklearn.svm import SVR
from torch import nn

from sklearn_pathkernel import (
    PathKernel,
    PathKernelClassifier,
    PathKernelFeatures,
    PathKernelRegressor,
    PathKernelTransformer,
    path_kernel,
)

ESTIMATORS = [PathKernelRegressor, PathKernelClassifier]


@pytest.fixture
def toy():
    rng = np.random.RandomState(0)
    X = rng.randn(40, 3)
    return X, X[:, 0] - 0.5 * X[:, 1] ** 2


def test_fit_touches_no_global_random_state(toy):
    X, y = toy
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    quiet_fit(PathKernelRegressor((5,), max_iter=3, batch_size=8, random_state=0), X, y)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


# -- training -------------------------------------------------------------
@pytest.mark.parametrize("Est", ESTIMATORS)
def test_same_seed_gives_bit_identical_predictions_and_kernel(Est, toy):
    X, y = toy
    y = y if Est is PathKernelRegressor else (y > 0).astype(int)
    fits = [quiet_fit(Est((10,), max_iter=15, random_state=3), X, y) for _ in range(2)]
    assert np.array_equal(fits[0].predict(X), fits[1].predict(X))
    assert np.array_equal(fits[0].kernel(X), fits[1].kernel(X))
    other = quiet_fit(Est((10,), max_iter=15, random_state=4), X, y)
    assert not np.array_equal(fits[0].kernel(X), other.kernel(X))


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_pickle_round_trip(Est, toy):
    X, y = toy
    y = y if Est is PathKernelRegressor else (y > 0).astype(int)
    est = quiet_fit(Est((6,), max_iter=10, random_state=0), X, y)
    loaded = pickle.loads(pickle.dumps(est))
    assert np.array_equal(loaded.predict(X), est.predict(X))
    assert np.array_equal(loaded.kernel(X), est.kernel(X))


def test_pickling_leaves_the_estimator_as_it_was(toy):
    # __getstate__ moves a GPU module to the CPU in the state it returns; on
    # Python 3.11+ object.__getstate__ returns the live __dict__, so an edit
    # there would move the fitted estimator itself (seen on a GPU).
    X, y = toy
    est = quiet_fit(PathKernelRegressor((6,), max_iter=5, random_state=0), X, y)
    state = est.__getstate__()
    assert state is not est.__dict__
    state["module_"] = None
    assert est.module_ is not None


def test_pickle_puts_the_network_back_on_its_device_or_warns(toy, monkeypatch):
    # A pickle records the device the network lived on; unpickled where that
    # device is missing, the network stays on the CPU with a warning. The
    # state is written as a GPU-fitted estimator's would be.
    X, y = toy
    est = PathKernelRegressor((6,), max_iter=5, device="cpu", random_state=0)
    est = quiet_fit(est, X, y)
    state = est.__getstate__()
    assert "_module_device" not in state  # a CPU network records nothing
    state["_module_device"] = "cuda:0"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = PathKernelRegressor.__new__(PathKernelRegressor)
    with pytest.warns(UserWarning, match="pickled on 'cuda:0', which this machine"):
        loaded.__setstate__(state)
    assert "_module_device" not in vars(loaded)
    assert next(loaded.module_.parameters()).device.type == "cpu"
    assert np.array_equal(loaded.predict(X), est.predict(X))


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_unfitted_estimator_says_so(Est, toy):
    X, _ = toy
    for method in ("predict", "kernel"):
        with pytest.raises(NotFittedError, match="is not fitted yet"):
            getattr(Est(), method)(X)


@pytest.mark.parametrize(
    "params, message",
    [
        (
            {"learning_rate_init": -1},
            r"The 'learning_rate_init' parameter of PathKernelRegressor must be a "
            r"float in the range \(0.0, inf\). Got -1 instead.",
        ),
        ({"activation": "swish"}, "The 'activation' parameter of PathKernelRegressor"),
        (
            {"hidden_layer_sizes": (4, 0)},
            r"The 'hidden_layer_sizes' parameter of PathKernelRegressor must be a "
            r"positive int or a sequence of positive ints; got \(4, 0\) instead\.",
        ),
        ({"hidden_layer_sizes": 0}, "'hidden_layer_sizes' .*; got 0 instead"),
        ({"hidden_layer_sizes": "16"}, "'hidden_layer_sizes' .*; got '16' instead"),
        ({"hidden_layer_sizes": 2.5}, "'hidden_layer_sizes' .*; got 2.5 instead"),
        ({"hidden_layer_sizes": (4.0,)}, "'hidden_layer_sizes' .*; got \\(4.0,\\)"),
        ({"dtype": "float16"}, "The 'dtype' parameter of PathKernelRegressor"),
        ({"device": "meta"}, "must name a CPU or CUDA device; got 'meta'"),
        ({"device": "banana"}, "The 'device' parameter must be 'auto', 'cpu', 'cuda'"),
        ({"device": None}, "The 'device' parameter must be 'auto', 'cpu', 'cuda'"),
    ],
)
def test_bad_parameters_are_named(toy, params, message):
    X, y = toy
    with pytest.raises(ValueError, match=message):
        PathKernelRegressor(**params).fit(X, y)


def test_missing_cuda_device_is_a_clear_error(toy, monkeypatch):
    X, y = toy
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        ValueError, match="asks for 'cuda', but torch.cuda.is_available"
    ):
        PathKernelRegressor(device="cuda").fit(X, y)
    reg = quiet_fit(PathKernelRegressor((4,), max_iter=2, device="auto"), X, y)
    assert next(reg.module_.parameters()).device.type == "cpu"


@pytest.mark.parametrize(
    "dtype, torch_dtype", [("float32", torch.float32), ("float64", torch.float64)]
)
def test_dtype_sets_the_network_precision(toy, dtype, torch_dtype):
    X, y = toy
    reg = quiet_fit(PathKernelRegressor((4,), max_iter=2, dtype=dtype), X, y)
    assert next(reg.module_.parameters()).dtype == torch_dtype
    assert reg.predict(X).dtype == np.float64


@pytest.mark.parametrize("engine", ["structured", "hooks", "jacobian", "ntk_vp"])
def test_kernel_engines_agree_through_the_estimator(toy, engine):
    X, y = toy
    est = quiet_fit(
        PathKernelRegressor((6,), max_iter=5, dtype="float64", random_state=0), X, y
    )
    auto = est.kernel(X[:10], X)
    est.set_params(engine=engine, working_memory=0.01, n_jobs=2)
    np.testing.assert_allclose(est.kernel(X[:10], X), auto, rtol=1e-10)


def test_verbose_reports_epochs_and_the_kernel_engine(toy, capsys):
    X, y = toy
    est = quiet_fit(PathKernelRegressor((4,), max_iter=3, verbose=1), X, y)
    rows = capsys.readouterr().out.splitlines()[2:]  # below the table's header
    assert [row.split()[0] for row in rows] == ["1", "2", "3"]
    est.kernel(X[:5])
    captured = capsys.readouterr()
    assert "path kernel: engine 'structured'" in captured.out
    assert "path kernel (structured)" in captured.err  # the progress bar
    est.set_params(verbose=0).kernel(X[:5])
    assert capsys.readouterr() == ("", "")


def test_structured_engine_on_a_module_it_cannot_handle_is_a_clear_error(toy):
    X, y = toy

    class Doubled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 1)

        def forward(self, x):
            return 2 * self.linear(x)

    est = quiet_fit(PathKernelRegressor(module=Doubled(), max_iter=2), X, y)
    assert est.kernel(X[:3]).shape == (3, 3)  # "auto" falls back to jacobian
    with pytest.raises(ValueError, match="The 'structured' engine does not support"):
        est.set_params(engine="structured").kernel(X[:3])


# -- MLP's random draws -----------------------------------------------------------
def _mlp_and_ours(kind, **params):
    """MLP and ours, both from MLP's parameter dict with ``params`` changed."""
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    mlp = MLPRegressor() if kind == "regressor" else MLPClassifier()
    ours = PathKernelRegressor if kind == "regressor" else PathKernelClassifier
    params = dict(mlp.get_params(), **params)
    return mlp.set_params(**params), ours(**params)


def _labels(kind, y):
    classes = {"regressor": None, "binary": 2, "multiclass": 3}[kind]
    return (
        y
        if classes is None
        else np.digitize(y, np.quantile(y, [0.4, 0.7][: classes - 1]))
    )


@pytest.mark.parametrize(
    "kind, activation, hidden",
    [
        ("regressor", "relu", (6,)),
        ("binary", "logistic", (5, 4)),
        ("multiclass", "tanh", ()),
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_default_mlp_starts_from_mlps_initial_network(
    toy, kind, activation, hidden, dtype
):
    """MLP after one epoch of a step too small to move a float64 weight (lr
    1e-300) holds its initial draws; ours, at the path's first checkpoint,
    holds them cast to ``dtype``."""
    X, y = toy
    params = dict(hidden_layer_sizes=hidden, activation=activation, random_state=7)
    mlp, ours = _mlp_and_ours(kind, learning_rate_init=1e-300, max_iter=1, **params)
    y = _labels(kind, y)
    quiet_fit(mlp, X, y)
    quiet_fit(ours.set_params(dtype=dtype, max_iter=1), X, y)
    start = ours.trajectory_.parameters_at(0)
    names = [name for name, _ in ours.module_.named_parameters()]
    assert len(names) == 2 * len(mlp.coefs_)
    for W, b, w_name, b_name in zip(
        mlp.coefs_, mlp.intercepts_, names[::2], names[1::2]
    ):
        np.testing.assert_array_equal(start[w_name].numpy().T, W.astype(dtype))
        np.testing.assert_array_equal(start[b_name].numpy(), b.astype(dtype))


def _recorded_shuffles(monkeypatch):
    """MLP's ``sample_idx`` after each of its shuffles, as it draws them."""
    from sklearn.neural_network import _multilayer_perceptron as mlp_module

    orders, draw = [], mlp_module.shuffle

    def recording(*args, **kwargs):
        orders.append(draw(*args, **kwargs))
        return orders[-1]

    monkeypatch.setattr(mlp_module, "shuffle", recording)
    return orders


def test_minibatches_are_mlps_in_each_epoch_and_call(toy, monkeypatch):
    """Each epoch's batches are MLP's (its shuffle of the previous order, cut
    by gen_batches); partial_fit starts MLP's stream anew at each call."""
    from sklearn.utils import gen_batches

    X, y = toy
    params = dict(hidden_layer_sizes=(4,), batch_size=16, random_state=3)
    mlp, ours = _mlp_and_ours("regressor", max_iter=3, **params)
    orders = _recorded_shuffles(monkeypatch)
    quiet_fit(mlp, X, y)
    mlp_once, ours_once = _mlp_and_ours("regressor", **params)
    mlp_once.partial_fit(X, y).partial_fit(X, y)
    quiet_fit(ours, X, y)
    ours_once.partial_fit(X, y).partial_fit(X, y)
    assert len(orders) == 3 + 2
    for est, epochs in [(ours, orders[:3]), (ours_once, orders[3:])]:
        want = [order[s] for order in epochs for s in gen_batches(len(X), 16)]
        steps = [est.trajectory_.step(t).batch.numpy() for t in range(len(want))]
        assert est.trajectory_.n_steps == len(want) == len(epochs) * 3
        for got, expected in zip(steps, want):
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "regressor"])
def test_mlps_draws_leave_a_random_state_as_mlps_leave_it(toy, kind):
    """Ours draws from a RandomState exactly what MLP draws: the initial
    network, early stopping's split (stratified as MLP's) and a shuffle per
    epoch (full batch too); torch's seed comes from a copy."""
    X, y = toy
    y = _labels(kind, y)
    streams = [np.random.RandomState(5) for _ in range(2)]
    for est, stream in zip(
        _mlp_and_ours(kind, hidden_layer_sizes=(3,), max_iter=4), streams
    ):
        quiet_fit(est.set_params(random_state=stream, early_stopping=True), X, y)
    assert streams[0].randint(2**31) == streams[1].randint(2**31)


@pytest.mark.parametrize(
    "kind, params",
    [
        ("binary", dict(momentum=0.9, early_stopping=True, batch_size=12)),
        (
            "regressor",
            dict(
                learning_rate="invscaling",
                momentum=0.5,
                shuffle=False,
                early_stopping=True,
                validation_fraction=0.3,
                batch_size=8,
            ),
        ),
    ],
    ids=["nesterov-early-stopping", "invscaling-unshuffled"],
)
def test_one_parameter_dict_trains_as_mlp_trains(toy, kind, params):
    """In float64 without L2 (the one remaining difference of form) the
    whole path is MLP's: the same start, split and batches. As a user
    writes it (float32, MLP's default alpha), the scores agree."""
    X, y = toy
    y = _labels(kind, y)
    params = dict(
        params,
        hidden_layer_sizes=(6,),
        max_iter=8,
        random_state=1,
        learning_rate_init=0.05,
        solver="sgd",
    )
    mlp, ours = _mlp_and_ours(kind, alpha=0.0, **params)
    quiet_fit(mlp, X, y)
    quiet_fit(ours.set_params(dtype="float64"), X, y)
    for W, V in zip(mlp.coefs_ + mlp.intercepts_, ours.coefs_ + ours.intercepts_):
        np.testing.assert_allclose(V, W, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        ours.validation_scores_, mlp.validation_scores_, atol=1e-12
    )
    mlp, ours = (quiet_fit(est, X, y) for est in _mlp_and_ours(kind, **params))
    assert ours.n_iter_ == mlp.n_iter_
    assert abs(ours.score(X, y) - mlp.score(X, y)) < 1e-3


# -- interrupted fits ----------------------------------------------------------


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_interrupted_refit_leaves_the_previous_model_whole(Est, toy, monkeypatch):
    X, y = toy
    y = y if Est is PathKernelRegressor else (y > 0).astype(int)
    est = quiet_fit(Est((5,), max_iter=6, random_state=0), X, y)
    before = dict(vars(est))
    prediction, K = est.predict(X), est.kernel(X[:7])

    interrupt_at_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        est.fit(X[:, :2] * 3, y)  # other data: validation resets n_features_in_
    monkeypatch.undo()

    assert vars(est).keys() == before.keys()
    assert all(vars(est)[name] is value for name, value in before.items())
    assert est.n_features_in_ == 3
    assert np.array_equal(est.predict(X), prediction)
    assert np.array_equal(est.kernel(X[:7]), K)


def test_interrupted_first_fit_leaves_an_unfitted_estimator(toy, monkeypatch):
    X, y = toy
    est = PathKernelRegressor((5,), max_iter=6, random_state=0)
    interrupt_at_step(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        est.fit(X, y)
    assert not hasattr(est, "n_features_in_")
    with pytest.raises(NotFittedError):
        est.predict(X)


def test_fit_failing_late_also_restores(toy, monkeypatch):
    X, y = toy
    est = quiet_fit(PathKernelRegressor((5,), max_iter=3, random_state=0), X, y)
    module = est.module_
    interrupt_at_step(monkeypatch, 1, exception=MemoryError)
    with pytest.raises(MemoryError):
        est.fit(X[:10], y[:10])
    assert est.module_ is module and len(est._fit_X) == 40


# -- kernels written to disk ---------------------------------------------------
@pytest.mark.parametrize("normalize", ["none", "mean_diagonal", "cosine"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_kernel_on_disk_equals_the_kernel_in_memory(
    toy, tmp_path, normalize, symmetric
):
    X, y = toy
    est = quiet_fit(PathKernelRegressor((5,), max_iter=4, random_state=0), X, y)
    Y = None if symmetric else X[:7] + 0.5
    expected = est.kernel(X, Y, normalize=normalize)
    K = est.kernel(X, Y, normalize=normalize, out=tmp_path / "K.npy")
    assert np.array_equal(np.load(tmp_path / "K.npy"), expected)
    assert np.array_equal(np.asarray(K), expected)


def test_kernel_in_float32_on_disk_is_normalised_in_float32(toy, tmp_path):
    X, y = toy
    est = quiet_fit(PathKernelRegressor((5,), max_iter=4, random_state=0), X, y)
    K = est.kernel(X, normalize="cosine", out=tmp_path / "K.npy", dtype=np.float32)
    assert K.dtype == np.float32
    np.testing.assert_allclose(K, est.kernel(X, normalize="cosine"), rtol=1e-6)
    np.testing.assert_allclose(np.diag(K), 1.0, rtol=1e-6)


# -- modules on images, token ids and residual blocks; train and eval mode -------
def _cnn(n_features, n_outputs):
    """Rows of 9 features reach it as 1x3x3 images (input_shape)."""
    return nn.Sequential(
        nn.Conv2d(1, 2, 2), nn.Tanh(), nn.Flatten(), nn.Linear(8, n_outputs)
    )


class _Bag(nn.Module):
    """Token ids: Embedding, mean over the positions, Linear."""

    def __init__(self, n_features, n_outputs):
        super().__init__()
        self.embed = nn.Embedding(6, 3)
        self.out = nn.Linear(3, n_outputs)

    def forward(self, tokens):
        return self.out(torch.tanh(self.embed(tokens).mean(dim=1)))


class _Residual(nn.Module):
    """A LayerNorm residual block with ``h += x`` and an in-place activation."""

    def __init__(self, n_features, n_outputs):
        super().__init__()
        self.inner = nn.Linear(n_features, n_features)
        self.norm = nn.LayerNorm(n_features)
        self.act = nn.SiLU(inplace=True)  # smooth, so decompose(exact) is exact
        self.out = nn.Linear(n_features, n_outputs)

    def forward(self, x):
        h = self.inner(x)
        h += x  # in place on the Linear's output, which its backward does not need
        return self.out(self.act(self.norm(h)))


def _shaped_data(kind, n=12, seed=0):
    rng = np.random.RandomState(seed)
    if kind == "tokens":
        X = rng.randint(0, 6, size=(n, 5))
    else:
        X = rng.randn(n, 9 if kind == "cnn" else 4)
    y = np.column_stack([np.sin(X.sum(axis=1)), np.cos(X[:, 0])])
    return X, y


_SHAPED = {
    "cnn": {"module": _cnn, "input_shape": (1, 3, 3)},
    "tokens": {"module": _Bag, "tokens": True},
    "residual": {"module": _Residual},
}


def _shaped_fit(kind, **params):
    X, y = _shaped_data(kind)
    est = PathKernelRegressor(
        **_SHAPED[kind], max_iter=3, learning_rate_init=0.05, dtype="float64", **params
    )
    return quiet_fit(est.set_params(random_state=0), X, y), X, y


@pytest.mark.parametrize("kind", list(_SHAPED))
def test_shaped_and_token_modules_match_the_oracle_everywhere(kind):
    est, X, y = _shaped_fit(kind)
    rows = torch.tensor(X[:6], dtype=torch.float64)  # what the module_ takes
    expected = path_kernel_reference(est.module_, est.trajectory_, rows)
    np.testing.assert_allclose(est.kernel(X[:6]), expected, rtol=1e-10)
    np.testing.assert_allclose(est.kernel_diagonal(X[:6]), np.diag(expected))
    full = path_kernel(est.module_, est.trajectory_, X[:3], X[3:6], trace=False)
    np.testing.assert_allclose(
        full,
        path_kernel_reference(est.module_, est.trajectory_, rows[:3], rows[3:], False),
        rtol=1e-10,
    )
    exact = est.decompose(X[:3], exact=True)
    np.testing.assert_allclose(exact.network_output, est.predict(X[:3]))
    assert exact.error["max_rel"] < 1e-8  # smooth networks: to rounding


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("kind", ["cnn", "tokens"])  # what the tools validate
def test_shaped_modules_work_with_the_scikit_learn_tools(kind):
    est, X, y = _shaped_fit(kind)
    y0 = y[:, 0]
    transformer = PathKernelTransformer(est).fit(X, y)
    K = transformer.transform(X[:4])
    assert np.array_equal(K, transformer.estimator_.kernel(X[:4], X))
    features = PathKernelFeatures(est, n_components=8, random_state=0).fit(X, y)
    assert features.transform(X[:4]).shape == (4, 8)
    gp_kernel = PathKernel(est)
    assert np.array_equal(gp_kernel(X[:4]), est.kernel(X[:4]))
    # SVR validates X as float64 before calling the kernel: ids arrive as floats.
    svr = SVR(kernel=est.kernel).fit(X, y0)
    assert svr.predict(X[:3]).shape == (3,)
    single = PathKernelRegressor(**_SHAPED[kind], max_iter=2, dtype="float64")
    assert np.isfinite(cross_val_score(single, X, y0, cv=2)).all()


def test_token_ids_reach_the_module_as_int64_from_any_array():
    seen = []

    class Recording(_Bag):
        def forward(self, tokens):
            seen.append(tokens.dtype)
            return super().forward(tokens)

    X, y = _shaped_data("tokens")
    est = quiet_fit(
        PathKernelRegressor(module=Recording, tokens=True, max_iter=2), X, y[:, 0]
    )
    assert set(seen) == {torch.int64}
    for rows in (X[:4], X[:4].astype(np.float32), X[:4].astype(float), X[:4].tolist()):
        assert np.array_equal(est.kernel(rows), est.kernel(X[:4]))


@pytest.mark.parametrize(
    "X, message",
    [
        (np.full((6, 5), 1.5), r"X must hold integer token ids \(tokens=True\)"),
        (-np.ones((6, 5)), "X holds the token id -1; token ids"),
        (
            np.full((6, 5), 6),
            r"failed on row 0 of X, which holds its largest token id, 6: "
            "IndexError: .* below the num_embeddings",
        ),
    ],
)
def test_bad_token_ids_are_refused_at_fit(X, message):
    with pytest.raises(ValueError, match=message):
        PathKernelRegressor(module=_Bag, tokens=True).fit(X, np.arange(6.0))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_new_token_ids_beyond_the_table_are_refused_naming_the_array():
    est, X, _ = _shaped_fit("tokens")
    beyond = X[:3].copy()
    beyond[1, 2] = 9
    features = PathKernelFeatures(est, n_components=4).fit(X, np.arange(12.0))
    for call, name in [
        (lambda: features.transform(beyond), "X"),
        (lambda: est.predict(beyond), "X"),
        (lambda: est.kernel(X[:2], beyond), "Y"),
        (lambda: est.decompose(beyond), "X"),
    ]:
        with pytest.raises(ValueError, match=f"row 1 of {name}, which holds .* 9"):
            call()


@pytest.mark.parametrize(
    "params, X, message",
    [
        (
            {"module": _cnn, "input_shape": (1, 3, 3)},
            np.zeros((6, 8)),
            r"X has 8 features, but input_shape=\(1, 3, 3\) holds 9 numbers",
        ),
        (
            {"module": _cnn, "input_shape": (1, 0, 16)},
            np.zeros((6, 16)),
            "The 'input_shape' parameter of PathKernelRegressor must be None or a",
        ),
        (
            {"module": _cnn, "input_shape": "1x4x4"},
            np.zeros((6, 16)),
            "The 'input_shape' parameter of PathKernelRegressor must be None or a",
        ),
        (
            {"input_shape": (16,)},
            np.zeros((6, 16)),
            r"input_shape=\(16,\) and tokens=False are for a user module",
        ),
        (
            {"tokens": True},
            np.zeros((6, 16)),
            "the default MLP takes flat float rows",
        ),
        (
            {"module": _cnn, "input_shape": (1, 4, 4)},
            np.zeros((6, 1, 4, 4)),
            r"X has shape \(6, 1, 4, 4\), .* Pass X.reshape\(len\(X\), -1\) and "
            r"set input_shape=\(1, 4, 4\)",
        ),
    ],
)
def test_bad_input_shapes_are_named(params, X, message):
    with pytest.raises(ValueError, match=message):
        PathKernelRegressor(**params).fit(X, np.arange(6.0))


def test_training_mode_batchnorm_is_refused_before_training(toy):
    X, y = toy

    def net():
        return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))

    with pytest.raises(
        ValueError,
        match=r"The 'module' of PathKernelRegressor contains BatchNorm1d \('1'\) in "
        r"training mode: .* Use nn.GroupNorm or nn.LayerNorm",
    ):
        PathKernelRegressor(module=net()).fit(X, y)
    # In eval mode it normalises with fixed running statistics: rows independent.
    est = quiet_fit(
        PathKernelRegressor(module=net().eval(), max_iter=3, dtype="float64"), X, y
    )
    np.testing.assert_allclose(
        est.kernel(X[:4]),
        path_kernel_reference(est.module_, est.trajectory_, torch.tensor(X[:4])),
        rtol=1e-10,
    )


def _dropout_net(n_features, n_outputs):
    return nn.Sequential(
        nn.Linear(n_features, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, n_outputs)
    )


def test_dropout_trains_seeded_and_everything_after_runs_in_eval_mode(toy):
    X, y = toy
    torch_state = torch.get_rng_state()
    fits = [
        quiet_fit(
            PathKernelRegressor(
                module=_dropout_net, max_iter=5, dtype="float64", random_state=0
            ),
            X,
            y,
        )
        for _ in range(2)
    ]
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(fits[0].predict(X), fits[1].predict(X))  # seeded masks
    est = fits[0]
    assert not any(layer.training for layer in est.module_.modules())
    assert np.array_equal(est.predict(X), est.predict(X))  # dropout off
    np.testing.assert_allclose(
        est.kernel(X[:4]),
        path_kernel_reference(est.module_, est.trajectory_, torch.tensor(X[:4])),
        rtol=1e-10,
    )


def test_exact_decomposition_of_a_dropout_network_warns_and_reports(toy):
    X, y = toy
    params = {"max_iter": 5, "dtype": "float64", "random_state": 0}
    est = quiet_fit(PathKernelRegressor(module=_dropout_net, **params), X, y)
    with pytest.warns(UserWarning, match="exact=True cannot reproduce the network"):
        machine = est.decompose(X[:5], exact=True)
    assert machine.error["max_rel"] > 1e-6  # the random masks are not replayed
    plain = quiet_fit(
        PathKernelRegressor(module=_dropout_net(3, 1).eval(), **params), X, y
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plain.decompose(X[:5], exact=True).error["max_rel"] < 1e-8
        est.decompose(X[:5])  # the first-order form is approximate anyway


# -- kernel quadrature and trajectories on disk --------------------------------


def test_default_kernel_visits_a_tenth_of_the_steps_and_decomposes_exactly(toy):
    from _oracle import path_kernel_reference

    X, y = toy
    est = quiet_fit(
        PathKernelRegressor((8,), max_iter=50, dtype="float64", random_state=0), X, y
    )
    traj = est.trajectory_
    assert traj.quadrature == "simpson" and len(traj) == 50  # every step stored
    assert [n.step for n in traj.kernel_nodes()] == [0, 12, 25, 37, 50]
    np.testing.assert_allclose(
        est.kernel(X[:6]), path_kernel_reference(est.module_, traj, X[:6]), rtol=1e-9
    )
    machine = est.decompose(X[:5], exact=True)
    assert machine.error["max_rel"] < 1e-10


def test_higher_order_rules_approach_the_every_step_kernel(toy):
    X, y = toy
    est = PathKernelRegressor(
        (8,), learning_rate_init=0.05, max_iter=60, dtype="float64", random_state=0
    )
    est = quiet_fit(est, X, y)
    every_step = est.trajectory_.with_quadrature("left")
    reference = path_kernel(est.module_, every_step, X[:10])

    def error(rule, n_nodes=13):
        view = est.trajectory_.with_quadrature(rule, n_nodes)
        K = path_kernel(est.module_, view, X[:10])
        return np.linalg.norm(K - reference) / np.linalg.norm(reference)

    # 1.3e-2, 3.6e-3 and 5.7e-4 here; each rule improves with more nodes.
    left, trapezoid, simpson = error("left"), error("trapezoid"), error("simpson")
    assert simpson < trapezoid / 3 < left / 9
    assert error("simpson", 7) > 5 * simpson


@pytest.mark.parametrize(
    "params, match",
    [
        ({"quadrature": "midpoint"}, "'quadrature' parameter"),
        ({"kernel_nodes": 1.5}, "'kernel_nodes' parameter"),
        ({"kernel_nodes": 1}, "kernel_nodes must be a count of at least 2"),
        ({"adaptive_tol": 0.0}, "'adaptive_tol' parameter"),
        ({"trajectory_dir": 3}, "'trajectory_dir' parameter"),
    ],
)
def test_bad_quadrature_options_name_the_parameter(toy, params, match):
    X, y = toy
    with pytest.raises(ValueError, match=match):
        PathKernelRegressor((4,), max_iter=2, **params).fit(X, y)


def test_trajectory_dir_keeps_the_path_on_disk_and_save_embeds_it(toy, tmp_path):
    from sklearn_pathkernel import load, save

    X, y = toy
    options = dict(max_iter=20, dtype="float64", random_state=0)
    memory = quiet_fit(PathKernelRegressor((8,), **options), X, y)
    disk = quiet_fit(
        PathKernelRegressor((8,), trajectory_dir=tmp_path / "paths", **options), X, y
    )
    assert disk.trajectory_.on_disk and not memory.trajectory_.on_disk
    assert np.array_equal(disk.kernel(X), memory.kernel(X))
    save(disk, tmp_path / "model.pt")
    files = os.listdir(tmp_path / "paths")
    del disk
    gc.collect()
    assert os.listdir(tmp_path / "paths") == []  # scratch, gone with the estimator
    loaded = load(tmp_path / "model.pt", map_location="auto")  # where it was fitted
    assert loaded.trajectory_.on_disk
    assert sorted(f.split("-")[0] for f in files) == ["checkpoints", "records"]
    assert np.array_equal(loaded.kernel(X), memory.kernel(X))
    again = pickle.loads(pickle.dumps(loaded))
    assert np.array_equal(again.kernel(X), memory.kernel(X))
