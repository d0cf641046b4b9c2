"""Tangent and path kernels, blocked over rows under a memory budget."""

import copy
import math
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
from joblib import Parallel, delayed, effective_n_jobs
from sklearn import get_config
from threadpoolctl import threadpool_limits

from ._memory import check_result_fits
from ._network import forward
from ._progress import progress_bar
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
        itself, ``n_X * n_Y`` float64 numbers, comes on top; one that cannot
        fit in the available memory raises ``MemoryError`` before any work.
        Blocks hold whole 512-row tiles (at least one), so the result is
        bit-identical whatever the budget.
    device : str or torch.device, default=None
        Where to compute; the module's device when None.
    n_jobs : int, default=None
        Row blocks run as joblib tasks (threads unless a
        ``joblib.parallel_config`` says otherwise). None runs them one after
        the other, each using all of torch's threads, which is usually
        fastest on one machine; more jobs help on a cluster backend.
        Concurrent tasks share torch's threads (each gets
        ``torch.get_num_threads() // n_jobs``), so the machine is never
        oversubscribed.
    verbose : int, default=0
        Say which engine runs and how the work is blocked, and show a
        progress bar over checkpoints and row blocks.

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
        Say which engine runs and how the work is blocked, and show a
        progress bar over checkpoints and row blocks.

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

    Engines with a row-wise diagonal (structured, jacobian) need one state
    per row and checkpoint and no product between rows: about the cost of
    training for one epoch per checkpoint. The NTK-vector-product engine has
    none; it computes the symmetric kernel of ``_DIAGONAL_TILE`` rows at a
    time and keeps its diagonal.

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
    reference = next(iter(module.parameters()), None)
    bound = select_engine(engine, module, trajectory.parameter_names)
    if reference is None or not hasattr(bound, "diagonal"):
        return _diagonal_of_tiles(
            module, trajectory, X, engine, working_memory, device, n_jobs
        )
    device = reference.device if device is None else resolve_device(device)
    if reference.device != device:
        module = copy.deepcopy(module).to(device)  # never move the caller's module
        bound = select_engine(engine, module, trajectory.parameter_names)
    X_t = to_tensor(X, dtype=reference.dtype, device=device, name="X")
    itemsize = X_t.element_size()
    with torch.no_grad():
        n_outputs = forward(module, X_t[:1]).shape[1]
        tile = tile_within_budget(
            working_memory, bound.bytes_per_row(n_outputs, itemsize)
        )
        diagonal = torch.zeros(X_t.shape[0], dtype=torch.float64, device=device)
        for k, weight in enumerate(trajectory.weights):
            parameters = trajectory.parameters(k, device=device)
            for r0 in range(0, X_t.shape[0], tile):
                rows = X_t[r0 : r0 + tile]
                part = bound.diagonal(bound.state(parameters, rows), rows)
                diagonal[r0 : r0 + tile] += float(weight) * part.double()
    return diagonal.cpu().numpy()


def _diagonal_of_tiles(module, trajectory, X, engine, working_memory, device, n_jobs):
    """The diagonal of symmetric kernels of ``_DIAGONAL_TILE`` rows at a time."""
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


