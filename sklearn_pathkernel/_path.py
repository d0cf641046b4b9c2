"""Tangent and path kernels, blocked over rows under a memory budget."""

import copy
import math

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn import get_config

from ._network import forward
from ._tangent import select_engine
from ._validation import check_kernel_input, resolve_device, to_tensor


def tangent_kernel(
    module,
    parameters,
    X,
    Y=None,
    *,
    trace=True,
    engine="auto",
    working_memory=None,
    device=None,
    n_jobs=None,
    verbose=0,
):
    """Tangent kernel ``K_w(X, Y) = J_w(X) J_w(Y)^T`` at one point ``w``.

    Parameters
    ----------
    module : torch.nn.Module
        Maps (n_samples, n_features) to (n_samples, n_outputs).
    parameters : dict of str to torch.Tensor or None
        Values for (some of) the module's trainable parameters, as for
        ``torch.func.functional_call``; None uses the module's own.
        The kernel is taken with respect to exactly these tensors.
    X : array-like or torch.Tensor of shape (n_X, n_features)
    Y : array-like or torch.Tensor of shape (n_Y, n_features), default=None
        None means ``Y = X``; then only one triangle of blocks is computed
        and the result is exactly symmetric.
    trace : bool, default=True
        True sums over outputs, giving shape (n_X, n_Y): for a single output
        this is the kernel itself, for several it is the trace of the
        ``O x O`` output kernel. False returns the full (n_X, n_Y, O, O).
    engine : {"auto", "structured", "jacobian", "ntk_vp"}, default="auto"
        How the Jacobian work is done. "structured" uses the outer-product
        form of ``nn.Linear`` layers (``nn.Sequential`` of Linear layers and
        elementwise activations only) and never builds a Jacobian;
        "jacobian" contracts per-example Jacobians from ``torch.func`` (any
        module); "ntk_vp" uses Jacobian-vector products (any module, least
        memory, slowest). "auto" picks "structured" when the module
        qualifies, else "jacobian".
    working_memory : float, default=None
        Budget in MiB for one block of rows; scikit-learn's
        ``working_memory`` setting (1024 by default) when None. The result
        itself, ``n_X * n_Y`` float64 numbers, comes on top.
    device : str or torch.device, default=None
        Where to compute; the module's device when None.
    n_jobs : int, default=None
        Row blocks run as joblib tasks (threads unless a
        ``joblib.parallel_config`` says otherwise). None runs them one after
        the other, each using all of torch's threads, which is usually
        fastest on one machine; more jobs help on a cluster backend.
    verbose : int, default=0
        Say which engine runs and how the work is blocked.

    Returns
    -------
    K : ndarray of float64, shape (n_X, n_Y) or (n_X, n_Y, O, O)

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel import tangent_kernel
    >>> net = torch.nn.Linear(3, 1)
    >>> K = tangent_kernel(net, None, torch.eye(3))
    >>> K.round(6)  # a linear model's tangent kernel is X X^T + 1
    array([[2., 1., 1.],
           [1., 2., 1.],
           [1., 1., 2.]])
    """
    if parameters is None:
        parameters = {n: p.detach() for n, p in module.named_parameters()}
    return weighted_kernel_sum(
        module,
        [(1.0, lambda dev: {n: p.to(dev) for n, p in parameters.items()})],
        X,
        Y,
        parameter_names=list(parameters),
        trace=trace,
        engine=engine,
        working_memory=working_memory,
        device=device,
        n_jobs=n_jobs,
        verbose=verbose,
    )


def path_kernel(
    module,
    trajectory,
    X,
    Y=None,
    *,
    trace=True,
    engine="auto",
    working_memory=None,
    device=None,
    n_jobs=None,
    verbose=0,
):
    """Path kernel ``K_path(X, Y) = sum_k weights[k] * K_{w_k}(X, Y)``.

    The sum runs over the checkpoints of ``trajectory`` (a left Riemann sum
    of the paper's path integral, Definition 2). It is a positive sum of Gram
    matrices, hence symmetric positive semi-definite for ``Y = None``.

    Parameters
    ----------
    module : torch.nn.Module
        The module the trajectory was recorded on (e.g. ``est.module_``).
    trajectory : Trajectory
        The recorded path (e.g. ``est.trajectory_``).
    X : array-like or torch.Tensor of shape (n_X, n_features)
    Y : array-like or torch.Tensor of shape (n_Y, n_features), default=None
        None means ``Y = X``.
    trace : bool, default=True
        Sum over outputs (shape (n_X, n_Y)), or keep the full
        (n_X, n_Y, O, O) output kernel.
    engine : {"auto", "structured", "jacobian", "ntk_vp"}, default="auto"
        See :func:`tangent_kernel`.
    working_memory : float, default=None
        Budget in MiB for one block of rows; see :func:`tangent_kernel`.
    device : str or torch.device, default=None
        Where to compute; the module's device when None.
    n_jobs : int, default=None
        Row blocks run as joblib tasks; see :func:`tangent_kernel`.
    verbose : int, default=0
        Say which engine runs and how the work is blocked.

    Returns
    -------
    K : ndarray of float64, shape (n_X, n_Y) or (n_X, n_Y, O, O)

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_pathkernel import PathKernelRegressor, path_kernel
    >>> X, y = load_diabetes(return_X_y=True)
    >>> X, y = scale(X), scale(y)
    >>> est = PathKernelRegressor(max_iter=20, random_state=0).fit(X, y)
    >>> K = path_kernel(est.module_, est.trajectory_, X[:5])
    >>> K.shape, bool((K == K.T).all())
    ((5, 5), True)
    """
    points = [
        (float(weight), lambda dev, k=k: trajectory.parameters(k, device=dev))
        for k, weight in enumerate(trajectory.weights)
    ]
    return weighted_kernel_sum(
        module,
        points,
        X,
        Y,
        parameter_names=trajectory.parameter_names,
        trace=trace,
        engine=engine,
        working_memory=working_memory,
        device=device,
        n_jobs=n_jobs,
        verbose=verbose,
    )


