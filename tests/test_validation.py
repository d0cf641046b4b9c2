"""Device resolution, input conversion, and the bad-input matrix.

The matrix (second half) runs every public entry point against every kind
of bad or unusual input.
"""

import copy
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from sklearn.exceptions import ConvergenceWarning

from sklearn_pathkernel import (
    PathKernel,
    PathKernelClassifier,
    PathKernelFeatures,
    PathKernelNystroem,
    PathKernelRegressor,
    PathKernelTransformer,
)
from sklearn_pathkernel._model._validation import (
    check_input_shape,
    check_kernel_input,
    check_tokens,
    refuse_nd,
    resolve_device,
    to_tensor,
)


def test_auto_device_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_cuda_without_a_gpu_is_refused(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="torch.cuda.is_available\\(\\) is False"):
        resolve_device(device)


def test_cuda_index_beyond_the_devices_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="only 1 CUDA device\\(s\\) exist"):
        resolve_device("cuda:3")


@pytest.mark.parametrize(
    "device, message",
    [("banana", "must be 'auto', 'cpu', 'cuda'"), ("meta", "CPU or CUDA device")],
)
def test_unknown_devices_name_the_parameter(device, message):
    with pytest.raises(ValueError, match=f"The 'device' parameter {message}|{message}"):
        resolve_device(device)


def test_to_tensor_casts_and_copies():
    X = np.arange(6.0).reshape(2, 3)
    X.setflags(write=False)  # read-only input must not warn or be shared
    tensor = to_tensor(X, dtype=torch.float32, device="cpu")
    assert tensor.dtype == torch.float32 and tensor.shape == (2, 3)
    tensor[0, 0] = 42.0
    assert X[0, 0] == 0.0


def test_to_tensor_is_c_contiguous_whatever_the_layout():
    # A DataFrame's values arrive column-major; a transposed layout sends a
    # GPU matmul to another kernel with other rounding (seen on an H200), so
    # every tensor starts C-contiguous, from arrays and tensors alike.
    X = np.asfortranarray(np.arange(12.0).reshape(4, 3))
    for given in (X, torch.tensor(X).t().contiguous().t()):
        tensor = to_tensor(given, dtype=torch.float32, device="cpu")
        assert tensor.is_contiguous()
        assert np.array_equal(tensor.numpy(), X)


def test_to_tensor_refuses_float32_overflow_and_names_the_array():
    with pytest.raises(ValueError, match="y contains values that are not finite"):
        to_tensor(np.array([[1e300]]), dtype=torch.float32, device="cpu", name="y")
    assert (
        to_tensor(np.array([[1e300]]), dtype=torch.float64, device="cpu").item()
        == 1e300
    )


def test_check_kernel_input_converts_integer_tensors():
    out = check_kernel_input(torch.ones(2, 3, dtype=torch.int64), name="X")
    assert out.is_floating_point()


def test_check_kernel_input_feature_mismatch_names_both():
    with pytest.raises(ValueError, match="Y has 2 features, but X has 3 features"):
        check_kernel_input(np.ones((1, 2)), name="Y", n_features=3)


# -- the bad-input matrix ----------------------------------------------------
#
# Every public entry point against every kind of bad (or merely unusual)
# input: a table of cases times a table of entry points. A case either
# raises an error that says what is wrong, or is FINE: it gives the same
# result as the same values cast to a float64 ndarray. Never a RuntimeError
# from torch.
#
# The errors are scikit-learn's own (validate_data / check_array with
# input_name=), unchanged: most name the array (X, Y, y, sample_weight);
# those that do not (complex values, a wrong number of dimensions, too few
# rows or features, and numpy's conversion errors for text or ragged rows,
# which scikit-learn lets through) are matched as scikit-learn writes them.
# The rest are ours: values or results that overflow float32, and the
# number of features of Y.

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

_RNG = np.random.RandomState(0)
X_FIT = _RNG.randn(12, 3)
Y_REGRESSION = _RNG.randn(12)
Y_CLASSES = np.arange(12) % 2
X_NEW = _RNG.randn(4, 3)  # the rows bad arrays are made from, after fit
COLUMNS = ["a", "b", "c"]
NET = {"hidden_layer_sizes": (4,), "max_iter": 3, "random_state": 0}

