"""Kernel normalisation: make the path kernel's scale independent of training length.

The path kernel sums ``eps_t * J_t(x) J_t(x')^T`` over the steps of training,
so it grows roughly in proportion to ``learning_rate_init * n_steps``. Multiplying
a kernel by ``c`` is the same, for ``SVC``, as multiplying ``C`` by ``c``, and
for ``KernelRidge`` as dividing ``alpha`` by ``c``: the useful range of those
parameters moves with the length of training. Dividing the kernel by a scale
taken from the kernel itself removes that dependence.

Every mode is a rescaling of rows and columns, ``K_ij * f(x_i) * f(y_j)``, so
it keeps a kernel positive semi-definite and applies as well to an explicit
feature map (``phi(x) * f(x)``).
"""

import numpy as np

NORMALIZATIONS = ("none", "mean_diagonal", "cosine")


def row_factors(mode, *, diagonal=None, scale=None, n_rows=None):
    """Per-row factors ``f`` with normalised ``K_ij = f_X[i] K_ij f_Y[j]``.

    Parameters
    ----------
    mode : {"none", "mean_diagonal", "cosine"}
        A valid mode: the callers check it.
    diagonal : ndarray of shape (n_rows,), default=None
        ``K(x, x)`` of the rows; needed for "cosine". Rows whose self kernel
        is zero (their whole row of ``K`` is then zero) keep a factor of 1.
    scale : float, default=None
        The mean training diagonal; needed for "mean_diagonal".
    n_rows : int, default=None
        Number of rows when ``diagonal`` is not given.

    Returns
    -------
    factors : ndarray of float64, shape (n_rows,)
    """
    if mode == "cosine":
        diagonal = np.asarray(diagonal, dtype=np.float64)
        safe = np.where(diagonal > 0, diagonal, 1.0)
        return 1.0 / np.sqrt(safe)
    n_rows = len(diagonal) if n_rows is None else n_rows
    if mode == "mean_diagonal":
        return np.full(n_rows, 1.0 / np.sqrt(scale) if scale > 0 else 1.0)
    return np.ones(n_rows)  # "none"


# Rows rescaled at once in place: bounds the temporaries on a kernel on disk.
_IN_PLACE_ROWS = 1024


def normalize_kernel(K, mode, *, diag_X=None, diag_Y=None, scale=None, in_place=False):
    """Normalise a kernel matrix ``K`` (n_X, n_Y).

    Parameters
    ----------
    K : ndarray of shape (n_X, n_Y)
    mode : {"none", "mean_diagonal", "cosine"}
        A valid mode (the callers check it). "none" returns ``K``;
        "mean_diagonal" returns ``K / scale``; "cosine" returns
        ``K_ij / sqrt(diag_X[i] * diag_Y[j])``.
    diag_X, diag_Y : ndarray of shape (n_X,) and (n_Y,), default=None
        Self kernels ``K(x, x)`` of the rows and columns, for "cosine".
    scale : float, default=None
        The mean of the training rows' ``K(x, x)``, for "mean_diagonal".
    in_place : bool, default=False
        Rescale ``K`` itself rather than a copy; the same operations in the
        same order either way, so the same bits.

    Returns
    -------
    K : ndarray of shape (n_X, n_Y)
        A new array unless ``mode == "none"`` or ``in_place``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_pathkernel._kernels._normalize import normalize_kernel
    >>> K = np.array([[4.0, 2.0], [2.0, 9.0]])
    >>> normalize_kernel(K, "cosine", diag_X=np.diag(K), diag_Y=np.diag(K))
    array([[1.        , 0.33333333],
           [0.33333333, 1.        ]])
    >>> float(normalize_kernel(K, "mean_diagonal", scale=6.5)[0, 0])
    0.6153...
    """
    if mode == "none":
        return K
    # One path for both: rescale a copy, or K itself, a block of rows at a
    # time (a kernel in a file is never read whole).
    target = K if in_place else K.copy()
    if mode == "mean_diagonal":
        for r0 in range(0, K.shape[0], _IN_PLACE_ROWS) if scale > 0 else ():
            target[r0 : r0 + _IN_PLACE_ROWS] /= scale
        return target
    f_X = row_factors(mode, diagonal=diag_X, scale=scale, n_rows=K.shape[0])
    f_Y = row_factors(mode, diagonal=diag_Y, scale=scale, n_rows=K.shape[1])
    for r0 in range(0, K.shape[0], _IN_PLACE_ROWS):
        block = target[r0 : r0 + _IN_PLACE_ROWS]
        block *= f_X[r0 : r0 + _IN_PLACE_ROWS, None]
        block *= f_Y[None, :]
    return target
