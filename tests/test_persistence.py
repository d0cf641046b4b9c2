"""Safe persistence (save / load) and pickling: bit-identical round trips."""

import copy
import io
import pathlib
import pickle
import tempfile
import time
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LinearRegression
from sklearn.utils.validation import check_is_fitted
from torch import nn

import sklearn_pathkernel
from sklearn_pathkernel import (
    PathKernelClassifier,
    PathKernelFeatures,
    PathKernelNystroem,
    PathKernelRegressor,
    PathKernelTransformer,
    Trajectory,
    load,
    save,
)
from sklearn_pathkernel._persistence import FORMAT_VERSION
from sklearn_pathkernel.exceptions import InconsistentVersionWarning

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

N_FEATURES = 3


def _custom_network():
    return nn.Sequential(nn.Linear(N_FEATURES, 5), nn.Tanh(), nn.Linear(5, 1))


def _factory(n_features, n_outputs):
    return nn.Sequential(
        nn.Linear(n_features, 4), nn.Sigmoid(), nn.Linear(4, n_outputs)
    )


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = rng.randn(24, N_FEATURES)
    Y = rng.randn(7, N_FEATURES)
    y = X[:, 0] - 0.5 * X[:, 1] ** 2
    return X, Y, y


def _fit(est, X, y, **fit_params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y, **fit_params)


# Each case: (unfitted estimator, training (X, y, fit_params), query X, query Y)
# built from the shared data, and the module to pass back to load.
def _regressor_1d(X, Y, y):
    return PathKernelRegressor((4,), max_iter=6, random_state=0), (X, y, {}), X, Y


def _regressor_2d_float64(X, Y, y):
    est = PathKernelRegressor(
        (4, 3), max_iter=9, dtype="float64", record_every=3, alpha=0.01, random_state=1
    )
    return est, (X, np.column_stack([y, -y]), {}), X, Y


def _regressor_minibatch_weighted(X, Y, y):
    est = PathKernelRegressor(
        (4,), activation="relu", max_iter=5, batch_size=7, random_state=2
    )
    weights = {"sample_weight": np.linspace(0.5, 2.0, len(X))}
    return est, (X.astype(np.float32), y, weights), X, Y


def _binary_strings(X, Y, y):
    labels = np.where(y > 0, "yes", "no")
    est = PathKernelClassifier((4,), activation="logistic", max_iter=6, random_state=0)
    return est, (X, labels, {}), X, Y


def _multiclass_strings_float64(X, Y, y):
    labels = np.array(["a", "bb", "c"], dtype=object)[np.digitize(y, [-0.5, 0.3])]
    est = PathKernelClassifier(
        (4,), max_iter=6, dtype="float64", record_every=2, random_state=0
    )
    return est, (X, labels, {}), X, Y


def _multiclass_dataframe(X, Y, y):
    pd = pytest.importorskip("pandas")
    columns = ["alpha", "beta", "gamma"]
    frame, other = pd.DataFrame(X, columns=columns), pd.DataFrame(Y, columns=columns)
    labels = np.digitize(y, [-0.5, 0.3]) + 10
    est = PathKernelClassifier((4,), max_iter=6, random_state=0)
    return est, (frame, labels, {}), frame, other


def _custom_module(X, Y, y):
    est = PathKernelRegressor(module=_custom_network(), max_iter=6, random_state=0)
    return est, (X, y, {}), X, Y


def _custom_factory(X, Y, y):
    est = PathKernelClassifier(module=_factory, max_iter=6, random_state=0)
    return est, (X, y > 0, {}), X, Y


def _conv_network():
    # Dropout: the module trains in training mode and is saved in eval mode.
    return nn.Sequential(
        nn.Conv1d(1, 2, 2), nn.Dropout(0.2), nn.Flatten(), nn.Linear(4, 1)
    )


def _shaped_input(X, Y, y):
    est = PathKernelRegressor(
        module=_conv_network(), input_shape=(1, 3), max_iter=6, random_state=0
    )
    return est, (X, y, {}), X, Y


class _Bag(nn.Module):
    """Embedding, mean over the positions, Linear."""

    def __init__(self, n_features, n_outputs):
        super().__init__()
        self.embed = nn.Embedding(6, 3)
        self.out = nn.Linear(3, n_outputs)

    def forward(self, tokens):
        return self.out(self.embed(tokens).mean(dim=1))


def _token_input(X, Y, y):
    def ids(A):
        return np.clip(np.round(np.abs(A) * 2), 0, 5).astype(np.int64)

    est = PathKernelClassifier(module=_Bag, tokens=True, max_iter=6, random_state=0)
    return est, (ids(X), y > 0, {}), ids(X), ids(Y)


def _random_state_instance(X, Y, y):
    est = PathKernelRegressor((3,), max_iter=5, random_state=np.random.RandomState(5))
    return est, (X, y, {}), X, Y


