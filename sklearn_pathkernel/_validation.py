"""Input checks shared by the estimators and the functional API."""

import numpy as np
import torch
from sklearn.utils.validation import check_array

DTYPES = {"float32": torch.float32, "float64": torch.float64}


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
