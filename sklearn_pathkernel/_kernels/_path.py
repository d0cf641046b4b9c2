"""Tangent and path kernels, blocked over rows under a memory budget."""

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch

from .._compute._blocking import (
    grid,
    halve_on_device_oom,
    rows_within_budget,
    strip_memory,
    tile_within_budget,
)
from .._compute._progress import progress_bar
from .._compute._result import fingerprint_of, open_result
from .._compute._stacks import (
    add_weighted,
    consecutive_groups,
    stack_mappings,
    stack_size,
    stacked_call,
    weighted_sum,
)
from .._compute._tasks import Shared, block_parts, compact, row_blocks, to_device
from .._compute._transfer import IN_FLIGHT, StripWriter
from .._model._network import in_evaluation_mode, placement
from ..engines import select_engine
from ._rows import kernel_rows, output_width


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
    out=None,
    dtype=np.float64,
):
    """Tangent kernel ``K_w(X, Y) = J_w(X) J_w(Y)^T`` at one point ``w``.

    Parameters
    ----------
    module : torch.nn.Module
        Maps ``(n_samples, *input_shape)`` to ``(n_samples, n_outputs)``.
    parameters : dict of str to torch.Tensor or None
        Values for (some of) the module's trainable parameters, as for
        ``torch.func.functional_call``; None uses the module's own.
        The kernel is taken with respect to exactly these tensors.
    X : array-like or torch.Tensor of shape (n_X, n_features)
        Or a tensor of shape ``(n_X, *input_shape)`` (images, sequences); an
        integer tensor is kept as token ids when the module holds an
        ``nn.Embedding``.
    Y : array-like or torch.Tensor of shape (n_Y, n_features), default=None
        Rows shaped like those of X. None means ``Y = X``; then only one
        triangle of blocks is computed and the result is exactly symmetric.
    trace : bool, default=True
        True sums over outputs, giving shape (n_X, n_Y): for a single output
        this is the kernel itself, for several it is the trace of the
        ``O x O`` output kernel. False returns the full (n_X, n_Y, O, O).
    engine : {"auto", "structured", "hooks", "jacobian", "ntk_vp"}, default="auto"
        How the Jacobian work is done. "structured" uses the outer-product
        form of ``nn.Linear`` layers (``nn.Sequential`` of Linear layers and
        elementwise activations only) and never builds a Jacobian; "hooks"
        applies per-layer rules (Linear at any positions, Conv1d/2d,
        Embedding, LayerNorm, GroupNorm, eval-mode BatchNorm, attention) to
        the inputs and output gradients its forward hooks keep, on any
        module graph (docs/design.md, section 7.6); "jacobian" contracts
        per-example Jacobians from ``torch.func`` (any module); "ntk_vp"
        uses Jacobian-vector products (any module, least memory, slowest).
        "auto" picks "structured" when the module qualifies, else "hooks"
        when every parametrised layer has a rule, else "jacobian".
    working_memory : float, default=None
        Budget in MiB for one block of rows; scikit-learn's
        ``working_memory`` setting (1024 by default) when None. The result
        itself, ``n_X * n_Y`` float64 numbers, comes on top; one that cannot
        fit in the available memory raises ``MemoryError`` before any work.
        Blocks hold whole tiles of a fixed grid (512 rows, fewer only for
        networks with a large per-row state; docs/design.md, section 8), so
        the result is bit-identical whatever the budget.
    device : str or torch.device, default=None
        Where to compute; the module's device when None.
    n_jobs : int, default=None
        Each block of rows and checkpoint is a joblib task (threads unless
        a ``joblib.parallel_config`` says otherwise, e.g. dask on a
        cluster; the result is the same bits). None runs them one after
        the other, each using all of torch's threads, which is usually
        fastest on one machine; more jobs help on a cluster backend.
        Concurrent tasks share torch's threads (each gets
        ``torch.get_num_threads() // n_jobs``), so the machine is never
        oversubscribed.
    verbose : int, default=0
        Say which engine runs and how the work is blocked, and show a
        progress bar over checkpoints and row blocks.
    out : str, os.PathLike or ndarray, default=None
        Where to write the kernel. None: a new array in memory. A path: a
        ``.npy`` file written strip by strip through a memory map, for
        kernels larger than memory; a sidecar ``<out>.progress.json``
        records the finished rows and their checksums, so that the same
        call after a crash or Ctrl-C computes only the missing ones (what no
        longer matches is computed again, with a warning; the sidecar is
        removed once the kernel is complete). One call writes a file at a
        time: another call on the same path waits up to 60 s for its lock
        (``<out>.lock``), then raises ``TimeoutError`` naming the holder's
        pid and host. An array of the result's shape and ``dtype``
        (e.g. a ``numpy.memmap``): filled in place. Memory stays within
        ``working_memory`` plus one strip either way.
    dtype : {numpy.float64, numpy.float32}, default=numpy.float64
        Of the result: float32 halves its size (strips are still summed in
        float64 and rounded once).

    Returns
    -------
    K : ndarray or numpy.memmap, shape (n_X, n_Y) or (n_X, n_Y, O, O)
        ``out`` itself when it is an array, the opened ``.npy`` file when
        it is a path.

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
        [(1.0, lambda: parameters, lambda: None)],
        X,
        Y,
        parameter_names=list(parameters),
        trace=trace,
        engine=engine,
        working_memory=working_memory,
        device=device,
        n_jobs=n_jobs,
        verbose=verbose,
        out=out,
        dtype=dtype,
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
    out=None,
    dtype=np.float64,
):
    """Path kernel ``K_path(X, Y) = sum_k weight_k * K_{w_k}(X, Y)``.

    The sum runs over ``trajectory.kernel_nodes()``: the quadrature of the
    paper's path integral (Definition 2) that the trajectory's rule gives,
    approximating the every-step sum ``sum_t p_t K_{w_t}`` (``p_t`` the
    effective step size: ``eps_t`` for plain gradient descent, more with
    momentum). A path trained with Adam takes each term in the metric
    ``trajectory.kernel_metric_at(step)`` (docs/design.md, section 12). It
    is a positive sum of Gram matrices, hence symmetric positive
    semi-definite for ``Y = None``.

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
    engine : {"auto", "structured", "hooks", "jacobian", "ntk_vp"}, default="auto"
        See :func:`tangent_kernel`.
    working_memory : float, default=None
        Budget in MiB for one block of rows; see :func:`tangent_kernel`.
    device : str or torch.device, default=None
        Where to compute; the module's device when None.
    n_jobs : int, default=None
        Blocks of rows and checkpoints run as joblib tasks; see
        :func:`tangent_kernel`.
    verbose : int, default=0
        Say which engine runs and how the work is blocked, and show a
        progress bar over checkpoints and row blocks.
    out : str, os.PathLike or ndarray, default=None
        Where to write the kernel, in memory or resumably on disk; see
        :func:`tangent_kernel`.
    dtype : {numpy.float64, numpy.float32}, default=numpy.float64
        Of the result.

    Returns
    -------
    K : ndarray or numpy.memmap, shape (n_X, n_Y) or (n_X, n_Y, O, O)

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
    points = kernel_points(trajectory)
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
        out=out,
        dtype=dtype,
    )