FINE = "fine"


def _fit_all(X):
    """Every estimator fitted once on X (an array, or a DataFrame)."""
    reg = PathKernelRegressor(**NET).fit(X, Y_REGRESSION)
    return {
        "reg": reg,
        "clf": PathKernelClassifier(**NET).fit(X, Y_CLASSES),
        "transformer": PathKernelTransformer(PathKernelRegressor(**NET)).fit(
            X, Y_REGRESSION
        ),
        "features": PathKernelFeatures(
            PathKernelRegressor(**NET, record_every=3), n_components=5, random_state=0
        ).fit(X, Y_REGRESSION),
        "nystroem": PathKernelNystroem(
            PathKernelRegressor(**NET), n_components=5, random_state=0
        ).fit(X, Y_REGRESSION),
        "gp": PathKernel(reg),
        # The good rows that go with the bad ones (X of kernel(X, Y)).
        "X_new": X_NEW if isinstance(X, np.ndarray) else _frame(COLUMNS),
    }


@pytest.fixture(scope="module")
def fitted():
    return _fit_all(X_FIT)


@pytest.fixture(scope="module")
def fitted_with_names():
    return _fit_all(pd.DataFrame(X_FIT, columns=COLUMNS))


# Entry points that take rows after fit: name -> (argument, call(fitted, A)).
def _targets_for(A):
    """Zero targets, one per row of whatever ``A`` is (a scalar: one)."""
    shape = getattr(A, "shape", None) or np.shape(A)
    return np.zeros(shape[0] if len(shape) else 1)


METHODS = {
    "Regressor.predict": ("X", lambda f, A: f["reg"].predict(A)),
    "Classifier.predict": ("X", lambda f, A: f["clf"].predict(A)),
    "Classifier.predict_proba": ("X", lambda f, A: f["clf"].predict_proba(A)),
    "Classifier.predict_log_proba": (
        "X",
        lambda f, A: f["clf"].predict_log_proba(A),
    ),
    "Classifier.decision_function": (
        "X",
        lambda f, A: f["clf"].decision_function(A),
    ),
    "kernel(X)": ("X", lambda f, A: f["reg"].kernel(A)),
    "kernel(X_NEW, Y)": ("Y", lambda f, A: f["reg"].kernel(f["X_new"], A)),
    "kernel_diagonal": ("X", lambda f, A: f["reg"].kernel_diagonal(A)),
    "decompose": ("X", lambda f, A: f["reg"].decompose(A).contributions),
    # Labelled rows: targets of the same length, so only X can be at fault.
    "influence": ("X", lambda f, A: f["reg"].influence(A, _targets_for(A))),
    "self_influence(X, y)": (
        "X",
        lambda f, A: f["reg"].self_influence(A, _targets_for(A)),
    ),
    "Transformer.transform": ("X", lambda f, A: f["transformer"].transform(A)),
    "Features.transform": ("X", lambda f, A: f["features"].transform(A)),
    "Nystroem.transform": ("X", lambda f, A: f["nystroem"].transform(A)),
    "PathKernel(X)": ("X", lambda f, A: f["gp"](A)),
    "PathKernel(X_NEW, Y)": ("Y", lambda f, A: f["gp"](f["X_new"], A)),
    "PathKernel.diag": ("X", lambda f, A: f["gp"].diag(A)),
}


def _fit_reg(X, y, w):
    return PathKernelRegressor(**NET).fit(X, y, sample_weight=w).predict(X_NEW)


def _fit_clf(X, y, w):
    est = PathKernelClassifier(**NET).fit(X, y, sample_weight=w)
    return est.decision_function(X_NEW)


def _fit_transformer(estimator):
    def fit(X, y, w):
        transformer = PathKernelTransformer(estimator)
        return transformer.fit(X, y, sample_weight=w).transform(X_NEW)

    return fit


def _fit_features(X, y, w):
    features = PathKernelFeatures(
        PathKernelRegressor(**NET, record_every=3), n_components=5, random_state=0
    )
    return features.fit(X, y, sample_weight=w).transform(X_NEW)