def path_kernel_diagonal(
    module,
    trajectory,
    X,
    *,
    engine="auto",
    working_memory=None,
    device=None,
    n_jobs=None,
):
    """``K_path(x, x)`` for every row of ``X``, without the ``n x n`` kernel.

    Rows are taken in tiles of at most ``_DIAGONAL_TILE``; each tile's
    symmetric path kernel is computed and its diagonal kept, so the cost is
    about ``n * _DIAGONAL_TILE`` pairs instead of ``n * n``.

    Parameters
    ----------
    module, trajectory : as for :func:`path_kernel`
    X : array-like or torch.Tensor of shape (n_X, n_features)
    engine, working_memory, device, n_jobs : as for :func:`path_kernel`

    Returns
    -------
    diagonal : ndarray of float64, shape (n_X,)

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_pathkernel import PathKernelRegressor, path_kernel
    >>> from sklearn_pathkernel._path import path_kernel_diagonal
    >>> X, y = load_diabetes(return_X_y=True)
    >>> X, y = scale(X), scale(y)
    >>> est = PathKernelRegressor(max_iter=20, random_state=0).fit(X, y)
    >>> d = path_kernel_diagonal(est.module_, est.trajectory_, X[:5])
    >>> K = path_kernel(est.module_, est.trajectory_, X[:5])
    >>> bool(np.allclose(d, np.diag(K)))
    True
    """
    X = check_kernel_input(X, name="X")
    diagonal = np.empty(X.shape[0], dtype=np.float64)
    for r0 in range(0, X.shape[0], _DIAGONAL_TILE):
        r1 = min(r0 + _DIAGONAL_TILE, X.shape[0])
        tile = path_kernel(
            module,
            trajectory,
            X[r0:r1],
            engine=engine,
            working_memory=working_memory,
            device=device,
            n_jobs=n_jobs,
        )
        diagonal[r0:r1] = np.diag(tile)
    return diagonal


# Rows per tile of path_kernel_diagonal: small enough that the wasted
# off-diagonal work stays a small multiple of n, large enough to keep the
# per-call overhead low.
_DIAGONAL_TILE = 128


def weighted_kernel_sum(
    module,
    points,
    X,
    Y=None,
    *,
    parameter_names,
    trace=True,
    engine="auto",
    working_memory=None,
    device=None,
    n_jobs=None,
    verbose=0,
):
    """``sum_k weight_k * J_k(X) J_k(Y)^T`` over ``points``, in row blocks.

    ``points`` is a sequence of ``(weight, load)`` where ``load(device)``
    returns the parameter mapping of that point. Rows of ``X`` are cut into
    blocks sized from ``working_memory``; each block's strip of the result is
    an independent task (run through joblib with ``n_jobs``), in which every
    point's engine state for the block is built once and contracted against
    the column blocks, accumulating in float64 on the device. For ``Y=None``
    only blocks on or above the diagonal are computed, and each diagonal
    block row tile by row tile against the columns from that tile on, so
    about one triangle of products is done.
    """
    symmetric = Y is None
    X = check_kernel_input(X, name="X")
    Y = X if symmetric else check_kernel_input(Y, name="Y", n_features=X.shape[1])
    reference = next(iter(module.parameters()), None)
    dtype = reference.dtype if reference is not None else torch.float32
    device = (
        resolve_device(device)
        if device is not None
        else (reference.device if reference is not None else torch.device("cpu"))
    )
    X_t = to_tensor(X, dtype=dtype, device=device, name="X")
    Y_t = X_t if symmetric else to_tensor(Y, dtype=dtype, device=device, name="Y")
    n, m = X_t.shape[0], Y_t.shape[0]
    if reference is not None and reference.device != device:
        module = copy.deepcopy(module).to(device)  # never move the caller's module
    bound = select_engine(engine, module, parameter_names)

    with torch.no_grad():
        n_outputs = forward(module, X_t[:1]).shape[1]
    extra = () if trace else (n_outputs, n_outputs)
    K = np.zeros((n, m, *extra), dtype=np.float64)
    if not points:
        return K

    itemsize = torch.finfo(dtype).bits // 8
    block = rows_within_budget(
        working_memory,
        # Per row: two engine states, and across the m columns the float64
        # strip, the cached static Gram and up to three temporaries of a
        # contraction (input Gram, signal Gram, their product).
        2 * bound.bytes_per_row(n_outputs, itemsize)
        + m * (8 + 4 * itemsize) * math.prod(extra),
        max(n, m),
    )
    row_blocks = [(r0, min(r0 + block, n)) for r0 in range(0, n, block)]
    if verbose > 0:
        print(
            f"path kernel: engine {bound.name!r}, {n} x {m} over {len(points)} "
            f"checkpoint(s), {len(row_blocks)} row block(s) of up to {block} rows"
        )
    task = delayed(_strip)
    strips = Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator")(
        task(bound, points, X_t, Y_t, r0, r1, block, symmetric, trace, extra, device)
        for r0, r1 in row_blocks
    )
    for (r0, r1), strip in zip(row_blocks, strips):
        K[r0:r1, (r0 if symmetric else 0) :] = strip
    if symmetric:
        _mirror_upper(K, _tile_bounds(row_blocks))
    return K