def kernel_points(trajectory):
    """``(weight, load parameters, load metric)`` of each kernel node."""
    return [
        (
            node.weight,
            lambda t=node.step: trajectory.parameters_at(t),
            lambda t=node.step: trajectory.kernel_metric_at(t),
        )
        for node in trajectory.kernel_nodes()
    ]


def path_engine(engine, module, trajectory, *, example):
    """``select_engine`` for the nodes of ``trajectory``.

    In a metric when the solver preconditions its steps (Adam): then only
    engines that take one qualify.
    """
    return select_engine(
        engine,
        module,
        trajectory.parameter_names,
        example=example,
        metric=trajectory.solver.diagonal,
    )


def kernel_engine(engine, module, parameter_names, points, *, example):
    """``select_engine`` for a kernel over ``points`` (:func:`kernel_points`).

    In a metric when the points have one (``load_metric()`` is not None).
    """
    return select_engine(
        engine,
        module,
        parameter_names,
        example=example,
        metric=bool(points) and points[0][2]() is not None,
    )


def _checkpoints(points):
    """Each point's task arguments ``(parameters, metric)``, loaded when called."""
    return [
        lambda load=load, load_metric=load_metric: (
            compact(load()),
            compact(load_metric()),
        )
        for _, load, load_metric in points
    ]