# Entry points that fit: name -> (kind of target, call(X, y, sample_weight)),
# each returning numbers computed by the fitted object on X_NEW.
FITS = {
    "Regressor.fit": ("regression", _fit_reg),
    "Classifier.fit": ("classification", _fit_clf),
    "Transformer.fit": ("regression", _fit_transformer(PathKernelRegressor(**NET))),
    "Transformer(Classifier).fit": (
        "classification",
        _fit_transformer(PathKernelClassifier(**NET)),
    ),
    "Features.fit": ("regression", _fit_features),
}


def _with(value, at=(0, 0)):
    def build(A):
        A = np.array(A, dtype=np.result_type(A, value))
        A[at] = value
        return A

    return build


def _object_with(value):
    def build(A):
        A = np.asarray(A).astype(object)
        A[0, 0] = value
        return A

    return build


def _text_column(A):
    frame = pd.DataFrame(A)
    frame[0] = "text"
    return frame


def _read_only(A):
    A = A.copy()
    A.setflags(write=False)
    return A


class Case:
    """A bad input: how to make it from good rows, and what each use gives.

    ``methods`` and ``fit`` are FINE, ``(exception, message regex)`` with
    ``{arg}`` standing for the argument's name, or None (not applicable).
    ``reference`` makes the float64 input a FINE case must agree with.
    """

    def __init__(self, name, build, methods, fit="same", reference=None):
        self.name = name
        self.build = build
        self.methods = methods
        self.fit = methods if fit == "same" else fit
        # partial_fit on a fitted estimator: fit's rules for rows and values,
        # the methods' for the number of features.
        self.partial_fit = self.methods if self.fit is None else self.fit
        self.reference = reference or (lambda A: np.asarray(A, dtype=np.float64))


def _error(exception, pattern):
    return (exception, pattern)


_SPARSE = _error(
    TypeError,
    "Sparse data was passed for {arg}, but dense data is required. Use "
    r"'\.toarray\(\)' to convert to a dense numpy array",
)
# numpy's message, which scikit-learn lets through: it names the value.
_NOT_NUMBERS = _error(ValueError, r"^could not convert string to float: .*'(a|b|text)'")
_COMPLEX = _error(ValueError, "^Complex data not supported\n")
_RAGGED = _error(
    ValueError,
    "^setting an array element with a sequence. The requested array has an "
    "inhomogeneous shape",
)
_DIM_3 = _error(ValueError, "^Found array with dim 3, while dim <= 2 is required")
# X of more than two dimensions: the message says how to pass images.
_DIM_3_X = _error(
    ValueError,
    r"^{arg} has shape \(\d+, 3, 1\), but the estimators take 2-D rows "
    r"\(n_samples, n_features\), as every scikit-learn estimator does\. Pass "
    r"{arg}\.reshape\(len\({arg}\), -1\) and set input_shape=\(3, 1\)",
)

