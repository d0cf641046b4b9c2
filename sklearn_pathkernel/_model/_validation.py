"""Input checks shared by the estimators and the functional API.

Arrays go through scikit-learn's public ``validate_data`` / ``check_array``
with ``input_name=`` and its errors and warnings pass through unchanged,
including the few that do not say which array they are about (complex
values, a wrong number of dimensions, text that numpy cannot convert).
Sparse input is refused, as ``check_array(accept_sparse=False)`` does: the
network and its Jacobians work on dense rows. The messages written here are
for what scikit-learn does not check: values that overflow the network's
dtype, results that overflow, devices, and tensors given to the functional
API.
"""

import math

import numpy as np
import torch
from sklearn.utils.validation import check_array, validate_data

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# float32 holds every integer up to 2**24 exactly: token ids beyond it would
# reach nn.Embedding changed.
_EXACT_INTEGERS = {"float32": 2**24, "float64": 2**53}

# What a validated X or Y becomes: float32 stays float32, anything else
# numeric (integers, booleans, float16) becomes float64.
FLOAT_DTYPES = [np.float64, np.float32]


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
    """A validated array or tensor, of any shape, as a tensor; refuses overflow.

    Values beyond the range of ``dtype`` (e.g. 1e39 in float32) would turn
    into inf silently; they raise a ``ValueError`` that names the array.
    The tensor is C-contiguous whatever the input's layout: a DataFrame
    arrives column-major, and a GPU matmul on a transposed layout picks
    another kernel, whose rounding differs (seen on an H200).
    """
    if isinstance(X, torch.Tensor):
        tensor = X.detach().to(device=device, dtype=dtype).contiguous()
    else:
        tensor = torch.tensor(np.ascontiguousarray(X), dtype=dtype, device=device)
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(
            f"{name} contains values that are not finite in {dtype} (largest "
            f"absolute value {float(np.nanmax(np.abs(np.asarray(X, float)))):.3g}). "
            "Rescale the data, or use dtype='float64'."
        )
    return tensor


def check_kernel_input(X, *, name, n_features=None, like_name="X"):
    """Validate one argument of the functional kernel API.

    Accepts a 2-D array-like or tensor of finite numbers; returns it as a
    float array or tensor with the right number of columns. Images and
    sequences come as tensors of shape ``(n, *input_shape)``, which
    ``kernel_rows`` (``_kernels/_rows.py``) takes before this check, or
    flattened for a module that restores their shape (an estimator's
    ``module_`` does when it was fitted with ``input_shape``).
    """
    shape = getattr(X, "shape", None)
    if shape is not None and len(shape) > 2:
        shape = tuple(shape)
        raise ValueError(
            f"{name} has shape {shape}, but the kernel functions take arrays of "
            f"2-D rows (n_samples, n_features), or tensors of shape (n_samples, "
            f"*input_shape). Pass torch.as_tensor({name}) to a module that takes "
            f"that shape, or {name}.reshape(len({name}), -1) to one that starts "
            f"with nn.Unflatten(1, {shape[1:]}) (an estimator's module_ does when "
            "fitted with input_shape)."
        )
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
        X = check_array(X, dtype=FLOAT_DTYPES, input_name=name, ensure_min_samples=0)
    if X.shape[0] == 0:
        raise ValueError(
            f"{name} is empty: it has 0 rows (shape={tuple(X.shape)}); the kernel "
            "needs at least one."
        )
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(
            f"{name} has {X.shape[1]} features, but {like_name} has {n_features} "
            "features."
        )
    return X


def refuse_nd(X, *, name="X"):
    """Refuse an array of more than two dimensions, saying how to pass it.

    scikit-learn's estimators, Pipelines and cross-validation work on 2-D
    rows; an image or sequence model takes them flattened, with the
    estimator's ``input_shape`` restoring each example's shape.
    """
    shape = getattr(X, "shape", None)
    if shape is not None and len(shape) > 2:
        shape = tuple(shape)
        raise ValueError(
            f"{name} has shape {shape}, but the estimators take 2-D rows "
            "(n_samples, n_features), as every scikit-learn estimator does. Pass "
            f"{name}.reshape(len({name}), -1) and set input_shape={shape[1:]} to "
            "give the module each example in its shape."
        )


def check_input_shape(input_shape, n_features):
    """Refuse an ``input_shape`` whose product is not ``n_features``."""
    if input_shape is not None and math.prod(input_shape) != n_features:
        raise ValueError(
            f"X has {n_features} features, but input_shape={tuple(input_shape)} "
            f"holds {math.prod(input_shape)} numbers per example: its product "
            "must be the number of features."
        )