@in_evaluation_mode
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

    One engine state per row and checkpoint and no product between rows
    (:meth:`Engine.diagonal`): about the cost of training for one epoch per
    checkpoint. Rows go in tiles from the fixed grid, so the result is
    bit-identical across every budget that holds a full tile, and across
    ``n_jobs`` and joblib backends (a task per block of rows and
    checkpoint).

    Parameters
    ----------
    module : torch.nn.Module
        The module the trajectory was recorded on (e.g. ``est.module_``).
    trajectory : Trajectory
        The recorded path (e.g. ``est.trajectory_``).
    X : array-like or torch.Tensor of shape (n_X, n_features)
        Or a tensor of shape ``(n_X, *input_shape)``, as for :func:`path_kernel`.
    engine : {"auto", "structured", "hooks", "jacobian", "ntk_vp"}, default="auto"
        How the Jacobian work is done; see :func:`tangent_kernel`.
    working_memory : float, default=None
        Budget in MiB for one tile of rows' engine states; scikit-learn's
        ``working_memory`` setting when None. On a CUDA device the tile is
        the device's (up to 8192 rows within half its free memory).
    device : str or torch.device, default=None
        Where to compute; the module's device when None.
    n_jobs : int, default=None
        Each block of rows and checkpoint is a joblib task, threads unless a
        ``joblib.parallel_config`` chooses another backend (dask, for a
        cluster); the result is bit-identical whatever runs them.

    Returns
    -------
    diagonal : ndarray of float64, shape (n_X,)
        ``K_path(x, x)`` (summed over outputs), one per row of ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_pathkernel import (
    ...     PathKernelRegressor, path_kernel, path_kernel_diagonal
    ... )
    >>> X, y = load_diabetes(return_X_y=True)
    >>> X, y = scale(X), scale(y)
    >>> est = PathKernelRegressor(max_iter=20, random_state=0).fit(X, y)
    >>> d = path_kernel_diagonal(est.module_, est.trajectory_, X[:5])
    >>> K = path_kernel(est.module_, est.trajectory_, X[:5])
    >>> bool(np.allclose(d, np.diag(K)))
    True
    """
    module, dtype, device = placement(module, device)
    X_t = kernel_rows(X, name="X", module=module, dtype=dtype, device=device)
    with torch.no_grad():
        n_outputs = output_width(module, X_t)
    points = kernel_points(trajectory)
    bound = path_engine(engine, module, trajectory, example=X_t[:1])
    return diagonal_sum(
        bound,
        points,
        X_t,
        bytes_per_row=bound.bytes_per_row(n_outputs, dtype.itemsize),
        working_memory=working_memory,
        n_jobs=n_jobs,
    )


def diagonal_sum(bound, points, X_t, *, bytes_per_row, working_memory, n_jobs):
    """``sum_k weight_k * diag K_k(X, X)`` with a bound engine, on placed rows.

    The row-by-row counterpart of :func:`kernel_sum`: tiles of the fixed
    grid (``bytes_per_row`` of engine state each, within
    ``working_memory``; on a CUDA device the device's tiles,
    ``tile_within_budget``), a task per block of rows and point, parts added
    in point order in float64. Returns a float64 numpy array ``(n_X,)``.
    On a device the structured engine's checkpoints go in stacks
    (:func:`_diagonal_tasks`). A CUDA out-of-memory error starts it again
    with half the tile and smaller stacks (``halve_on_device_oom``).
    """
    first = tile_within_budget(working_memory, bytes_per_row, X_t.device)

    def attempt(tile):
        rows = _Rows(bound=bound, X_t=X_t, tile=tile, device=X_t.device)
        blocks = row_blocks(X_t.shape[0], tile)
        tasks = _diagonal_tasks(rows, points, blocks, bytes_per_row, first // tile)
        diagonal = torch.zeros(X_t.shape[0], dtype=torch.float64, device=X_t.device)
        for _, parts in block_parts(
            tasks.function, rows, blocks, tasks.checkpoints, n_jobs=n_jobs
        ):
            for weight, tiles in zip(tasks.weights, parts):
                for a0, part in tiles:
                    if isinstance(weight, float):
                        diagonal[a0 : a0 + tile] += weight * part.double()
                    else:  # a stack: its float64 weights in one product
                        diagonal[a0 : a0 + tile] += weighted_sum(weight, part)
        return diagonal

    diagonal = halve_on_device_oom(attempt, first, what="The path kernel's diagonal")
    return diagonal.cpu().numpy()


def _diagonal_tasks(rows, points, blocks, bytes_per_row, shrink):
    """The diagonal's tasks: one per checkpoint, or on a device stacks of them.

    As :func:`_checkpoint_tasks`: the structured engine, plain or in a
    metric; a checkpoint's task keeps one tile's state and its block's
    parts alive (``stack_size``, divided by ``shrink`` after an
    out-of-memory error).
    """
    single = _CheckpointTasks(
        _diagonal_part, _checkpoints(points), [float(w) for w, _, _ in points]
    )
    if rows.bound.name != "structured":
        return single
    block_rows = max(r1 - r0 for r0, r1 in blocks)
    # One tile's state at a time (as many rows as there are), the parts.
    per_checkpoint = min(rows.tile, block_rows) * bytes_per_row + block_rows * 8
    size = stack_size(rows.device, per_checkpoint, len(points), shrink=shrink)
    if size <= 1:
        return single
    return _stacked_tasks(_stacked_diagonal_part, points, size)


def _stacked_tasks(function, points, size):
    """``function``'s tasks over stacks of ``size`` consecutive points."""
    groups = consecutive_groups(points, size)
    return _CheckpointTasks(
        function,
        [_stacked_point(group) for group in groups],
        [_stack_weights(group) for group in groups],
    )


