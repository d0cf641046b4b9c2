"""The shared base: fitting plumbing, parameters, devices, determinism, pickling."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from sklearn_pathkernel import PathKernelClassifier, PathKernelRegressor

ESTIMATORS = [PathKernelRegressor, PathKernelClassifier]


def _quiet(est, X, y, **fit_params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y, **fit_params)


@pytest.fixture
def toy():
    rng = np.random.RandomState(0)
    X = rng.randn(40, 3)
    return X, X[:, 0] - 0.5 * X[:, 1] ** 2


def test_fit_touches_no_global_random_state(toy):
    X, y = toy
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    _quiet(PathKernelRegressor((5,), max_iter=3, batch_size=8, random_state=0), X, y)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


# -- training -------------------------------------------------------------
@pytest.mark.parametrize("Est", ESTIMATORS)
def test_same_seed_gives_bit_identical_predictions_and_kernel(Est, toy):
    X, y = toy
    y = y if Est is PathKernelRegressor else (y > 0).astype(int)
    fits = [_quiet(Est((10,), max_iter=15, random_state=3), X, y) for _ in range(2)]
    assert np.array_equal(fits[0].predict(X), fits[1].predict(X))
    assert np.array_equal(fits[0].kernel(X), fits[1].kernel(X))
    other = _quiet(Est((10,), max_iter=15, random_state=4), X, y)
    assert not np.array_equal(fits[0].kernel(X), other.kernel(X))


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_pickle_round_trip(Est, toy):
    X, y = toy
    y = y if Est is PathKernelRegressor else (y > 0).astype(int)
    est = _quiet(Est((6,), max_iter=10, random_state=0), X, y)
    loaded = pickle.loads(pickle.dumps(est))
    assert np.array_equal(loaded.predict(X), est.predict(X))
    assert np.array_equal(loaded.kernel(X), est.kernel(X))


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
            {"learning_rate": -1},
            r"The 'learning_rate' parameter of PathKernelRegressor must be a float "
            r"in the range \(0.0, inf\). Got -1 instead.",
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
    reg = _quiet(PathKernelRegressor((4,), max_iter=2, device="auto"), X, y)
    assert next(reg.module_.parameters()).device.type == "cpu"


@pytest.mark.parametrize(
    "dtype, torch_dtype", [("float32", torch.float32), ("float64", torch.float64)]
)
def test_dtype_sets_the_network_precision(toy, dtype, torch_dtype):
    X, y = toy
    reg = _quiet(PathKernelRegressor((4,), max_iter=2, dtype=dtype), X, y)
    assert next(reg.module_.parameters()).dtype == torch_dtype
    assert reg.predict(X).dtype == np.float64


@pytest.mark.parametrize("engine", ["structured", "hooks", "jacobian", "ntk_vp"])
def test_kernel_engines_agree_through_the_estimator(toy, engine):
    X, y = toy
    est = _quiet(
        PathKernelRegressor((6,), max_iter=5, dtype="float64", random_state=0), X, y
    )
    auto = est.kernel(X[:10], X)
    est.set_params(engine=engine, working_memory=0.01, n_jobs=2)
    np.testing.assert_allclose(est.kernel(X[:10], X), auto, rtol=1e-10)


def test_verbose_reports_epochs_and_the_kernel_engine(toy, capsys):
    X, y = toy
    est = _quiet(PathKernelRegressor((4,), max_iter=3, verbose=1), X, y)
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

    est = _quiet(PathKernelRegressor(module=Doubled(), max_iter=2), X, y)
    assert est.kernel(X[:3]).shape == (3, 3)  # "auto" falls back to jacobian
    with pytest.raises(ValueError, match="The 'structured' engine does not support"):
        est.set_params(engine="structured").kernel(X[:3])


# -- interrupted fits ----------------------------------------------------------
def _interrupt_at_step(monkeypatch, step, exception=KeyboardInterrupt):
    """Make the training loop raise ``exception`` when it reaches ``step``."""
    from sklearn_pathkernel import _training

    real_step, calls = _training._GradientDescent._step, []

    def interrupted(*args, **kwargs):
        calls.append(None)
        if len(calls) == step:
            raise exception()
        return real_step(*args, **kwargs)

    monkeypatch.setattr(_training._GradientDescent, "_step", interrupted)


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_interrupted_refit_leaves_the_previous_model_whole(Est, toy, monkeypatch):
    X, y = toy
    y = y if Est is PathKernelRegressor else (y > 0).astype(int)
    est = _quiet(Est((5,), max_iter=6, random_state=0), X, y)
    before = dict(vars(est))
    prediction, K = est.predict(X), est.kernel(X[:7])

    _interrupt_at_step(monkeypatch, 3)
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
    _interrupt_at_step(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        est.fit(X, y)
    assert not hasattr(est, "n_features_in_")
    with pytest.raises(NotFittedError):
        est.predict(X)


def test_fit_failing_late_also_restores(toy, monkeypatch):
    X, y = toy
    est = _quiet(PathKernelRegressor((5,), max_iter=3, random_state=0), X, y)
    module = est.module_
    _interrupt_at_step(monkeypatch, 1, exception=MemoryError)
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
    est = _quiet(PathKernelRegressor((5,), max_iter=4, random_state=0), X, y)
    Y = None if symmetric else X[:7] + 0.5
    expected = est.kernel(X, Y, normalize=normalize)
    K = est.kernel(X, Y, normalize=normalize, out=tmp_path / "K.npy")
    assert np.array_equal(np.load(tmp_path / "K.npy"), expected)
    assert np.array_equal(np.asarray(K), expected)


def test_kernel_in_float32_on_disk_is_normalised_in_float32(toy, tmp_path):
    X, y = toy
    est = _quiet(PathKernelRegressor((5,), max_iter=4, random_state=0), X, y)
    K = est.kernel(X, normalize="cosine", out=tmp_path / "K.npy", dtype=np.float32)
    assert K.dtype == np.float32
    np.testing.assert_allclose(K, est.kernel(X, normalize="cosine"), rtol=1e-6)
    np.testing.assert_allclose(np.diag(K), 1.0, rtol=1e-6)