# Diagonal blocks are cut into this many row tiles, each contracted against
# the columns from its own start on: about (1 + 1/_DIAGONAL_TILES) / 2 of the
# block is computed instead of all of it.
_DIAGONAL_TILES = 8
_MIN_TILE = 64


def _strip(bound, points, X_t, Y_t, r0, r1, block, symmetric, trace, extra, device):
    """Rows ``r0:r1`` of the kernel (from column ``r0`` on when symmetric)."""
    m = Y_t.shape[0]
    c_start = r0 if symmetric else 0
    strip = torch.zeros(
        (r1 - r0, m - c_start, *extra), dtype=torch.float64, device=device
    )
    pairs = []  # (row tile, column block or tile): what to contract
    for c0 in range(c_start, m, block):
        c1 = min(c0 + block, m)
        if symmetric and c0 == r0:
            # Each row tile against the block's columns from that tile on:
            # one triangle of tiles, in as few (and as large) products as can be.
            pairs += [((a0, a1), (a0, r1)) for a0, a1 in _tiles(r0, r1)]
        else:
            pairs.append(((r0, r1), (c0, c1)))
    statics = [bound.static(X_t[a0:a1], Y_t[b0:b1]) for (a0, a1), (b0, b1) in pairs]
    with torch.no_grad():
        for weight, load in points:
            parameters = load(device)
            state_x = bound.state(parameters, X_t[r0:r1])
            states_y = {}
            for ((a0, a1), (b0, b1)), static in zip(pairs, statics):
                diagonal = symmetric and b0 < r1
                if diagonal:
                    part_y = bound.take(state_x, b0 - r0, b1 - r0)
                else:
                    if b0 not in states_y:
                        states_y = {b0: bound.state(parameters, Y_t[b0:b1])}
                    part_y = states_y[b0]
                part = bound.contract(
                    bound.take(state_x, a0 - r0, a1 - r0), part_y, trace, static
                )
                strip[a0 - r0 : a1 - r0, b0 - c_start : b1 - c_start].add_(
                    part, alpha=weight
                )
    return strip.cpu().numpy()


def _tiles(start, stop):
    size = max(_MIN_TILE, -(-(stop - start) // _DIAGONAL_TILES))
    return [(t, min(t + size, stop)) for t in range(start, stop, size)]


def _tile_bounds(row_blocks):
    return [tile for r0, r1 in row_blocks for tile in _tiles(r0, r1)]


def rows_within_budget(working_memory, bytes_per_row, n_rows):
    """How many rows of ``bytes_per_row`` fit ``working_memory`` MiB (at least 1).

    None means scikit-learn's ``working_memory`` setting.
    """
    if working_memory is None:
        working_memory = get_config()["working_memory"]
    rows = int(working_memory * 2**20 // bytes_per_row)
    return max(1, min(rows, n_rows))


def _mirror_upper(K, tiles):
    """Fill the lower triangle from the upper one, tile row by tile row.

    Diagonal tiles come from ``S S^T`` products whose rounding need not be
    symmetric; averaging with the transpose makes ``K`` exactly symmetric.
    """
    swap = (1, 0) if K.ndim == 2 else (1, 0, 3, 2)
    for t0, t1 in tiles:
        diagonal = K[t0:t1, t0:t1]
        K[t0:t1, t0:t1] = 0.5 * (diagonal + diagonal.transpose(swap))
        K[t1:, t0:t1] = K[t0:t1, t1:].transpose(swap)