def check_tokens(X, *, name, dtype):
    """Refuse token ids that are not exact non-negative integers.

    ``X`` is a validated float array; integer arrays arrive cast to float64,
    and floats holding whole numbers (as ``SVC`` and Gaussian processes pass
    them to a callable kernel) are accepted. Each id must fit the network's
    ``dtype`` exactly, since rows travel in it up to the module.
    """
    X = np.asarray(X)
    if X.size == 0:
        return
    whole = np.isfinite(X) & (X == np.round(X))
    if not whole.all():
        value = float(X[~whole].flat[0])
        raise ValueError(
            f"{name} must hold integer token ids (tokens=True), but it holds "
            f"{value!r}. Pass integers, e.g. {name}.astype(np.int64)."
        )
    smallest, largest = X.min(), X.max()
    if smallest < 0:
        raise ValueError(
            f"{name} holds the token id {int(smallest)}; token ids (tokens=True) "
            "must be non-negative, as nn.Embedding requires."
        )
    limit = _EXACT_INTEGERS[dtype]
    if largest >= limit:
        raise ValueError(
            f"{name} holds the token id {int(largest)}, which {dtype} does not "
            f"hold exactly (ids must be below {limit} in {dtype}). Use "
            "dtype='float64'."
        )


def check_layout(estimator, X, *, name):
    """The checks of :func:`check_tokens` for an estimator with ``tokens=True``."""
    if getattr(estimator, "tokens", False):
        check_tokens(X, name=name, dtype=estimator.dtype)
    return X


def validate_X(estimator, X):
    """``validate_data(estimator, X, reset=False)`` for a fitted estimator.

    Checks the feature names and the number of features against ``fit``,
    and returns a 2-D float array (float32 stays float32; integers, booleans
    and float16 become float64). The errors are scikit-learn's, unchanged,
    except for arrays of more than two dimensions (:func:`refuse_nd`); token
    ids are checked when the estimator has ``tokens=True``.
    """
    refuse_nd(X, name="X")
    X = validate_data(estimator, X, reset=False, dtype=FLOAT_DTYPES)
    return check_layout(estimator, X, name="X")


def validate_other(estimator, Y):
    """Check the second array of rows of a kernel (``Y`` of ``kernel(X, Y)``).

    The same conversions as :func:`validate_X`, with scikit-learn's
    ``check_array(input_name="Y")``, so that its messages say Y; then the
    number of features, and the feature names against ``fit``.

    The feature names are checked by scikit-learn's public
    ``validate_data(skip_check_array=True)``, whose messages are written for
    X whichever array they are about: a DataFrame Y given to an estimator
    fitted on an array warns "X has feature names, but ... was fitted
    without feature names"; an array Y given to one fitted on a DataFrame
    warns "X does not have valid feature names, ..."; names that differ
    raise "The feature names should match those that were passed during
    fit". They are scikit-learn's messages and are left as they are.
    """
    refuse_nd(Y, name="Y")
    checked = check_array(Y, dtype=FLOAT_DTYPES, input_name="Y", estimator=estimator)
    n_features = estimator.n_features_in_
    if checked.shape[1] != n_features:
        raise ValueError(
            f"Y has {checked.shape[1]} features, but {type(estimator).__name__} "
            f"is expecting {n_features} features as input."
        )
    # Y is now a 2-D array-like with the right number of columns, so only
    # the feature names can fail here.
    validate_data(estimator, Y, reset=False, skip_check_array=True)
    return check_layout(estimator, checked, name="Y")


def check_finite_result(result, *, what, dtype, **inputs):
    """Refuse a result that overflowed, naming the inputs; return it.

    Values that fit the network's dtype can still overflow in products of
    rows (``|x|^2`` in float32 beyond about 1.8e19): the kernel, the
    features or the outputs then hold inf or NaN. ``result`` is an array or
    a tuple of arrays; ``inputs`` are the validated arrays it came from
    (None ones are skipped).
    """
    parts = result if isinstance(result, tuple) else (result,)
    if all(_all_finite(part) for part in parts):
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


def _all_finite(array, rows=1024):
    """``np.isfinite(array).all()``, a block of rows at a time.

    A kernel written to disk (a memory map) is never read whole.
    """
    return all(
        np.isfinite(array[r0 : r0 + rows]).all() for r0 in range(0, len(array), rows)
    )
