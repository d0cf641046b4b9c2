"""Rows for the functional kernel API: 2-D tables, images, sequences, tokens."""

import torch
from torch import nn

from .._model._validation import check_kernel_input, to_tensor


def kernel_rows(X, *, name, module, dtype, device, like=None, like_name="X"):
    """``X`` as a tensor of rows ``(n, *input_shape)`` on ``device``.

    A 2-D array-like or tensor goes through ``check_kernel_input`` and
    ``to_tensor`` (a float table in the network's dtype). A tensor
    with more axes (images ``(n, C, H, W)``, sequences ``(n, L, h)``) is taken
    as it is, in the network's dtype; an integer tensor stays integer when
    ``module`` holds an ``nn.Embedding`` (token ids), and is converted like
    any other number otherwise.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n, *input_shape)
    name : str
        How errors name the argument.
    module : torch.nn.Module
    dtype : torch.dtype
        The network's dtype.
    device : torch.device
    like : torch.Tensor, default=None
        Rows whose per-row shape ``X`` must share (``X`` for ``Y``).
    like_name : str, default="X"
        How errors name ``like``.

    Returns
    -------
    rows : torch.Tensor

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._kernels._rows import kernel_rows
    >>> emb = torch.nn.Embedding(10, 3)
    >>> tokens = torch.tensor([[1, 2], [3, 3]])
    >>> kernel_rows(tokens, name="X", module=emb, dtype=torch.float32,
    ...             device=torch.device("cpu")).dtype
    torch.int64
    >>> images = torch.zeros(4, 1, 8, 8, dtype=torch.float64)
    >>> kernel_rows(images, name="X", module=emb, dtype=torch.float32,
    ...             device=torch.device("cpu")).shape
    torch.Size([4, 1, 8, 8])
    """
    tokens = (
        isinstance(X, torch.Tensor)
        and not X.is_floating_point()
        and X.dtype != torch.bool
        and any(isinstance(m, nn.Embedding) for m in module.modules())
    )
    if isinstance(X, torch.Tensor) and (X.ndim > 2 or tokens):
        if X.shape[0] == 0:
            raise ValueError(
                f"{name} is empty: it has 0 rows (shape={tuple(X.shape)}); the "
                "kernel needs at least one."
            )
        if like is not None and X.shape[1:] != like.shape[1:]:
            raise ValueError(
                f"{name} has rows of shape {tuple(X.shape[1:])}, but {like_name} "
                f"has rows of shape {tuple(like.shape[1:])}."
            )
        if tokens:
            return X.detach().to(device=device)
        return to_tensor(X, dtype=dtype, device=device, name=name)
    n_features = None
    if like is not None:
        if like.ndim != 2:
            raise ValueError(
                f"{name} must have rows of shape {tuple(like.shape[1:])}, like "
                f"{like_name}; "
                f"got {type(X).__name__} of shape {tuple(getattr(X, 'shape', ()))}."
            )
        n_features = like.shape[1]
    X = check_kernel_input(X, name=name, n_features=n_features, like_name=like_name)
    return to_tensor(X, dtype=dtype, device=device, name=name)


def output_width(module, rows, name="X"):
    """``O``, from the module applied to the first row; a clear error if it fails."""
    try:
        out = module(rows[:1])
    except Exception as exc:  # the user's module: report, don't guess
        raise ValueError(
            f"The 'module' failed on {name} rows of shape {tuple(rows.shape[1:])}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return 1 if out.ndim == 1 else out.reshape(out.shape[0], -1).shape[1]