def _stack_weights(group):
    """A stack of points' weights, float64 (``weighted_sum``)."""
    return torch.tensor([float(w) for w, _, _ in group], dtype=torch.float64)


def _stacked_point(group):
    """A stack of points' task arguments ``(parameters, metric)``, when called."""
    return lambda: (
        stack_mappings([compact(load()) for _, load, _ in group]),
        stack_mappings([compact(load_metric()) for _, _, load_metric in group]),
    )


@dataclass
class _Rows(Shared):
    """What every task of row-by-row work shares."""

    bound: object  # the engine, bound to the module
    X_t: torch.Tensor
    tile: int
    device: torch.device


def _diagonal_part(rows, r0, r1, parameters, metric):
    """One checkpoint's ``K(x, x)`` of rows ``r0:r1``: ``[(a0, part)]`` per tile."""
    parameters, metric = (
        to_device(parameters, rows.device),
        to_device(metric, rows.device),
    )
    parts = []
    with torch.no_grad():
        for a0 in range(r0, r1, rows.tile):
            X = rows.X_t[a0 : min(a0 + rows.tile, r1)]
            state = rows.bound.state(parameters, X, metric=metric)
            parts.append((a0, rows.bound.diagonal(state, X)))
    return parts


def _stacked_diagonal_part(rows, r0, r1, stacked, metric=None):
    """:func:`_diagonal_part` of a stack of checkpoints at once (``vmap``).

    Returns ``[(a0, parts)]`` with ``parts`` of shape ``(len(stack), rows)``.
    """
    stacked, metric = to_device(stacked, rows.device), to_device(metric, rows.device)

    def one(parameters, metric):
        return [part for _, part in _diagonal_part(rows, r0, r1, parameters, metric)]

    return list(zip(range(r0, r1, rows.tile), stacked_call(one, stacked, metric)))