def _adam_early_stopping(X, Y, y):
    est = PathKernelRegressor(
        (4,),
        solver="adam",
        learning_rate_init=0.01,
        early_stopping=True,
        validation_fraction=0.25,
        max_iter=6,
        random_state=0,
    )
    return est, (X, y, {}), X, Y


def _nesterov(X, Y, y):
    est = PathKernelClassifier((4,), momentum=0.8, max_iter=6, random_state=0)
    return est, (X, y > 0, {}), X, Y


CASES = {
    "regressor-1d": (_regressor_1d, None),
    "adam-early-stopping": (_adam_early_stopping, None),
    "nesterov": (_nesterov, None),
    "regressor-2d-float64-record3-alpha": (_regressor_2d_float64, None),
    "regressor-minibatch-sample-weight-float32-X": (
        _regressor_minibatch_weighted,
        None,
    ),
    "binary-string-labels": (_binary_strings, None),
    "multiclass-object-labels-float64": (_multiclass_strings_float64, None),
    "multiclass-dataframe": (_multiclass_dataframe, None),
    "custom-module": (_custom_module, _custom_network),
    "custom-factory": (_custom_factory, lambda: _factory),
    "custom-module-input-shape-dropout": (_shaped_input, _conv_network),
    "custom-factory-tokens": (_token_input, lambda: _Bag),
    "random-state-instance": (_random_state_instance, None),
}


EXACT = {"regressor-1d", "multiclass-dataframe"}  # also decompose(exact=True)


def _fitted(case, data):
    """The fitted estimator of a case, its training data and query rows."""
    est, (X_fit, y_fit, fit_params), X, Y = CASES[case][0](*data)
    return _fit(est, X_fit, y_fit, **fit_params), (X_fit, y_fit, fit_params), X, Y


def _round_trip(est, method, tmp_path, module=None):
    if method == "pickle":
        return pickle.loads(pickle.dumps(est))
    path = tmp_path / "model.pt"
    save(est, path)
    # Back where it was fitted ("auto" trains on a GPU when there is one):
    # the same device gives the same bits; load's CPU default has its own tests.
    return load(path, module=module, map_location="auto")


def _assert_same(a, b, where="estimator"):
    """Deep, bit-exact equality of two estimators' contents."""
    assert type(a) is type(b), where
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.flags.f_contiguous == b.flags.f_contiguous, where
        if a.dtype.kind == "O":
            assert a.tolist() == b.tolist(), where
        else:  # bit for bit, NaN and NaT included
            assert a.tobytes(order="A") == b.tobytes(order="A"), where
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.device == b.device, where
        assert torch.equal(a, b), where
    elif isinstance(a, nn.Module):
        _assert_same(a.state_dict(), b.state_dict(), f"{where}.state_dict()")
        assert [type(m) for m in a.modules()] == [type(m) for m in b.modules()], where
        assert [m.training for m in a.modules()] == [m.training for m in b.modules()]
        flags = [p.requires_grad for p in a.parameters()]
        assert flags == [p.requires_grad for p in b.parameters()], where
    elif isinstance(a, Trajectory):
        _assert_same(a.__getstate__(), b.__getstate__(), f"{where}.__getstate__()")
    elif isinstance(a, np.random.RandomState):
        _assert_same(list(a.get_state()), list(b.get_state()), where)
    elif hasattr(a, "get_params"):
        assert set(vars(a)) == set(vars(b)), where
        for key in vars(a):
            _assert_same(getattr(a, key), getattr(b, key), f"{where}.{key}")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


def _assert_same_results(est, loaded, X, Y, *, exact=False):
    methods = ["predict"]
    if isinstance(est, PathKernelClassifier):
        methods += ["predict_proba", "decision_function", "predict_log_proba"]
    for method in methods:
        expected, got = getattr(est, method)(X), getattr(loaded, method)(X)
        assert got.dtype == expected.dtype
        assert np.array_equal(got, expected), method
    assert np.array_equal(loaded.kernel(X, Y), est.kernel(X, Y))
    assert np.array_equal(loaded.kernel(Y), est.kernel(Y))
    assert np.array_equal(
        loaded.kernel_diagonal(Y, normalize="mean_diagonal"),
        est.kernel_diagonal(Y, normalize="mean_diagonal"),
    )
    expected, got = (
        est.decompose(Y[:4], exact=exact),
        loaded.decompose(Y[:4], exact=exact),
    )
    for field in ("bias", "contributions", "network_output"):
        assert np.array_equal(getattr(got, field), getattr(expected, field)), field