X_CASES = [
    Case("NaN", _with(np.nan), _error(ValueError, "Input {arg} contains NaN")),
    Case("inf", _with(np.inf), _error(ValueError, "Input {arg} contains infinity")),
    Case("-inf", _with(-np.inf), _error(ValueError, "Input {arg} contains infinity")),
    Case("complex", lambda A: A + 1j, _COMPLEX),
    Case("strings", lambda A: np.full(A.shape, "a"), _NOT_NUMBERS),
    Case("bytes", lambda A: np.full(A.shape, b"a"), _NOT_NUMBERS),
    Case("object array with a string", _object_with("a"), _NOT_NUMBERS),
    Case(
        "object array with a dict",
        _object_with({}),
        _error(
            TypeError,
            r"^float\(\) argument must be a string or a real number, not 'dict'",
        ),
    ),
    Case(
        "object array with None",
        _object_with(None),
        _error(ValueError, "Input {arg} contains NaN"),
    ),
    Case(
        "DataFrame with a text column",
        _text_column,
        _NOT_NUMBERS,
    ),
    Case("numeric strings", lambda A: A.astype(str), FINE),
    Case("object array of floats", lambda A: A.astype(object), FINE),
    Case("scipy.sparse csr_matrix", sp.csr_matrix, _SPARSE),
    Case("scipy.sparse csc_array", sp.csc_array, _SPARSE),
    Case("scipy.sparse coo_matrix", sp.coo_matrix, _SPARSE),
    Case(
        "0 rows",
        lambda A: A[:0],
        _error(
            ValueError,
            r"^Found array with 0 sample\(s\) \(shape=\(0, 3\)\) while a minimum of "
            r"[12] is required by PathKernel\w+\.",
        ),
    ),
    Case(
        "0 features",
        lambda A: A[:, :0],
        _error(
            ValueError,
            r"^Found array with 0 feature\(s\) \(shape=\(\d+, 0\)\) while a minimum "
            "of 1 is required",
        ),
    ),
    Case(
        "1 row",
        lambda A: A[:1],
        FINE,
        fit=_error(
            ValueError,
            r"^Found array with 1 sample\(s\) \(shape=\(1, 3\)\) while a minimum "
            "of 2 is required by PathKernel(Regressor|Classifier)",
        ),
    ),
    Case(
        "fewer features than at fit",
        lambda A: A[:, :2],
        _error(ValueError, r"^{arg} has 2 features, but \w+ is expecting 3 features"),
        fit=None,
    ),
    Case(
        "more features than at fit",
        lambda A: np.hstack([A, A[:, :1]]),
        _error(ValueError, r"^{arg} has 4 features, but \w+ is expecting 3 features"),
        fit=None,
    ),
    Case(
        "1-D array",
        lambda A: A[0],
        _error(ValueError, "^Expected 2D array, got 1D array instead"),
    ),
    Case(
        "scalar",
        lambda A: 1.0,
        _error(ValueError, "^Expected 2D array, got scalar array instead"),
    ),
    Case("3-D array", lambda A: A[:, :, None], _DIM_3_X),
    Case(
        "ragged list of lists",
        lambda A: [list(A[0]), list(A[1, :2])] + [list(r) for r in A[2:]],
        _RAGGED,
    ),
    Case("list of lists", lambda A: A.tolist(), FINE),
    Case("tuple of tuples", lambda A: tuple(map(tuple, A)), FINE),
    Case("float16", lambda A: A.astype(np.float16), FINE),
    Case("float32", lambda A: A.astype(np.float32), FINE),
    Case("int64", lambda A: np.round(3 * A).astype(np.int64), FINE),
    Case("uint8", lambda A: np.abs(np.round(3 * A)).astype(np.uint8), FINE),
    Case("bool", lambda A: A > 0, FINE),
    Case("Fortran order", np.asfortranarray, FINE),
    Case("strided view", lambda A: np.repeat(A, 2, axis=1)[:, ::2], FINE),
    Case("read-only", _read_only, FINE),
    Case("DataFrame without names", pd.DataFrame, FINE),
    Case("torch tensor", torch.from_numpy, FINE),
    Case(
        "1e39 overflows float32",
        _with(1e39),
        _error(
            ValueError,
            r"^{arg} contains values that are not finite in (torch\.)?float32 "
            r"\(largest absolute value 1e\+39\)\. Rescale the data, or use "
            r"dtype='float64'",
        ),
    ),
    Case(
        "inf in a float32 array (1e39 cast to float32)",
        lambda A: _with(np.float32(np.inf))(A.astype(np.float32)),
        _error(
            ValueError,
            r"^Input {arg} contains infinity or a value too large for "
            r"dtype\('float32'\)",
        ),
    ),
]


def _params(cases, entry_points, expectation):
    return [
        pytest.param(entry, case, id=f"{entry}-{case.name}")
        for entry in entry_points
        for case in cases
        if getattr(case, expectation) is not None
    ]


def _check(call, bad, expected, arg, reference):
    """``call(bad)`` raises as expected, or equals ``call(reference(bad))``."""
    if expected is FINE:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no stray warnings either
            warnings.filterwarnings("ignore", category=ConvergenceWarning)
            result = call(bad)
        np.testing.assert_array_equal(result, call(reference(bad)))
        return
    exception, pattern = expected
    with pytest.raises(exception, match=pattern.format(arg=arg)):
        call(bad)


@pytest.mark.parametrize("method, case", _params(X_CASES, METHODS, "methods"))
def test_methods_bad_input(fitted, method, case):
    arg, call = METHODS[method]
    bad = case.build(X_NEW.copy())
    _check(lambda A: call(fitted, A), bad, case.methods, arg, case.reference)