@in_evaluation_mode
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
    out=None,
    dtype=np.float64,
):
    """``sum_k weight_k * J_k(X) J_k(Y)^T`` over ``points``, from raw rows.

    ``points`` is a sequence of ``(weight, load, load_metric)`` where
    ``load()`` returns the parameter mapping of that point (on any device)
    and ``load_metric()`` its metric (``Engine.state``), or None. Places the
    rows (``kernel_rows``) and binds the engine (:func:`kernel_engine`) once,
    then computes :func:`kernel_sum`.
    """
    module, network_dtype, device = placement(module, device)
    rows = {"module": module, "dtype": network_dtype, "device": device}
    X_t = kernel_rows(X, name="X", **rows)
    Y_t = None if Y is None else kernel_rows(Y, name="Y", like=X_t, **rows)
    with torch.no_grad():
        n_outputs = output_width(module, X_t)
    bound = kernel_engine(engine, module, parameter_names, points, example=X_t[:1])
    return kernel_sum(
        bound,
        points,
        X_t,
        Y_t,
        n_outputs=n_outputs,
        network_dtype=network_dtype,
        trace=trace,
        working_memory=working_memory,
        n_jobs=n_jobs,
        verbose=verbose,
        out=out,
        dtype=dtype,
    )


def kernel_sum(
    bound,
    points,
    X_t,
    Y_t=None,
    *,
    n_outputs,
    network_dtype,
    trace=True,
    working_memory=None,
    n_jobs=None,
    verbose=0,
    out=None,
    dtype=np.float64,
):
    """``sum_k weight_k * J_k(X) J_k(Y)^T`` with a bound engine, on placed rows.

    ``bound`` is the engine bound to the module (:func:`kernel_engine`);
    ``X_t`` and ``Y_t`` are rows already placed on the device of the work
    (``kernel_rows``), ``Y_t=None`` meaning ``X_t``; ``n_outputs`` and
    ``network_dtype`` are the module's. The work is cut on the fixed grid of
    ``_compute/_blocking.py``: row tiles of X against column chunks of Y, the
    same for every budget. ``working_memory`` only decides how many row
    tiles a block holds; each block and point is an independent task
    (``_compute/_tasks.py``, run through joblib with ``n_jobs``) that builds
    the point's states tile by tile and contracts tile against chunk; the
    block's strip adds the points' parts in order, in float64 on the device.
    For ``Y_t=None`` only tiles on or above the diagonal are computed and the
    rest is mirrored, so the result is exactly symmetric and bit-identical
    across budgets, ``n_jobs`` and joblib backends. ``out`` and ``dtype``
    say where the result goes (``_compute/_result.py``); strips already
    written to an ``out`` file by an interrupted call are skipped.
    """
    symmetric = Y_t is None
    Y_t = X_t if symmetric else Y_t
    extra = () if trace else (n_outputs, n_outputs)
    result = open_result(
        out,
        (X_t.shape[0], Y_t.shape[0], *extra),
        dtype=dtype,
        fingerprint=lambda: _fingerprint(points, X_t, Y_t, symmetric, trace),
        what="The path kernel",
        remedy=(
            "Write it to disk with out='kernel.npy' (dtype=np.float32 halves it), "
            "compute it in row blocks, e.g. kernel(X[i:j], Y), or use "
            "PathKernelFeatures(n_components=...) for features whose size grows "
            "linearly with the number of rows."
            + ("" if trace else " trace=True sums over outputs: O*O times less.")
        ),
        symmetric=symmetric,
    )
    with result:  # a file's lock is released however the call ends
        K = result.array
        if not points:  # an empty path: the zero kernel
            K[...] = 0.0
            result.finish()
            return K
        work = _Work(
            bound=bound,
            X_t=X_t,
            Y_t=Y_t,
            symmetric=symmetric,
            trace=trace,
            extra=extra,
            device=X_t.device,
            **_plan_grid(bound, n_outputs, network_dtype, X_t.device, math.prod(extra)),
        )
        tile = halve_on_device_oom(
            lambda tile: _strips_with_tile(
                result, work, tile, points, working_memory, n_jobs, verbose
            ),
            work.tile,
            what="The path kernel",
        )
        if symmetric:
            _mirror_upper(K, tile)
        result.finish()
    return K