# -- round trips ----------------------------------------------------------------
@pytest.mark.parametrize("method", ["save", "pickle"])
@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_is_bit_identical(case, method, data, tmp_path):
    est, (X_fit, y_fit, fit_params), X, Y = _fitted(case, data)
    module = CASES[case][1]
    loaded = _round_trip(est, method, tmp_path, module=module and module())
    # Every attribute, fitted ones (ending in "_") and private ones alike:
    # a new attribute that does not round-trip fails here.
    _assert_same(est, loaded)
    assert {k for k in vars(loaded) if k.endswith("_")} >= {
        "module_",
        "trajectory_",
        "loss_curve_",
        "n_iter_",
        "n_outputs_",
        "n_features_in_",
    }
    _assert_same_results(est, loaded, X, Y, exact=case in EXACT)
    if method == "save":  # the loaded estimator refits as the saved one does
        refit = _fit(loaded, X_fit, y_fit, **fit_params)
        again = _fit(est, X_fit, y_fit, **fit_params)
        assert np.array_equal(refit.predict(Y), again.predict(Y))


def test_random_state_instance_is_stored_as_its_state(data, tmp_path):
    est, (X, y, _), _, _ = _fitted("random-state-instance", data)
    loaded = _round_trip(est, "save", tmp_path)
    assert isinstance(loaded.random_state, np.random.RandomState)
    assert loaded.random_state is not est.random_state
    # A refit of each draws the same seed, so gives the same network.
    assert np.array_equal(_fit(loaded, X, y).predict(X), _fit(est, X, y).predict(X))


@pytest.mark.parametrize("method", ["save", "pickle"])
@pytest.mark.parametrize(
    "Transformer", [PathKernelTransformer, PathKernelFeatures, PathKernelNystroem]
)
def test_transformer_round_trip(Transformer, method, data, tmp_path):
    X, Y, y = data
    inner = PathKernelClassifier((4,), max_iter=8, random_state=0)
    kwargs = {} if Transformer is PathKernelTransformer else {"n_components": 6}
    est = Transformer(inner, normalize="cosine", random_state=0, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y > 0)
    loaded = _round_trip(est, method, tmp_path)
    _assert_same(est, loaded)
    assert np.array_equal(loaded.transform(Y), est.transform(Y))
    assert np.array_equal(loaded.transform(X), est.transform(X))


def test_transformer_with_custom_module(data, tmp_path):
    X, Y, y = data
    inner = PathKernelRegressor(module=_custom_network(), max_iter=8, random_state=0)
    est = PathKernelTransformer(inner)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    with pytest.raises(ValueError, match="custom module"):
        _round_trip(est, "save", tmp_path)
    network = _custom_network()
    loaded = _round_trip(est, "save", tmp_path, module=network)
    assert loaded.estimator.module is not network  # a copy, with the saved weights
    _assert_same(est, loaded)
    assert np.array_equal(loaded.transform(Y), est.transform(Y))


@pytest.mark.parametrize("method", ["save", "pickle"])
@pytest.mark.parametrize("Est", [PathKernelRegressor, PathKernelClassifier])
def test_unfitted_estimator_loads_unfitted(Est, method, data, tmp_path):
    X, _, y = data
    y = y if Est is PathKernelRegressor else y > 0
    est = Est((3, 2), activation="relu", max_iter=4, device=torch.device("cpu"))
    est.set_params(learning_rate_init=np.float64(0.05), random_state=3, verbose=False)
    loaded = _round_trip(est, method, tmp_path)
    _assert_same(est, loaded)
    assert loaded.get_params() == est.get_params()
    assert type(loaded.learning_rate_init) is np.float64
    with pytest.raises(NotFittedError):
        check_is_fitted(loaded)
    assert np.array_equal(_fit(loaded, X, y).predict(X), _fit(est, X, y).predict(X))


def test_plain_values_round_trip(data, tmp_path):
    # Every kind of value the format stores, in the one parameter that takes
    # anything (device: only checked when fit uses it).
    est, _, _, _ = _fitted("regressor-1d", data)
    est.set_params(
        device={
            "extra": {"a": [np.float32(1.5), (1, "x")], 2: b"raw", b"": None},
            "dates": np.array(["2024-01-01", "NaT"], dtype="datetime64[D]"),
            "big": np.arange(6, dtype=np.uint32).reshape(2, 3, order="F"),
            "words": np.array([[b"ab", b"c"]]),
            "empty": np.zeros((0, 2), dtype="<U3"),
            "scalar": np.array(np.nan),
            "dtype": torch.float64,
            3.5: [{}],
        }
    )
    loaded = _round_trip(est, "save", tmp_path)
    _assert_same(est, loaded)


def test_attributes_fit_does_not_set_are_refused(data, tmp_path):
    est, _, _, _ = _fitted("regressor-1d", data)
    est.extra_ = 1
    with pytest.raises(TypeError, match=r"\['extra_'\] are not attributes that"):
        save(est, tmp_path / "model.pt")