def _partial_fit(name):
    """partial_fit of a copy of the fitted ``name`` (the fixture stays as it is)."""

    def call(f, A):
        est = copy.deepcopy(f[name])
        y = _targets_for(A).astype(int if name == "clf" else float)
        est.partial_fit(A, y)
        return est.decision_function(X_NEW) if name == "clf" else est.predict(X_NEW)

    return call


PARTIAL_FITS = {
    "Regressor.partial_fit": _partial_fit("reg"),
    "Classifier.partial_fit": _partial_fit("clf"),
}


@pytest.mark.parametrize("fit, case", _params(X_CASES, PARTIAL_FITS, "partial_fit"))
def test_partial_fit_bad_X(fitted, fit, case):
    """One more epoch on bad rows: fit's errors, the methods' feature count."""
    bad = case.build(X_NEW.copy())
    call = PARTIAL_FITS[fit]
    _check(lambda A: call(fitted, A), bad, case.partial_fit, "X", case.reference)


@pytest.mark.parametrize("fit, case", _params(X_CASES, FITS, "fit"))
def test_fit_bad_X(fit, case):
    kind, call = FITS[fit]
    y = Y_REGRESSION if kind == "regression" else Y_CLASSES
    bad = case.build(X_FIT.copy())
    y = y[: _n_rows(bad)]  # so that only X is wrong
    _check(lambda A: call(A, y, None), bad, case.fit, "X", case.reference)


def _n_rows(A):
    shape = A.shape if sp.issparse(A) else np.shape(A) if _rectangular(A) else ()
    return shape[0] if shape else None


def _rectangular(A):
    try:
        np.shape(A)
    except ValueError:
        return False
    return True


# Targets: ``regression`` and ``classification`` say what each kind of fit
# gives; built from the good y of that kind.
Y_CASES = [
    Case(
        "NaN in y",
        _with(np.nan, at=0),
        _error(ValueError, "Input y contains NaN"),
    ),
    Case(
        "inf in y",
        _with(np.inf, at=0),
        _error(ValueError, "Input y contains infinity"),
    ),
    Case("complex y", lambda y: y + 1j, _COMPLEX),
    Case(
        "y shorter than X",
        lambda y: y[:5],
        _error(ValueError, r"inconsistent numbers of samples: \[12, 5\]"),
    ),
    Case("3-D y", lambda y: y[:, None, None], _DIM_3),
    Case("sparse y", lambda y: sp.csr_matrix(y[:, None]), _SPARSE),
    Case("y is None", lambda y: None, _error(ValueError, "requires y to be passed")),
    Case("ragged y", lambda y: [[v] for v in y[:-1]] + [[1.0, 2.0]], _RAGGED),
    Case("y as a list", list, FINE),
    Case("y as a Series", pd.Series, FINE),
    Case("boolean y", lambda y: y > 0, FINE),
]
# What differs between the kinds of target: {name: (regression, classification)}.
_Y_BY_KIND = {
    "string y": (
        lambda y: np.where(y > 0, "b", "a"),
        _NOT_NUMBERS,
        FINE,
        lambda y: (y == "b").astype(np.float64),
    ),
    "one class": (
        lambda y: np.zeros_like(y),
        None,
        _error(ValueError, "at least 2 classes"),
    ),
    "continuous y": (
        lambda y: y + 0.5,
        None,
        _error(ValueError, "Unknown label type: continuous"),
    ),
    # Two 0/1 columns: a multilabel indicator, one logistic output per label.
    "2-D y": (lambda y: np.column_stack([y, y]), None, FINE),
    "2-D labels": (
        lambda y: np.column_stack([y, y + 2]),
        None,
        _error(
            ValueError,
            r"^y of shape \(12, 2\) must be 1-D labels or a multilabel indicator "
            r"matrix .*; got multiclass-multioutput targets",
        ),
    ),
    "integer y": (lambda y: np.round(3 * y).astype(int), FINE, FINE),
    "1e39 in y": (
        _with(1e39, at=0),
        _error(
            ValueError, "^y contains values that are not finite in (torch\\.)?float32"
        ),
        _error(ValueError, "Unknown label type: continuous"),
    ),
}