@dataclass
class _Work(Shared):
    """What every task of one kernel shares: the engine and the rows.

    The checkpoints are not here: each task gets its own.
    """

    bound: object  # the engine, bound to the module
    X_t: torch.Tensor
    Y_t: torch.Tensor
    symmetric: bool
    trace: bool
    extra: tuple  # () traced, (O, O) full
    device: torch.device
    tile: int  # rows per row tile
    chunk: int  # columns per column chunk
    state_bytes: int  # engine state per row
    itemsize: int
    shrink: int = 1  # how many times the tile was halved (out of device memory)


def _fingerprint(points, X_t, Y_t, symmetric, trace):
    """What identifies a kernel: its rows, its checkpoints' weights and ends."""
    weights = [weight for weight, _, _ in points]
    ends = [
        part
        for k in sorted({0, len(points) - 1})
        for part in (points[k][1](), points[k][2]() or {})
    ]
    tensors = [t for parameters in ends for _, t in sorted(parameters.items())]
    return fingerprint_of(X_t, None if symmetric else Y_t, trace, weights, *tensors)


def _plan_grid(bound, n_outputs, dtype, device, numbers=1):
    """The tile grid and per-row state size of this engine and network.

    The grid is the policy of ``device`` (``_compute/_blocking.py``): the
    CPU's fixed 512-row grid, or a CUDA device's large square tiles;
    ``numbers`` are the numbers per kernel entry (``O * O`` in full).
    """
    itemsize = torch.finfo(dtype).bits // 8
    state_bytes = bound.bytes_per_row(n_outputs, itemsize)
    tile, chunk = grid(state_bytes, device, entry_bytes=itemsize * numbers)
    return {
        "tile": tile,
        "chunk": chunk,
        "state_bytes": state_bytes,
        "itemsize": itemsize,
    }


def _row_blocks(work, working_memory):
    """``(r0, r1)`` of each strip: as many whole row tiles as the budget holds.

    On a CUDA device the budget is also at most the device's share of its
    free memory (``strip_memory``): strips are whole tiles of a grid that
    does not depend on the budget, so this changes no bits.
    """
    n, m = work.X_t.shape[0], work.Y_t.shape[0]
    numbers = math.prod(work.extra)
    # On CUDA the strips being copied to the host (StripWriter) are alive too.
    strips = 1 + (IN_FLIGHT if work.device.type == "cuda" else 0)
    block = rows_within_budget(
        strip_memory(working_memory, work.device),
        # Per row: its engine state, and across the m columns the float64
        # strip(s), the cached static Gram and one checkpoint's contraction ...
        work.state_bytes + m * (8 * strips + 2 * work.itemsize) * numbers,
        max(n, m),
        # ... on top of one column chunk's state and a contraction's
        # temporaries (input Gram, signal Gram, their product).
        fixed_bytes=work.chunk * work.state_bytes
        + 3 * work.tile * work.chunk * work.itemsize * numbers,
        multiple_of=work.tile,
    )
    return [(r0, min(r0 + block, n)) for r0 in range(0, n, block)]