def test_unknown_value_type_is_refused_at_save(data, tmp_path):
    est, _, _, _ = _fitted("regressor-1d", data)
    est.set_params(device=object())
    with pytest.raises(TypeError, match="PathKernelRegressor.device"):
        save(est, tmp_path / "model.pt")


# -- the file -------------------------------------------------------------------
def _plain_only(value):
    if isinstance(value, dict):
        return all(type(k) is str and _plain_only(v) for k, v in value.items())
    if type(value) in (list, tuple):
        return all(_plain_only(v) for v in value)
    return type(value) in (str, int, float, bool, type(None), torch.Tensor)


def test_file_holds_plain_data_only(data, tmp_path):
    est, _, _, _ = _fitted("custom-module", data)
    path = tmp_path / "model.pt"
    save(est, path)
    record = torch.load(path, weights_only=True)
    assert _plain_only(record)
    assert record["format"] == "sklearn_pathkernel"
    assert record["format_version"] == FORMAT_VERSION
    assert record["sklearn_pathkernel_version"] == sklearn_pathkernel.__version__
    assert record["torch_version"] == str(torch.__version__)
    assert record["estimator"]["class"] == "PathKernelRegressor"
    module = record["estimator"]["attributes"]["module_"]
    assert set(module["state"]["state_dict"]) == set(est.module_.state_dict())


@pytest.mark.parametrize("kind", ["str", "pathlib", "file", "buffer"])
def test_path_kinds(kind, data, tmp_path):
    est, _, X, _ = _fitted("regressor-1d", data)
    path = tmp_path / "model.pt"
    if kind == "str":
        save(est, str(path))
        loaded = load(str(path), map_location="auto")
    elif kind == "pathlib":
        save(est, pathlib.Path(path))
        loaded = load(pathlib.Path(path), map_location="auto")
    elif kind == "file":
        with open(path, "wb") as f:
            save(est, f)
        with open(path, "rb") as f:
            loaded = load(f, map_location="auto")
    else:
        buffer = io.BytesIO()
        save(est, buffer)
        buffer.seek(0)
        loaded = load(buffer, map_location="auto")
    assert np.array_equal(loaded.predict(X), est.predict(X))


def test_network_is_loaded_where_map_location_says(data, tmp_path):
    est, _, X, _ = _fitted("regressor-1d", data)
    save(est, tmp_path / "model.pt")
    loaded = load(tmp_path / "model.pt", map_location=torch.device("cpu"))
    assert next(loaded.module_.parameters()).device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="map_location"):
            load(tmp_path / "model.pt", map_location="cuda")


def test_device_parameter_is_kept_and_predict_uses_the_network_device(data, tmp_path):
    # As if fitted on a GPU: device only says where fit trains; prediction,
    # kernels and decomposition follow the module, which loads on the CPU.
    X, Y, y = data
    est = _fit(
        PathKernelRegressor((4,), max_iter=6, random_state=0, device="cpu"), X, y
    )
    est.set_params(device="cuda")
    save(est, tmp_path / "model.pt")
    loaded = load(tmp_path / "model.pt")
    assert loaded.device == "cuda"
    assert next(loaded.module_.parameters()).device.type == "cpu"
    _assert_same_results(est, loaded, X, Y)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_model_fitted_on_cuda_loads_on_cpu_and_cuda(data, tmp_path):
    X, Y, y = data
    est = _fit(
        PathKernelRegressor((4,), max_iter=6, device="cuda", random_state=0), X, y
    )
    save(est, tmp_path / "model.pt")
    record = torch.load(tmp_path / "model.pt", weights_only=True)
    state = record["estimator"]["attributes"]["module_"]["state"]["state_dict"]
    assert all(t.device.type == "cpu" for t in state.values())
    on_cpu = load(tmp_path / "model.pt")
    assert next(on_cpu.module_.parameters()).device.type == "cpu"
    np.testing.assert_allclose(on_cpu.predict(X), est.predict(X), rtol=1e-4, atol=1e-5)
    on_gpu = load(tmp_path / "model.pt", map_location="cuda")
    assert next(on_gpu.module_.parameters()).device.type == "cuda"
    np.testing.assert_allclose(on_gpu.predict(X), est.predict(X), rtol=1e-6)
    np.testing.assert_allclose(on_gpu.kernel(X, Y), est.kernel(X, Y), rtol=1e-6)
    assert on_gpu.device == "cuda"


# -- errors ---------------------------------------------------------------------
def test_save_refuses_other_estimators(tmp_path):
    with pytest.raises(TypeError, match="LinearRegression"):
        save(LinearRegression(), tmp_path / "model.pt")

    class Sub(PathKernelRegressor):
        pass

    with pytest.raises(TypeError, match="Sub"):
        save(Sub(), tmp_path / "model.pt")
    with pytest.raises(TypeError, match="LinearRegression"):
        save(PathKernelTransformer(LinearRegression()), tmp_path / "model.pt")