# Rows per tile of the NTK-vector-product diagonal: small enough that the
# wasted off-diagonal work stays a small multiple of n, large enough to keep
# the per-call overhead low.
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
    returns the parameter mapping of that point. The work is cut on a fixed
    grid (``_grid``): row tiles of X against column tiles of Y, the same
    for every budget. ``working_memory`` only decides how many row tiles a
    block holds; each block's strip of the result is an independent task
    (run through joblib with ``n_jobs``), in which every point's states are
    built tile by tile and contracted tile against tile, accumulating in
    float64 on the device. For ``Y=None`` only tiles on or above the
    diagonal are computed and the rest is mirrored, so the result is exactly
    symmetric and bit-identical across budgets and ``n_jobs``.
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
    check_result_fits(
        (n, m, *extra),
        what="The path kernel",
        remedy=(
            "Compute it in row blocks, e.g. kernel(X[i:j], Y), using each "
            "block before the next, or use PathKernelFeatures(n_components=...) "
            "for features whose size grows linearly with the number of rows."
            + ("" if trace else " trace=True sums over outputs: O*O times less.")
        ),
    )
    K = np.zeros((n, m, *extra), dtype=np.float64)
    if not points:
        return K

    itemsize = torch.finfo(dtype).bits // 8
    state_bytes = bound.bytes_per_row(n_outputs, itemsize)
    tile, chunk = _grid(state_bytes)
    numbers = math.prod(extra)
    block = rows_within_budget(
        working_memory,
        # Per row: its engine state, and across the m columns the float64
        # strip and the cached static Gram ...
        state_bytes + m * (8 + itemsize) * numbers,
        max(n, m),
        # ... on top of one column chunk's state and a contraction's
        # temporaries (input Gram, signal Gram, their product).
        fixed_bytes=chunk * state_bytes + 3 * tile * chunk * itemsize * numbers,
        multiple_of=tile,
    )
    row_blocks = [(r0, min(r0 + block, n)) for r0 in range(0, n, block)]
    progress = progress_bar(
        verbose,
        total=len(row_blocks) * len(points),
        desc=f"path kernel ({bound.name})",
        unit="checkpoint-block",
    )
    if verbose > 0:
        progress.write(
            f"path kernel: engine {bound.name!r}, {n} x {m} over {len(points)} "
            f"checkpoint(s), {len(row_blocks)} row block(s) of up to {block} rows "
            f"in tiles of {tile} x {chunk}"
        )
    # In-task progress only when the tasks run here, one after the other.
    tick = progress.update if n_jobs in (None, 1) else None
    threads = _threads_per_task(n_jobs)
    work = _Work(
        bound, points, X_t, Y_t, tile, chunk, symmetric, trace, extra, device, tick
    )
    task = delayed(_strip)
    with limit_threads(threads), progress:
        strips = Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator")(
            task(work, r0, r1) for r0, r1 in row_blocks
        )
        for (r0, r1), strip in zip(row_blocks, strips):
            K[r0:r1, _first_column(r0, chunk, symmetric) :] = strip
            if tick is None:
                progress.update(len(points))
    if symmetric:
        _mirror_upper(K, tile)
    return K


# Work is cut on a fixed grid, so that every kernel entry comes out of matrix
# products of the same shapes whatever working_memory or n_jobs are: BLAS
# rounding depends on operand shapes (MKL's float64 GEMM gives other bits for
# the same entry when the number of columns changes), and a fixed grid is
# what makes results bit-identical across block sizes. Row tiles hold
# _TILE_ROWS rows and column chunks _CHUNK_COLUMNS columns; both shrink, by
# powers of two, only for networks whose per-row state is large: a property
# of the network and engine, never of the budget. Square 512-row tiles keep
# the products large and let a symmetric kernel skip all but
# (1 + 512/n) / 2 of them (benchmarks/bench_grid.py).
_TILE_ROWS = 512
_CHUNK_COLUMNS = 512
_CHUNK_STATE_BYTES = 128 * 2**20


def _grid(state_bytes):
    """``(tile, chunk)``: rows per row tile and columns per column chunk."""
    chunk = _CHUNK_COLUMNS
    while chunk > 1 and chunk * state_bytes > _CHUNK_STATE_BYTES:
        chunk //= 2
    return min(_TILE_ROWS, chunk), chunk


def _first_column(r0, chunk, symmetric):
    """First column a row block computes: its chunk's start when symmetric."""
    return r0 // chunk * chunk if symmetric else 0


class _Work(NamedTuple):
    """What every strip of one kernel shares."""

    bound: object  # the engine, bound to the module
    points: list  # (weight, load) per checkpoint
    X_t: torch.Tensor
    Y_t: torch.Tensor
    tile: int
    chunk: int
    symmetric: bool
    trace: bool
    extra: tuple  # () traced, (O, O) full
    device: torch.device
    tick: object  # progress callback per checkpoint, or None


@contextmanager
def limit_threads(threads):
    """Let torch and the BLAS use ``threads`` threads while the block runs.

    Used around parallel kernel blocks and by the command line's --threads.

    Set process-wide (torch keeps one thread count that every new worker
    thread starts from) and restored afterwards; None changes nothing.
    Process-based joblib backends already give each worker its share.
    """
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before)


