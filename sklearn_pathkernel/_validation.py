"""Input checks shared by the estimators and the functional API.

Inputs go through scikit-learn's ``validate_data`` / ``check_array`` and keep
their messages; :func:`input_errors` adds the name of the array (X, Y, y,
sample_weight) to the few that do not say which array they are about, and
turns numpy's conversion errors (strings, ragged rows) into messages that
do. Sparse input is refused, as ``check_array(accept_sparse=False)`` does:
the network and its Jacobians work on dense rows.
"""

import re
import warnings
from contextlib import contextmanager

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils.validation import _get_feature_names, check_array, validate_data

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# What a validated X or Y becomes: float32 stays float32, anything else
# numeric (integers, booleans, float16) becomes float64.
FLOAT_DTYPES = [np.float64, np.float32]

# numpy's messages when an array cannot become numbers: strings, objects
# that are not numbers, rows of different lengths, a sparse matrix.
_CONVERSION_ERRORS = (
    "could not convert",
    "float() argument",
    "setting an array element with a sequence",
    "inhomogeneous",
)


def resolve_device(device, *, parameter="device"):
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a device into one.

    Raises a ``ValueError`` naming ``parameter`` for a device that is not
    there, rather than failing later inside torch.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"The '{parameter}' parameter must be 'auto', 'cpu', 'cuda' or a "
            f"torch.device; got {device!r} instead."
        ) from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"The '{parameter}' parameter asks for {device!r}, but "
                "torch.cuda.is_available() is False on this machine. Use "
                f"{parameter}='auto' to fall back to the CPU."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"The '{parameter}' parameter asks for {device!r}, but only "
                f"{torch.cuda.device_count()} CUDA device(s) exist."
            )
    elif resolved.type != "cpu":
        raise ValueError(
            f"The '{parameter}' parameter must name a CPU or CUDA device; got "
            f"{device!r} instead."
        )
    return resolved


def to_tensor(X, *, dtype, device, name="X"):
    """Convert a validated 2-D float array to a tensor, refusing overflow.

    Values beyond the range of ``dtype`` (e.g. 1e39 in float32) would turn
    into inf silently; they raise a ``ValueError`` that names the array.
    """
    if isinstance(X, torch.Tensor):
        tensor = X.detach().to(device=device, dtype=dtype)
    else:
        tensor = torch.tensor(np.asarray(X), dtype=dtype, device=device)
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(
            f"{name} contains values that are not finite in {dtype} (largest "
            f"absolute value {float(np.nanmax(np.abs(np.asarray(X, float)))):.3g}). "
            "Rescale the data, or use dtype='float64'."
        )
    return tensor


def check_kernel_input(X, *, name, n_features=None):
    """Validate one argument of the functional kernel API.

    Accepts a 2-D array-like or tensor of finite numbers; returns it as a
    float array or tensor with the right number of columns.
    """
    if isinstance(X, torch.Tensor):
        if X.ndim != 2:
            raise ValueError(
                f"Expected a 2D tensor for {name}, got a tensor of shape "
                f"{tuple(X.shape)} instead."
            )
        if not X.is_floating_point():
            X = X.double()
        if not bool(torch.isfinite(X).all()):
            raise ValueError(f"Input {name} contains NaN or infinity.")
    else:
        X = check_array(
            X, dtype=[np.float64, np.float32], input_name=name, ensure_min_samples=0
        )
    if X.shape[0] == 0:
        raise ValueError(
            f"{name} is empty: it has 0 rows (shape={tuple(X.shape)}); the kernel "
            "needs at least one."
        )
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(
            f"{name} has {X.shape[1]} features, but X has {n_features} features."
        )
    return X


@contextmanager
def input_errors(**arrays):
    """Name the array that an input error is about, when its message does not.

    ``arrays`` maps names to the arrays as the caller received them, in the
    order they are validated. A ``ValueError`` or ``TypeError`` raised inside
    is re-raised as the same type, from the original, when

    - numpy could not convert an array to numbers (strings, objects, ragged
      rows): a message naming the first array that does not convert, of
      numpy's type (a sparse one gets scikit-learn's "Sparse data was passed"
      ``TypeError``);
    - scikit-learn's message does not name the array (complex values, too
      many dimensions, too few rows or features, 1-D instead of 2-D): the
      same message, prefixed with ``"Invalid <name>: "``.

    Any other error, and any message that already names an array, passes
    through unchanged.
    """
    try:
        yield
    except (ValueError, TypeError) as exc:
        if type(exc) not in (ValueError, TypeError):
            raise  # e.g. NotFittedError: not about the input
        named = _named_error(exc, arrays)
        if named is None:
            raise
        raise named from exc