def _strips_with_tile(result, work, tile, points, working_memory, n_jobs, verbose):
    """Compute the strips not yet done with row tiles of ``tile`` rows.

    ``work.tile`` the first time; after a CUDA out-of-memory error
    (``halve_on_device_oom``) a smaller tile, the column chunk, the
    strip's budget and the checkpoint stacks' budget shrinking with it.
    Strips written before the error are complete and kept (any tile's
    strip holds every entry on and above the diagonal, so the mirror may
    use the last tile); a strip in progress was
    never written. Returns the tile.
    """
    if tile != work.tile:  # a new grid, and no statics cached on the old one
        shrink = work.tile // tile
        work = replace(
            work, tile=tile, chunk=max(1, work.chunk // shrink), shrink=shrink
        )
        working_memory = strip_memory(working_memory, work.device) / shrink
    blocks = [
        (r0, r1)
        for r0, r1 in _row_blocks(work, working_memory)
        if not result.is_done(r0, r1)
    ]
    _run_strips(result, work, points, blocks, n_jobs, verbose)
    return tile


def _run_strips(result, work, points, blocks, n_jobs, verbose):
    """Compute the strips into ``result``, with progress.

    One task per strip and checkpoint (``_strip_part``); the strip adds its
    checkpoints' parts in order, and is handed to a ``StripWriter`` as soon
    as its last checkpoint arrives: written and recorded as done at once on
    the CPU; on CUDA copied to a pinned buffer while the next strip is
    computed, and recorded only once its bytes are in (``_compute/_transfer.py``).
    """
    if not blocks:
        return  # every strip was written by an earlier, interrupted call
    progress = progress_bar(
        verbose,
        total=len(blocks) * len(points),
        desc=f"path kernel ({work.bound.name})",
        unit="checkpoint-block",
    )
    if verbose > 0:
        n, m = work.X_t.shape[0], work.Y_t.shape[0]
        progress.write(
            f"path kernel: engine {work.bound.name!r}, {n} x {m} over "
            f"{len(points)} checkpoint(s), {len(blocks)} row block(s) of "
            f"up to {blocks[0][1] - blocks[0][0]} rows in tiles of "
            f"{work.tile} x {work.chunk}"
        )
    tasks = _checkpoint_tasks(work, points, max(r1 - r0 for r0, r1 in blocks))
    strips = block_parts(tasks.function, work, blocks, tasks.checkpoints, n_jobs=n_jobs)
    writer = StripWriter(result, work.device, n_strips=len(blocks))
    with progress, writer:
        for (r0, r1), parts in strips:
            c_start = _first_column(r0, work.chunk, work.symmetric)
            strip = torch.zeros(
                (r1 - r0, work.Y_t.shape[0] - c_start, *work.extra),
                dtype=torch.float64,
                device=work.device,
            )
            for weight, tiles in zip(tasks.weights, parts):
                for (a0, a1, b0, b1), part in tiles:
                    add_weighted(
                        strip[a0 - r0 : a1 - r0, b0 - c_start : b1 - c_start],
                        part,
                        weight,
                    )
                progress.update(1 if isinstance(weight, float) else len(weight))
            writer.put(strip, r0, r1, c_start)


class _CheckpointTasks(NamedTuple):
    """A strip's tasks over the checkpoints: one each, or stacks of them."""

    function: object  # the task: _strip_part, or _stacked_strip_part
    checkpoints: list  # each task's checkpoint arguments, loaded when called
    weights: list  # each task's weight: a float, or a float64 tensor (a stack)


def _checkpoint_tasks(work, points, strip_rows):
    """One task per checkpoint, or on a CUDA device stacks of checkpoints.

    Stacks are for the structured engine, plain or in a metric (Adam's
    path kernel: each checkpoint's metric is stacked with its parameters),
    whose states are explicit tensor code that ``torch.func.vmap`` batches:
    one launch per operation for the whole stack instead of one per
    checkpoint. As many checkpoints as a quarter of ``device_budget`` holds
    of a strip's states, returned parts and one tile pair's temporaries
    (``stack_size``; divided by ``work.shrink`` after an out-of-memory
    error). The CPU keeps one task per checkpoint.
    """
    single = _CheckpointTasks(
        _strip_part, _checkpoints(points), [float(w) for w, _, _ in points]
    )
    if work.bound.name != "structured":
        return single
    numbers, m = math.prod(work.extra), work.Y_t.shape[0]
    tile, chunk = min(work.tile, strip_rows), min(work.chunk, m)  # as they are
    per_checkpoint = (strip_rows + chunk) * work.state_bytes + (
        strip_rows * m + 3 * tile * chunk
    ) * work.itemsize * numbers
    in_metric = points[0][2]() is not None
    if in_metric:  # the metric's sub-blocks: about one column chunk's state
        per_checkpoint += chunk * work.state_bytes
    size = stack_size(work.device, per_checkpoint, len(points), shrink=work.shrink)
    if size <= 1:
        return single
    return _stacked_tasks(_stacked_strip_part, points, size)


def _stacked_strip_part(work, r0, r1, stacked, metric=None):
    """:func:`_strip_part` of a stack of checkpoints at once.

    ``torch.func.vmap`` over the stacked parameters (and metrics) runs each
    of the task's operations once for the whole stack. Returns
    ``[(key, parts)]`` with ``parts`` of shape ``(len(stack), ...)``, not
    yet weighted.
    """
    stacked, metric = to_device(stacked, work.device), to_device(metric, work.device)
    _, pairs = _pairs(work, r0, r1)
    keys = [(*a, *b) for b, tiles in pairs.items() for a in tiles]

    def one(parameters, metric):
        return [part for _, part in _strip_part(work, r0, r1, parameters, metric)]

    return list(zip(keys, stacked_call(one, stacked, metric)))


def _first_column(r0, chunk, symmetric):
    """First column a row block computes: its chunk's start when symmetric."""
    return r0 // chunk * chunk if symmetric else 0


def _pairs(work, r0, r1):
    """The row tiles of rows ``r0:r1``, and ``{column chunk: the tiles it meets}``.

    When symmetric, a row tile meets only the chunks from the one holding
    its first row on: entries below the diagonal inside that chunk are
    computed too, and overwritten by the mirror.
    """
    n_Y = work.Y_t.shape[0]
    row_tiles = [(a0, min(a0 + work.tile, r1)) for a0 in range(r0, r1, work.tile)]
    return row_tiles, {
        (b0, min(b0 + work.chunk, n_Y)): [
            a
            for a in row_tiles
            if _first_column(a[0], work.chunk, work.symmetric) <= b0
        ]
        for b0 in range(_first_column(r0, work.chunk, work.symmetric), n_Y, work.chunk)
    }


def _strip_part(work, r0, r1, parameters, metric):
    """One checkpoint's contractions for rows ``r0:r1``, not yet weighted.

    Row states are built one row tile at a time and column states one column
    chunk at a time, each on the fixed grid; every product is one row tile
    against one column chunk. The statics of the strip's pairs are the same
    at every checkpoint: kept (``Shared.cached``) while the strip's
    checkpoints follow each other on this thread.

    Returns
    -------
    parts : list of ((a0, a1, b0, b1), torch.Tensor)
        Rows ``a0:a1`` against columns ``b0:b1``, in the network's dtype.
    """
    bound, X_t, Y_t = work.bound, work.X_t, work.Y_t
    row_tiles, pairs = _pairs(work, r0, r1)
    statics = work.cached(
        ("statics", r0, r1),
        lambda: {
            (a, b): bound.static(X_t[a[0] : a[1]], Y_t[b[0] : b[1]])
            for b, tiles in pairs.items()
            for a in tiles
        },
    )
    parameters, metric = (
        to_device(parameters, work.device),
        to_device(metric, work.device),
    )
    parts = []
    with torch.no_grad():
        states_x = {
            a: bound.state(parameters, X_t[a[0] : a[1]], metric=metric)
            for a in row_tiles
        }
        for (b0, b1), tiles in pairs.items():
            # A chunk that is one of this block's row tiles (Y is X, and
            # the grid's tiles and chunks coincide) has its state already:
            # built from the same rows in the same shape, so the same bits.
            state_y = states_x.get((b0, b1)) if work.symmetric else None
            if state_y is None:
                state_y = bound.state(parameters, Y_t[b0:b1], metric=metric)
            for a0, a1 in tiles:
                part = bound.contract(
                    states_x[a0, a1], state_y, work.trace, statics[(a0, a1), (b0, b1)]
                )
                parts.append(((a0, a1, b0, b1), part))
    return parts


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