def _y_cases(kind):
    cases = [Case(c.name, c.build, c.methods, reference=c.reference) for c in Y_CASES]
    for name, (build, regression, classification, *reference) in _Y_BY_KIND.items():
        expected = regression if kind == "regression" else classification
        cases.append(Case(name, build, expected, reference=(reference or [None])[0]))
    return cases


@pytest.mark.parametrize(
    "fit, case",
    [
        pytest.param(fit, case, id=f"{fit}-{case.name}")
        for fit, (kind, _) in FITS.items()
        for case in _y_cases(kind)
        if case.methods is not None
    ],
)
def test_fit_bad_y(fit, case):
    kind, call = FITS[fit]
    y = (Y_REGRESSION if kind == "regression" else Y_CLASSES).copy()
    bad = case.build(y)
    with warnings.catch_warnings():
        # sklearn's type_of_target casts 1e39 to int on its way to "continuous".
        warnings.filterwarnings("ignore", "invalid value", RuntimeWarning)
        _check(lambda t: call(X_FIT, t, None), bad, case.methods, "y", case.reference)


SAMPLE_WEIGHT_CASES = [
    Case(
        "NaN",
        _with(np.nan, at=0),
        _error(ValueError, "Input sample_weight contains NaN"),
    ),
    Case(
        "inf",
        _with(np.inf, at=0),
        _error(ValueError, "Input sample_weight contains infinity"),
    ),
    Case(
        "negative",
        _with(-1.0, at=0),
        _error(ValueError, "Negative values in data passed to `sample_weight`"),
    ),
    Case(
        "wrong length",
        lambda w: w[:5],
        _error(ValueError, r"sample_weight.shape == \(5,\), expected \(12,\)"),
    ),
    Case(
        "2-D",
        lambda w: np.column_stack([w, w]),
        _error(ValueError, "Sample weights must be 1D array or scalar"),
    ),
    Case(
        "all zero",
        np.zeros_like,
        _error(ValueError, "Sample weights must contain at least one non-zero"),
    ),
    Case("strings", lambda w: np.full(w.shape, "a"), _NOT_NUMBERS),
    Case("complex", lambda w: w + 1j, _COMPLEX),
    Case("sparse", lambda w: sp.csr_matrix(w[:, None]), _SPARSE),
    Case(
        "1e39 overflows float32",
        _with(1e39, at=0),
        _error(
            ValueError,
            "^sample_weight contains values that are not finite in (torch\\.)?float32",
        ),
    ),
    Case("integers", lambda w: np.arange(12) % 3 + 1, FINE),
    Case("list", list, FINE),
    Case("scalar", lambda w: 2.0, FINE, reference=lambda w: np.full(12, 2.0)),
]


@pytest.mark.parametrize("fit, case", _params(SAMPLE_WEIGHT_CASES, FITS, "methods"))
def test_fit_bad_sample_weight(fit, case):
    kind, call = FITS[fit]
    y = Y_REGRESSION if kind == "regression" else Y_CLASSES
    bad = case.build(np.linspace(0.5, 2.0, 12))
    _check(
        lambda w: call(X_FIT, y, w), bad, case.methods, "sample_weight", case.reference
    )


# -- values that fit float32 but overflow inside the network --------------------


_NETWORK_OUTPUTS = ("Regressor.predict", "Classifier.predict", "Classifier.decision")


@pytest.mark.parametrize("method", METHODS)
def test_values_near_float32_overflow(fitted, method):
    """3e38 fits float32: results are finite, or the overflow is named.

    The network's outputs saturate (tanh) and stay finite; the path kernel
    holds products of rows (3e38 ** 2), which overflow float32: a
    ``ValueError`` says so and names the inputs, instead of a NaN matrix.
    """
    arg, call = METHODS[method]
    bad = np.full_like(X_NEW, 3e38)
    try:
        result = call(fitted, bad)
    except ValueError as exc:
        assert not method.startswith(_NETWORK_OUTPUTS)
        assert re.match(
            r"The (path kernel|decomposition|path-kernel features|influence) "
            r"is not finite: "
            r"computing it in float32 overflowed \(largest absolute value in .*"
            rf"\b{arg}: 3e\+38.*use dtype='float64'",
            str(exc),
        ), str(exc)
    else:
        assert np.isfinite(np.asarray(result, dtype=float)).all()