def _named_error(exc, arrays):
    message = str(exc)
    if any(pattern in message for pattern in _CONVERSION_ERRORS):
        name = _first(arrays, lambda a: not _converts(a))
        if name is None:
            return None
        if sp.issparse(arrays[name]):
            return TypeError(
                f"Sparse data was passed for {name}, but dense data is required. "
                "Use '.toarray()' to convert to a dense numpy array."
            )
        reason = message.splitlines()[0]
        if "sequence" in message or "inhomogeneous" in message:
            return type(exc)(
                f"{name} must be a rectangular array of numbers, with the same "
                f"number of values in every row; numpy could not convert it: "
                f"{reason}"
            )
        return type(exc)(  # TypeError for objects that are not numbers
            f"{name} must contain numbers only; numpy could not convert it: "
            f"{reason}. Encode text or categories as numbers first, e.g. with "
            "sklearn.preprocessing.OneHotEncoder or OrdinalEncoder."
        )
    if any(re.search(rf"\b{re.escape(name)}\b", message) for name in arrays):
        return None  # scikit-learn's message already says which array
    name = None
    if "Complex data not supported" in message:
        name = _first(arrays, _is_complex)
    elif match := re.search(r"Found array with dim (\d+)", message):
        name = _first(arrays, lambda a: _ndim(a) == int(match.group(1)))
    elif match := re.search(r"shape=(\([\d, ]*\))", message):
        name = _first(arrays, lambda a: str(_shape(a)) == match.group(1))
    elif "Expected 2D" in message or "Expected a 2-dimensional" in message:
        name = _first(arrays, lambda a: _ndim(a) in (0, 1))
    if name is None:
        return None
    return type(exc)(f"Invalid {name}: {message}")


def _first(arrays, is_culprit):
    return next((name for name, a in arrays.items() if is_culprit(a)), None)


def _converts(a):
    if sp.issparse(a):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # complex -> real, for instance
            np.asarray(a, dtype=np.float64)
    except (ValueError, TypeError):
        return False
    return True


def _is_complex(a):
    try:
        return np.iscomplexobj(a.data if sp.issparse(a) else np.asarray(a))
    except (ValueError, TypeError):
        return False


def _shape(a):
    try:
        return tuple(int(n) for n in np.shape(a))
    except (ValueError, TypeError):
        return None


def _ndim(a):
    shape = _shape(a)
    return None if shape is None else len(shape)


def validate_X(estimator, X):
    """``validate_data(estimator, X, reset=False)`` for a fitted estimator.

    Checks the feature names and the number of features against ``fit``,
    and returns a 2-D float array (float32 stays float32; integers, booleans
    and float16 become float64). Every error names X.
    """
    with input_errors(X=X):
        return validate_data(estimator, X, reset=False, dtype=FLOAT_DTYPES)


def validate_other(estimator, Y, *, name="Y"):
    """Check a second array of rows (the ``Y`` of a kernel) as X is checked.

    The same conversions as :func:`validate_X`, and the same checks of the
    number of features and of the feature names against ``fit``, with
    messages that name ``name``.
    """
    _check_feature_names(estimator, Y, name)
    with input_errors(**{name: Y}):
        Y = check_array(Y, dtype=FLOAT_DTYPES, input_name=name, estimator=estimator)
    n_features = estimator.n_features_in_
    if Y.shape[1] != n_features:
        raise ValueError(
            f"{name} has {Y.shape[1]} features, but {type(estimator).__name__} is "
            f"expecting {n_features} features as input."
        )
    return Y


def _check_feature_names(estimator, Y, name):
    """scikit-learn's feature-name check of X at predict time, for ``name``."""
    fitted = getattr(estimator, "feature_names_in_", None)
    given = _get_feature_names(Y)
    owner = type(estimator).__name__
    if fitted is None and given is None:
        return
    if fitted is None:
        warnings.warn(
            f"{name} has feature names, but {owner} was fitted without feature names",
            UserWarning,
            stacklevel=4,
        )
        return
    if given is None:
        warnings.warn(
            f"{name} does not have valid feature names, but {owner} was fitted "
            "with feature names",
            UserWarning,
            stacklevel=4,
        )
        return
    if len(fitted) == len(given) and np.all(fitted == given):
        return
    unseen = sorted(set(given) - set(fitted))
    missing = sorted(set(fitted) - set(given))
    message = (
        f"The feature names of {name} should match those that were passed during fit.\n"
    )
    if unseen:
        message += f"Feature names unseen at fit time: {unseen}\n"
    if missing:
        message += f"Feature names seen at fit time, yet now missing: {missing}\n"
    if not unseen and not missing:
        message += "Feature names must be in the same order as they were in fit.\n"
    raise ValueError(message)


def check_finite_result(result, *, what, dtype, **inputs):
    """Refuse a result that overflowed, naming the inputs; return it.

    Values that fit the network's dtype can still overflow in products of
    rows (``|x|^2`` in float32 beyond about 1.8e19): the kernel, the
    features or the outputs then hold inf or NaN. ``result`` is an array or
    a tuple of arrays; ``inputs`` are the validated arrays it came from
    (None ones are skipped).
    """
    parts = result if isinstance(result, tuple) else (result,)
    if all(np.isfinite(part).all() for part in parts):
        return result
    largest = ", ".join(
        f"{name}: {float(np.max(np.abs(a), initial=0.0)):.3g}"
        for name, a in inputs.items()
        if a is not None
    )
    advice = "Rescale the data, e.g. with StandardScaler"
    if dtype == "float32":
        advice += ", or use dtype='float64'"
    raise ValueError(
        f"{what} is not finite: computing it in {dtype} overflowed (largest "
        f"absolute value in {largest}). {advice}."
    )