def test_save_refuses_a_generator_random_state(tmp_path):
    est = PathKernelRegressor(random_state=np.random.default_rng(0))
    with pytest.raises(TypeError, match="random_state"):
        save(est, tmp_path / "model.pt")


def test_custom_module_must_be_passed_back(data, tmp_path):
    est, _, _, _ = _fitted("custom-module", data)
    path = tmp_path / "model.pt"
    save(est, path)
    with pytest.raises(ValueError, match=r"saved with a custom module.*pass module="):
        load(path)
    wider = nn.Sequential(nn.Linear(N_FEATURES, 6), nn.Tanh(), nn.Linear(6, 1))
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(6, 3\)"):
        load(path, module=wider)
    deeper = nn.Sequential(nn.Linear(N_FEATURES, 5), nn.Tanh(), nn.Linear(5, 5))
    deeper.append(nn.Linear(5, 1))
    with pytest.raises(ValueError, match="keys the module lacks|missing"):
        load(path, module=deeper)
    network = _custom_network()
    loaded = load(path, module=network)
    # A copy of the caller's object, given the saved initial weights.
    assert loaded.module is not network and loaded.module_ is not network
    _assert_same(est.module, loaded.module)
    assert not torch.equal(network[0].weight, loaded.module[0].weight)


def test_frozen_parameters_stay_frozen(data, tmp_path):
    X, Y, y = data
    network = _custom_network()
    network[0].bias.requires_grad_(False)
    est = _fit(PathKernelRegressor(module=network, max_iter=5, random_state=0), X, y)
    path = tmp_path / "model.pt"
    save(est, path)
    # unfrozen: the file says frozen
    loaded = load(path, module=_custom_network(), map_location="auto")
    assert not loaded.module_[0].bias.requires_grad
    _assert_same(est, loaded)
    assert np.array_equal(loaded.kernel(X, Y), est.kernel(X, Y))


def test_module_is_refused_for_the_default_network(data, tmp_path):
    est, _, _, _ = _fitted("regressor-1d", data)
    save(est, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="default network"):
        load(tmp_path / "model.pt", module=_custom_network())


def _rewrite(path, change):
    record = torch.load(path, weights_only=True)
    change(record)
    torch.save(record, path)


def test_other_format_version_is_refused(data, tmp_path):
    est, _, _, _ = _fitted("regressor-1d", data)
    path = tmp_path / "model.pt"
    save(est, path)
    _rewrite(path, lambda r: r.update(format_version=FORMAT_VERSION + 98))
    with pytest.raises(ValueError, match=f"format version {FORMAT_VERSION + 98}"):
        load(path)


def test_other_package_version_warns_and_loads(data, tmp_path):
    est, _, X, _ = _fitted("regressor-1d", data)
    path = tmp_path / "model.pt"
    save(est, path)
    _rewrite(path, lambda r: r.update(sklearn_pathkernel_version="0.0.1"))
    current = sklearn_pathkernel.__version__
    with pytest.warns(InconsistentVersionWarning, match=rf"0\.0\.1.*{current}"):
        loaded = load(path, map_location="auto")
    assert np.array_equal(loaded.predict(X), est.predict(X))