@pytest.mark.parametrize("fit", FITS)
def test_fit_near_float32_overflow(fit):
    kind, call = FITS[fit]
    y = Y_REGRESSION if kind == "regression" else Y_CLASSES
    X = X_FIT.copy()
    X[0, 0] = 3e38
    try:
        result = call(X, y, None)
    except ValueError as exc:  # the kernel of X_NEW against the huge row
        assert fit.startswith("Transformer")
        assert "The path kernel is not finite" in str(exc)
    else:
        assert np.isfinite(result).all()


# -- feature names ------------------------------------------------------------
#
# scikit-learn's checks and messages (validate_data), for Y of kernel(X, Y)
# as well: its messages say "X" whichever array they are about, and are left
# as scikit-learn writes them (X_NEW, the X of those calls, has the right
# names, so the warnings there are Y's).


def _frame(columns):
    return pd.DataFrame(X_NEW, columns=columns)


@pytest.mark.parametrize("method", METHODS)
def test_feature_names_differ_from_fit(fitted_with_names, method):
    _, call = METHODS[method]
    with pytest.raises(
        ValueError,
        match="(?s)^The feature names should match those that were passed during "
        r"fit\..*Feature names unseen at fit time:\n- z\n",
    ):
        call(fitted_with_names, _frame(["a", "b", "z"]))
    with pytest.raises(ValueError, match="must be in the same order as they were"):
        call(fitted_with_names, _frame(["c", "b", "a"]))


@pytest.mark.parametrize("method", METHODS)
def test_array_after_fit_with_names(fitted_with_names, method):
    """sklearn's warning, and the same result as with the right names.

    PathKernel takes plain arrays without a warning: GaussianProcessRegressor
    hands its kernel arrays, whatever it was fitted on.
    """
    _, call = METHODS[method]
    expected = call(fitted_with_names, _frame(COLUMNS))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call(fitted_with_names, X_NEW)
    messages = [str(w.message) for w in caught if w.category is UserWarning]
    if method.startswith("PathKernel"):
        assert messages == []
    else:
        assert any(
            re.match(
                r"X does not have valid feature names, but \w+ was fitted "
                "with feature names",
                m,
            )
            for m in messages
        ), messages
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("method", METHODS)
def test_names_after_fit_without(fitted, method):
    _, call = METHODS[method]
    with pytest.warns(
        UserWarning,
        match=r"^X has feature names, but \w+ was fitted without feature names",
    ):
        result = call(fitted, _frame(COLUMNS))
    np.testing.assert_array_equal(result, call(fitted, X_NEW))


def test_gaussian_process_on_a_dataframe_does_not_warn():
    from sklearn.gaussian_process import GaussianProcessRegressor

    frame = pd.DataFrame(X_FIT, columns=COLUMNS)
    net = PathKernelRegressor(**NET, dtype="float64").fit(frame, Y_REGRESSION)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        gp = GaussianProcessRegressor(PathKernel(net), optimizer=None)
        gp.fit(frame, Y_REGRESSION).predict(frame)


# The method each row of METHODS exercises, by where it is defined.
EXERCISES = {
    "Regressor.predict": "PathKernelRegressor.predict",
    "Classifier.predict": "PathKernelClassifier.predict",
    "Classifier.predict_proba": "PathKernelClassifier.predict_proba",
    "Classifier.predict_log_proba": "PathKernelClassifier.predict_log_proba",
    "Classifier.decision_function": "PathKernelClassifier.decision_function",
    "kernel(X)": "BasePathKernelEstimator.kernel",
    "kernel(X_NEW, Y)": "BasePathKernelEstimator.kernel",
    "kernel_diagonal": "BasePathKernelEstimator.kernel_diagonal",
    "decompose": "BasePathKernelEstimator.decompose",
    "influence": "BasePathKernelEstimator.influence",
    "self_influence(X, y)": "BasePathKernelEstimator.self_influence",
    "Transformer.transform": "PathKernelTransformer.transform",
    "Features.transform": "PathKernelFeatures.transform",
    "Nystroem.transform": "PathKernelNystroem.transform",
    "PathKernel(X)": "PathKernel.__call__",
    "PathKernel(X_NEW, Y)": "PathKernel.__call__",
    "PathKernel.diag": "PathKernel.diag",
}