def _strip(work, r0, r1):
    """Rows ``r0:r1`` of the kernel, from column ``_first_column`` on.

    Row states are built one row tile at a time and column states one column
    chunk at a time, each on the fixed grid; every product is one row tile
    against one column chunk. When symmetric, a row tile meets only the
    chunks from the one holding its first row on: entries below the diagonal
    inside that chunk are computed too, and overwritten by the mirror.
    """
    bound, points, X_t, Y_t, tile, chunk, symmetric, trace, extra, device, tick = work
    m = Y_t.shape[0]
    c_start = _first_column(r0, chunk, symmetric)
    strip = torch.zeros(
        (r1 - r0, m - c_start, *extra), dtype=torch.float64, device=device
    )
    row_tiles = [(a0, min(a0 + tile, r1)) for a0 in range(r0, r1, tile)]
    chunks = [(b0, min(b0 + chunk, m)) for b0 in range(c_start, m, chunk)]
    pairs = {  # column chunk -> the row tiles it meets
        (b0, b1): [
            (a0, a1)
            for a0, a1 in row_tiles
            if _first_column(a0, chunk, symmetric) <= b0
        ]
        for b0, b1 in chunks
    }
    statics = {
        (a, b): bound.static(X_t[a[0] : a[1]], Y_t[b[0] : b[1]])
        for b, tiles in pairs.items()
        for a in tiles
    }
    with torch.no_grad():
        for weight, load in points:
            parameters = load(device)
            states_x = {a: bound.state(parameters, X_t[a[0] : a[1]]) for a in row_tiles}
            for (b0, b1), tiles in pairs.items():
                # A chunk that is one of this block's row tiles (Y is X, and
                # the grid's tiles and chunks coincide) has its state already:
                # built from the same rows in the same shape, so the same bits.
                state_y = states_x.get((b0, b1)) if symmetric else None
                if state_y is None:
                    state_y = bound.state(parameters, Y_t[b0:b1])
                for a0, a1 in tiles:
                    part = bound.contract(
                        states_x[a0, a1], state_y, trace, statics[(a0, a1), (b0, b1)]
                    )
                    strip[a0 - r0 : a1 - r0, b0 - c_start : b1 - c_start].add_(
                        part, alpha=weight
                    )
            if tick is not None:
                tick(1)
    return strip.cpu().numpy()


def _threads_per_task(n_jobs):
    """Threads each of ``n_jobs`` concurrent tasks may use, or None for all.

    torch (OpenMP, MKL) would otherwise give every task all the cores, and
    ``n_jobs`` tasks would run ``n_jobs`` times as many threads as there are
    cores. Splitting torch's thread count between the workers keeps the total
    at what torch was set to use (``torch.set_num_threads``).
    """
    workers = effective_n_jobs(n_jobs)
    if workers <= 1:
        return None
    return max(1, torch.get_num_threads() // workers)


def rows_within_budget(
    working_memory, bytes_per_row, n_rows, *, fixed_bytes=0, multiple_of=1
):
    """How many rows of ``bytes_per_row`` fit ``working_memory`` MiB.

    ``fixed_bytes`` are spent whatever the number of rows. The answer is a
    multiple of ``multiple_of`` (the work's tile) and at least one tile, even
    when that exceeds the budget; None means scikit-learn's
    ``working_memory`` setting.
    """
    if working_memory is None:
        working_memory = get_config()["working_memory"]
    rows = int(max(0.0, working_memory * 2**20 - fixed_bytes) // bytes_per_row)
    rows = max(multiple_of, rows // multiple_of * multiple_of)
    return max(1, min(rows, n_rows))


def tile_within_budget(working_memory, bytes_per_row):
    """Rows per block for row-by-row work: ``_TILE_ROWS``, or a power of two fewer.

    The block fixes the shapes of every product, hence the rounding; taking
    it from this short list, not straight from the budget, keeps results
    bit-identical across every budget that holds a full tile.

    Examples
    --------
    >>> from sklearn_pathkernel._path import tile_within_budget
    >>> tile_within_budget(None, 1000), tile_within_budget(1, 2**20 // 100)
    (512, 64)
    """
    rows = rows_within_budget(working_memory, bytes_per_row, _TILE_ROWS)
    return 1 << (rows.bit_length() - 1)


def _mirror_upper(K, tile):
    """Copy the upper triangle onto the lower one, one row tile at a time.

    Every entry on or above the diagonal was computed exactly once; the
    lower triangle is its transpose, so ``K`` is exactly symmetric.
    """
    n = K.shape[0]
    swap = (1, 0) if K.ndim == 2 else (1, 0, 3, 2)
    for t0 in range(0, n, tile):
        t1 = min(t0 + tile, n)
        diagonal = K[t0:t1, t0:t1]
        lower = np.tril_indices(t1 - t0, -1)
        diagonal[lower] = diagonal.transpose(swap)[lower]
        K[t1:, t0:t1] = K[t0:t1, t1:].transpose(swap)