def test_scikit_learns_version_warning_filter_applies(data, tmp_path):
    import sklearn.exceptions

    est, _, _, _ = _fitted("regressor-1d", data)
    path = tmp_path / "model.pt"
    save(est, path)
    _rewrite(path, lambda r: r.update(sklearn_pathkernel_version="0.0.1"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", sklearn.exceptions.InconsistentVersionWarning)
        with pytest.raises(sklearn.exceptions.InconsistentVersionWarning) as caught:
            load(path)
    assert caught.value.original_version == "0.0.1"
    assert caught.value.original_sklearn_version == sklearn.__version__


@pytest.mark.parametrize(
    "content",
    [{"weights": torch.zeros(2)}, torch.zeros(3), [1, 2], {"format": "other"}],
    ids=["dict", "tensor", "list", "other-format"],
)
def test_files_not_ours_are_refused(content, tmp_path):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match="other.pt.*not a file written by"):
        load(path)


def test_garbage_and_missing_files(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a model")
    with pytest.raises(ValueError, match="notes.txt"):
        load(path)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pt"):
        load(empty)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.pt")


CALLS = []


def _side_effect(message):
    CALLS.append(message)
    return message


class _Malicious:
    def __reduce__(self):
        return (_side_effect, ("code ran",))


@pytest.mark.parametrize("where", ["top", "nested"])
def test_tampered_file_with_an_object_is_refused(where, data, tmp_path):
    path = tmp_path / "model.pt"
    if where == "top":
        torch.save(_Malicious(), path)
    else:
        est, _, _, _ = _fitted("regressor-1d", data)
        save(est, path)
        _rewrite(path, lambda r: r["estimator"]["attributes"].update(x_=_Malicious()))
    CALLS.clear()
    with pytest.raises(
        ValueError, match=r"(?s)model.pt.*safe load refuses: UnpicklingError"
    ):
        load(path)
    assert CALLS == []


def test_damaged_records_are_refused(data, tmp_path):
    est, _, _, _ = _fitted("regressor-1d", data)
    path = tmp_path / "model.pt"
    save(est, path)
    _rewrite(path, lambda r: r["estimator"].update({"class": "os.system"}))
    with pytest.raises(ValueError, match="unknown estimator class 'os.system'"):
        load(path)
    save(est, path)
    _rewrite(
        path,
        lambda r: r["estimator"]["attributes"].update(
            n_iter_={"__kind__": "eval", "value": "1"}
        ),
    )
    with pytest.raises(ValueError, match="unknown entry 'eval'"):
        load(path)
    save(est, path)
    _rewrite(path, lambda r: r["estimator"]["attributes"].update(__class__=1))
    with pytest.raises(
        ValueError,
        match=r"model.pt' is damaged or not ours: estimator \(PathKernelRegressor\)"
        r".attributes: \['__class__'\]: not attributes that PathKernelRegressor.fit",
    ):
        load(path)


# -- trajectory_dir: scratch files go where load says, never where the file says
def test_path_on_disk_goes_to_the_directory_load_is_given(data, tmp_path):
    X, Y, y = data
    named = tmp_path / "named"
    est = _fit(
        PathKernelRegressor((4,), max_iter=4, random_state=0, trajectory_dir=named),
        X,
        y,
    )
    save(est, tmp_path / "model.pt")
    before = sorted(named.iterdir())
    scratch = tmp_path / "scratch"
    loaded = load(tmp_path / "model.pt", trajectory_dir=scratch)
    assert loaded.trajectory_.on_disk and loaded.trajectory_dir == named
    files = sorted(scratch.iterdir())
    # The parameters and the per-step records, each in a scratch file.
    assert [f.name.split("-")[0] for f in files] == ["checkpoints", "records"]
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    assert sorted(named.iterdir()) == before
    _assert_same_results(est, loaded, X, Y)
    del loaded
    assert list(scratch.iterdir()) == []


def test_path_on_disk_goes_to_the_temporary_directory_by_default(
    data, tmp_path, monkeypatch
):
    X, _, y = data
    est = _fit(
        PathKernelRegressor((4,), max_iter=4, random_state=0, trajectory_dir=tmp_path),
        X,
        y,
    )
    save(est, tmp_path / "model.pt")
    record = torch.load(tmp_path / "model.pt", weights_only=True)
    # A tampered file names another directory: load never writes there.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    state = record["estimator"]["attributes"]["trajectory_"]["state"]
    state["items"] = [
        (key, str(elsewhere) if key == "_directory" else value)
        for key, value in state["items"]
    ]
    torch.save(record, tmp_path / "tampered.pt")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    loaded = load(tmp_path / "tampered.pt")
    assert loaded.trajectory_.on_disk
    names = sorted(p.name.split("-")[0] for p in temporary.iterdir())
    assert names == ["checkpoints", "records"]
    assert list(elsewhere.iterdir()) == []
    assert np.array_equal(loaded.predict(X), est.predict(X))


# -- fuzzing the format ----------------------------------------------------------
# Each mutated file must end in a ValueError from load(), or in an estimator
# whose predict, kernel and decompose are the original's bit for bit; never in
# another exception, a file written outside the chosen scratch directory, or
# code run from the file.
def _fuzz_bases(root):
    rng = np.random.RandomState(1)
    X, Q = rng.randn(10, 2), rng.randn(3, 2)
    y = X[:, 0] - X[:, 1]
    labels = np.digitize(y, [-0.5, 0.5])
    named = root / "named"  # the directory the files name
    small = {"max_iter": 2, "batch_size": 5, "random_state": 0}
    estimators = [
        PathKernelRegressor((3,), **small),
        PathKernelRegressor((3,), solver="adam", trajectory_dir=named, **small),
        PathKernelClassifier((3,), solver="adam", **small),
        PathKernelClassifier((3,), trajectory_dir=named, **small),
    ]
    bases = []
    for est, target in zip(estimators, [y, y, labels, labels > 0]):
        est = _fit(est, X, target)
        buffer = io.BytesIO()
        save(est, buffer)
        bases.append((buffer.getvalue(), _fuzz_results(est, Q)))
    return bases, Q, named


def _fuzz_results(est, Q):
    machine = est.decompose(Q[:2])
    return [est.predict(Q), est.kernel(Q)] + [
        getattr(machine, f) for f in ("bias", "contributions", "network_output")
    ]


class _Payload:
    """Writes a marker file if unpickled: load must never do so."""

    marker = None

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _leaves(value, path=()):
    """``(path, value)`` of every entry of a record, containers included."""
    yield path, value
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return
    for key, item in items:
        yield from _leaves(item, (*path, key))


def _replace(record, path, new):
    """``record`` with the entry at ``path`` replaced (tuples rebuilt)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(record, tuple):
        items = list(record)
        items[head] = _replace(items[head], rest, new)
        return tuple(items)
    record[head] = _replace(record[head], rest, new)
    return record


_ODD_VALUES = ["x", None, [], {}, True, 2.5, -1, 10**30, (1,), torch.zeros(2)]
_ODD_NAMES = ["predict", "__class__", "__dict__", "fit", "kernel", "_fit_Y", "x_"]


def _kind(value):
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _edit_tensor(rng, tensor):
    choice = rng.integers(6)
    if choice == 0 and tensor.ndim:
        return tensor[:-1]
    if choice == 1 and tensor.ndim:
        return torch.cat([tensor, tensor[:1]])
    if choice == 2:
        return tensor.unsqueeze(0)
    if choice == 3 and tensor.ndim == 2 and tensor.shape[0] != tensor.shape[1]:
        return tensor.T.contiguous()  # a square one transposed is another value
    dtypes = [torch.float32, torch.float64, torch.int64, torch.int32, torch.uint8]
    dtypes.remove(tensor.dtype) if tensor.dtype in dtypes else None
    return tensor.to(dtypes[rng.integers(len(dtypes))])


def _structured(rng, record, marker):
    """One edit of the record: shapes, dtypes, keys, types, swaps, payloads."""
    record = copy.deepcopy(record)
    entries = list(_leaves(record))
    tensors = [(p, v) for p, v in entries if isinstance(v, torch.Tensor)]
    dicts = [(p, v) for p, v in entries if isinstance(v, dict) and v]
    choice = rng.integers(7)
    if choice == 0:  # shape or dtype of a tensor
        path, tensor = tensors[rng.integers(len(tensors))]
        return _replace(record, path, _edit_tensor(rng, tensor))
    if choice == 1:  # two tensors of different shapes or dtypes swapped
        (p, a), (q, b) = (tensors[i] for i in rng.choice(len(tensors), 2, False))
        if a.shape == b.shape and a.dtype == b.dtype:
            return None
        return _replace(_replace(record, p, b), q, a)
    if choice == 2:  # a value of another kind of Python type
        path, value = entries[1 + rng.integers(len(entries) - 1)]
        odd = [v for v in _ODD_VALUES if _kind(v) != _kind(value)]
        parent = entries[[p for p, _ in entries].index(path[:-1])][1]
        if isinstance(parent, tuple) and parent[0] == "_kernel_nodes":
            odd.remove(None)  # a valid value there: every checkpoint
        return _replace(record, path, copy.deepcopy(odd[rng.integers(len(odd))]))
    if choice == 6:  # an object whose unpickling writes a marker file
        path, _ = entries[rng.integers(len(entries))]
        _Payload.marker = marker
        return _replace(record, path, _Payload())
    path, entry = dicts[rng.integers(len(dicts))]
    keys = list(entry)
    key = keys[rng.integers(len(keys))]
    if choice == 3:  # a key renamed
        entry[_ODD_NAMES[rng.integers(len(_ODD_NAMES))]] = entry.pop(key)
    elif choice == 4:  # a key removed
        del entry[key]
    else:  # an extra key: an attribute named like a method, or any entry
        attributes = record["estimator"]["attributes"]
        target = attributes if rng.integers(2) else entry
        target[_ODD_NAMES[rng.integers(len(_ODD_NAMES))]] = entry[key]
    return record


def _mutate(rng, data, record, marker):
    """Mutated file bytes: bits flipped, the file truncated, or an edit."""
    choice = rng.integers(4)
    if choice == 0:
        damaged = bytearray(data)
        for position in rng.integers(len(data), size=rng.integers(1, 4)):
            damaged[position] ^= 1 << rng.integers(8)
        return bytes(damaged)
    if choice == 1:
        return data[: rng.integers(len(data))]
    edited = _structured(rng, record, marker)
    if edited is None:
        return None
    buffer = io.BytesIO()
    torch.save(edited, buffer)
    return buffer.getvalue()


def _fuzz_one(path, scratch, Q, expected):
    """ "refused", "same", or what went wrong."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            loaded = load(path, trajectory_dir=scratch)
        except ValueError:
            return "refused"
        except Exception as exc:
            return f"load raised {exc!r}"[:300]
        try:
            got = _fuzz_results(loaded, Q)
        except Exception as exc:
            return f"loaded, then raised {exc!r}"[:300]
    if all(np.array_equal(a, b) for a, b in zip(got, expected)):
        return "same"
    return "loaded, but differs"


def _fuzz(seed, n_mutations, root, monkeypatch):
    bases, Q, named = _fuzz_bases(root)
    records = [torch.load(io.BytesIO(data), weights_only=True) for data, _ in bases]
    scratch, temporary, marker = root / "scratch", root / "tmp", root / "marker"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    named_before = sorted(named.iterdir())
    rng = np.random.default_rng(seed)
    outcomes, escapes = {"refused": 0, "same": 0}, []
    path = root / "mutated.pt"
    while sum(outcomes.values()) < n_mutations:
        k = rng.integers(len(bases))
        mutated = _mutate(rng, bases[k][0], records[k], marker)
        if mutated is None:
            continue
        path.write_bytes(mutated)
        outcome = _fuzz_one(path, scratch, Q, bases[k][1])
        outcomes["refused" if outcome == "refused" else "same"] += 1
        if outcome not in ("refused", "same"):
            escapes.append((seed, sum(outcomes.values()), outcome))
        assert not marker.exists(), "code from the file ran"
        assert sorted(named.iterdir()) == named_before
        assert list(temporary.iterdir()) == []
        assert not scratch.exists() or list(scratch.iterdir()) == []
    return outcomes, escapes


@pytest.mark.parametrize("seed", [0])
def test_fuzzed_files_are_refused_or_load_the_same(seed, tmp_path, monkeypatch):
    start = time.perf_counter()
    outcomes, escapes = _fuzz(seed, 300, tmp_path, monkeypatch)
    print(f"fuzz seed={seed}: {outcomes} in {time.perf_counter() - start:.1f} s")
    assert escapes == []
    assert outcomes["refused"] > 100 and outcomes["same"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzzed_files_many_more(seed, tmp_path, monkeypatch):
    outcomes, escapes = _fuzz(seed, 300, tmp_path, monkeypatch)
    assert escapes == []


# -- continuing a saved path (partial_fit, warm_start) --------------------------
@pytest.mark.parametrize(
    "params",
    [{"momentum": 0.9}, {"solver": "adam", "learning_rate_init": 0.01}],
    ids=["nesterov", "adam"],
)
def test_saved_path_continues_bit_for_bit_as_if_never_saved(params, data, tmp_path):
    """The optimiser's state and the rows seen travel with the path."""
    X, Y, y = data
    est = PathKernelRegressor((4,), batch_size=7, random_state=0, **params)
    est.partial_fit(X[:12], y[:12])
    saved, pickled = _round_trip(est, "save", tmp_path), _round_trip(est, "pickle", 0)
    _assert_same(est, saved)
    for each in (est, saved, pickled):
        each.partial_fit(X[12:], y[12:])
        each.set_params(warm_start=True, max_iter=2)
        _fit(each, X[:5], y[:5] + 0.5)  # other targets: 5 rows more
    _assert_same(est, saved)
    _assert_same(est, pickled)
    assert est.t_ == 24 + 10 and est._fit_X.shape == (29, N_FEATURES)


def test_files_without_the_optimiser_state_load_and_refuse_to_continue_momentum(
    data, tmp_path
):
    """As files of older versions: they lack _optimizer_state and _rows_seen."""
    X, Y, y = data
    path = tmp_path / "model.pt"
    for params in ({"momentum": 0.9}, {}):
        est = PathKernelRegressor((4,), random_state=0, **params).partial_fit(X, y)
        save(est, path)
        _rewrite(
            path,
            lambda r: [
                r["estimator"]["attributes"].pop(name)
                for name in ("_optimizer_state", "_rows_seen")
            ],
        )
        loaded = load(path)
        assert loaded.t_ == 24 and np.array_equal(loaded.predict(Y), est.predict(Y))
        if params:
            with pytest.raises(ValueError, match="did not keep its optimiser's state"):
                loaded.partial_fit(X, y)
        else:  # plain sgd keeps no state: it continues as the saved one does
            loaded.partial_fit(X, y)
            assert np.array_equal(loaded.predict(Y), est.partial_fit(X, y).predict(Y))


def test_damaged_optimiser_state_is_refused(data, tmp_path):
    X, Y, y = data
    est = PathKernelRegressor((4,), momentum=0.9, random_state=0).partial_fit(X, y)
    path = tmp_path / "model.pt"
    save(est, path)

    def shrink(record):
        state = record["estimator"]["attributes"]["_optimizer_state"]
        key, entries = state["items"][0]
        name, _ = entries["items"][0]
        entries["items"][0] = (name, torch.zeros(2))

    _rewrite(path, shrink)
    with pytest.raises(ValueError, match=r"_optimizer_state\[0\]\['momentum_buffer'\]"):
        load(path)