def _public_methods_taking_rows(fits=False):
    """Every method of the public classes, defined in this package, that takes
    X or Y after fitting (fit itself has its own matrix, FITS, and partial_fit
    its own, PARTIAL_FITS); with ``fits``, the partial_fit methods instead."""
    import inspect

    import sklearn_pathkernel

    found = set()
    for name in sklearn_pathkernel.__all__:
        cls = getattr(sklearn_pathkernel, name)
        if not inspect.isclass(cls):
            continue
        for attribute, function in inspect.getmembers(cls, inspect.isfunction):
            public = not attribute.startswith("_") or attribute == "__call__"
            ours = function.__module__.startswith("sklearn_pathkernel")
            takes_rows = {"X", "Y"} & set(inspect.signature(function).parameters)
            fitting = attribute.startswith("fit") or attribute == "partial_fit"
            wanted = attribute == "partial_fit" if fits else not fitting
            if public and ours and takes_rows and wanted:
                found.add(function.__qualname__)
    return found


def test_matrix_covers_every_entry_point():
    """A public method that takes rows and has no row in METHODS fails here."""
    assert set(EXERCISES) == set(METHODS)
    assert _public_methods_taking_rows() == set(EXERCISES.values())
    partial_fits = {f"PathKernel{name}" for name in PARTIAL_FITS}
    assert _public_methods_taking_rows(fits=True) == partial_fits


# -- shapes and token ids ------------------------------------------------------
@pytest.mark.parametrize(
    "X", [np.zeros((3, 1, 2, 2)), torch.zeros(3, 4, 1), np.zeros((3, 2, 2))]
)
def test_refuse_nd_says_how_to_flatten(X):
    shape = tuple(X.shape)
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"Y has shape {shape}, but the estimators take 2-D rows "
            "(n_samples, n_features), as every scikit-learn estimator does. Pass "
            f"Y.reshape(len(Y), -1) and set input_shape={shape[1:]}"
        ),
    ):
        refuse_nd(X, name="Y")


@pytest.mark.parametrize("X", [np.zeros((3, 4)), [[1, 2]], np.zeros(3), 1.0])
def test_refuse_nd_leaves_the_rest_to_scikit_learn(X):
    refuse_nd(X)


def test_check_input_shape_wants_the_product_of_its_dimensions():
    check_input_shape(None, 7)
    check_input_shape((1, 2, 3), 6)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "X has 5 features, but input_shape=(1, 2, 3) holds 6 numbers per "
            "example: its product must be the number of features."
        ),
    ):
        check_input_shape((1, 2, 3), 5)


@pytest.mark.parametrize(
    "X, dtype, message",
    [
        (
            [[0.0, 1.5]],
            "float64",
            r"Y must hold integer token ids \(tokens=True\), but it holds 1\.5\. "
            r"Pass integers, e\.g\. Y\.astype\(np\.int64\)",
        ),
        ([[0.0, np.nan]], "float64", "Y must hold integer token ids"),
        (
            [[3.0, -2.0]],
            "float64",
            r"Y holds the token id -2; token ids \(tokens=True\) must be "
            "non-negative",
        ),
        (
            [[2.0**24, 0.0]],
            "float32",
            r"Y holds the token id 16777216, which float32 does not hold exactly "
            r"\(ids must be below 16777216 in float32\)\. Use dtype='float64'",
        ),
    ],
)
def test_check_tokens_refuses_what_is_not_an_id(X, dtype, message):
    with pytest.raises(ValueError, match=message):
        check_tokens(np.array(X), name="Y", dtype=dtype)


def test_check_tokens_accepts_whole_numbers_in_any_array():
    check_tokens(np.array([[0.0, 3.0], [2.0**24 - 1, 1.0]]), name="X", dtype="float32")
    check_tokens(np.array([[2.0**24, 1.0]]), name="X", dtype="float64")
    check_tokens(np.zeros((0, 3)), name="X", dtype="float32")
