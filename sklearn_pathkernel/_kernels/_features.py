"""Explicit path-kernel features: seeded random sketches of the path gradients.

The path kernel has an exact, very long feature map: stack every checkpoint's
flattened Jacobian, scaled by the square root of its weight,

    Phi(x) = concat_k sqrt(w_k) vec J_k(x)        (length K * O * d)

so that ``Phi(x) . Phi(x') = K_path(x, x')`` (traced). The engine cuts each
``vec J_k(x)`` into pieces ``T_{k,l}(x)``, vectors or matrices with
``sum_l <T_{k,l}(x), T_{k,l}(x')> = tr(J_k(x) J_k(x')^T)``
(:meth:`~sklearn_pathkernel.engines.Engine.sketch_shapes`), and feature ``r``
is

    phi_r(x) = m^{-1/2} sum_k sqrt(w_k) sum_l s_{k,l,r}(x)

with ``s_{k,l,r}(x)`` the piece contracted with independent ``N(0, 1)``
factors (:meth:`~sklearn_pathkernel.engines.Engine.sketch`):

- a plain **Gaussian projection** ``g . T(x)`` of a block of ``vec J`` (the
  ``"jacobian"`` and ``"ntk_vp"`` engines);
- a **Kronecker sketch** ``(u . vec D(x)) (v . a(x)) = (u (x) v) . T(x)`` of
  a Linear layer's ``T(x) = vec D(x) (x) a(x)`` (the ``"structured"``
  engine): ``O h_out + h_in`` numbers per feature instead of
  ``O h_out h_in``.

Both have ``E[s(x) s(x')] = <T(x), T(x')>`` (``E[g g^T] = I``,
``E[(u (x) v)(u (x) v)^T] = I (x) I``) and mean zero, and the factors of
different ``(k, l)`` are independent, so the cross terms vanish and
``E[phi(x) . phi(x')] = K_path(x, x')``. The variance of the estimate is
``(K(x, x) K(x', x') + K(x, x')^2) / m`` for the Gaussian projection. The
Kronecker sketch adds, per layer ``l`` and checkpoint ``k`` with input and
signal Grams ``A``, ``S`` (so that ``K_{k,l} = w_k A S``),
``2 w_k^2 (S_xx S_x'x' A_xx'^2 + S_xx'^2 A_xx A_x'x' + S_xx'^2 A_xx'^2) / m``,
at most ``6 K_{k,l}(x, x) K_{k,l}(x', x') / m``. On the diagonal that is
``(2 K^2 + 6 sum_{k,l} K_{k,l}^2) / m`` against ``2 K^2 / m``: four times the
variance when one piece carries the whole kernel, close to the Gaussian one
when it is spread over many checkpoints and layers (docs/design.md, section
6).

Each factor is drawn in float64 on the CPU from a ``torch.Generator`` seeded
by ``(seed, k, l, j)`` (:func:`gaussian_factor`), then cast to the work's
dtype and device: the features depend on the seed, the engine's pieces and
``m``, not on the blocking of the rows, the budget, the device or what runs
the tasks (one per block of rows and checkpoint, ``_compute/_tasks.py``; a
thread keeps a checkpoint's factors for its next task, so they are drawn once
per call and thread when they fit the budget together). The factors are
the same on every device; the rounding of the features is that of the row
tile, which on a CUDA device is the device's (up to 8192 rows, a few large
products per checkpoint; ``tile_within_budget``). There the structured
engine's tasks also take stacks of checkpoints, each with its own factors,
under one ``torch.func.vmap`` (``_compute/_stacks.py``).
"""

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from sklearn import get_config

from .._compute._blocking import (
    device_budget,
    halve_on_device_oom,
    tile_within_budget,
)
from .._compute._stacks import (
    consecutive_groups,
    stack_mappings,
    stack_size,
    stacked_call,
    weighted_sum,
)
from .._compute._tasks import Shared, block_parts, compact, row_blocks, to_device
from .._model._network import in_evaluation_mode, placement
from ._path import path_engine
from ._rows import kernel_rows, output_width


def gaussian_factor(seed, k, piece, j, height, n_components):
    """Factor ``j`` of sketch piece ``piece`` at checkpoint ``k``.

    Returns
    -------
    factor : torch.Tensor of float64 on the CPU, shape (height, n_components)
        Independent ``N(0, 1)`` entries, depending only on the arguments.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._kernels._features import gaussian_factor
    >>> a = gaussian_factor(0, 3, 1, 0, 5, 4)
    >>> a.shape, a.dtype
    (torch.Size([5, 4]), torch.float64)
    >>> torch.equal(a, gaussian_factor(0, 3, 1, 0, 5, 4))
    True
    """
    state = np.random.SeedSequence([int(seed), int(k), int(piece), int(j)])
    generator = torch.Generator().manual_seed(int(state.generate_state(1)[0]))
    return torch.randn((height, n_components), generator=generator, dtype=torch.float64)


def plan(
    engine, shapes, n_outputs, itemsize, n_components, working_memory, device=None
):
    """``(tile, groups)``: rows per block, and pieces whose factors are kept together.

    Half the budget sets the row tile, from the fixed grid
    (``tile_within_budget``), for one row's engine state and its share of
    the features; what the tile leaves holds the factors, a group of
    consecutive pieces at a time (at least one), each group's states being
    built again. The groups change no bit of the result (every piece adds
    its own float64 term to the features, in piece order); the tile does
    only when the budget cannot hold a full one (docs/design.md, section 8).
    On a CUDA device (``device``) the budget is the device's
    (:func:`_memory_for`) and the tile the device's.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._kernels._features import plan
    >>> from sklearn_pathkernel.engines import JacobianEngine
    >>> engine = JacobianEngine(torch.nn.Linear(4000, 1), ["weight"])
    >>> shapes = engine.sketch_shapes(1)  # two blocks of vec J
    >>> plan(engine, shapes, 1, 4, 100, None)
    (512, [[0, 1]])
    >>> plan(engine, shapes, 1, 4, 100, 2)  # room for one factor at a time
    (16, [[0], [1]])
    """
    working_memory = _memory_for(working_memory, device)
    per_row = engine.bytes_per_row(n_outputs, itemsize)
    # The float64 features, a piece's result in both dtypes, the input side.
    per_row += (16 + 2 * itemsize) * n_components
    tile = tile_within_budget(working_memory / 2, per_row, device)
    # Factors are kept in the work's dtype; one float64 draw is alive at a time.
    largest = max((max(heights) for heights in shapes), default=0)
    budget = working_memory * 2**20 - tile * per_row - 8 * largest * n_components
    groups, used = [], 0
    for piece, heights in enumerate(shapes):
        size = itemsize * sum(heights) * n_components
        if not groups or used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(piece)
        used += size
    return tile, groups


@in_evaluation_mode
def path_features(
    module,
    trajectory,
    X,
    *,
    n_components,
    seed,
    engine="auto",
    working_memory=None,
    device=None,
    n_jobs=None,
):
    """Random path-kernel features and the exact self kernel of ``X``.

    Parameters
    ----------
    module : torch.nn.Module
        The module the trajectory was recorded on.
    trajectory : Trajectory
        The recorded path.
    X : array-like or torch.Tensor of shape (n_X, n_features)
        The rows to map; or a tensor of shape ``(n_X, *input_shape)`` (images,
        sequences, token ids), as for ``path_kernel``.
    n_components : int
        ``m``, the number of features.
    seed : int
        Seeds the factors; the same seed gives the same features.
    engine : {"auto", "structured", "hooks", "jacobian", "ntk_vp"}, default="auto"
        Which engine sketches the gradients (``select_engine``): the
        structured engine's Kronecker sketch, or a Gaussian projection of
        ``vec J``. Each engine gives its own (equally valid) features.
    working_memory : float, default=None
        Budget in MiB for one block of rows' states and the factors kept at
        once; scikit-learn's ``working_memory`` setting when None. On a CUDA
        device the device's own budget (half its free memory) and tiles
        take its place (docs/design.md, section 8).
    device : str or torch.device, default=None
        Where to compute; the module's device when None.
    n_jobs : int, default=None
        Each block of rows and checkpoint is a joblib task, threads unless a
        ``joblib.parallel_config`` chooses another backend (dask, for a
        cluster); the features are bit-identical whatever runs them.

    Returns
    -------
    features : ndarray of float64, shape (n_X, n_components)
        ``phi(X)``, with ``E[phi(x) . phi(x')] = K_path(x, x')``.
    diagonal : ndarray of float64, shape (n_X,)
        ``K_path(x, x)`` exactly (``Engine.diagonal``), from the same states.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_pathkernel import PathKernelRegressor, path_features
    >>> X, y = load_diabetes(return_X_y=True)
    >>> X, y = scale(X), scale(y)
    >>> est = PathKernelRegressor((8,), max_iter=10, random_state=0).fit(X, y)
    >>> phi, diagonal = path_features(
    ...     est.module_, est.trajectory_, X[:3], n_components=50, seed=0
    ... )
    >>> phi.shape
    (3, 50)
    >>> bool(np.allclose(diagonal, np.diag(est.kernel(X[:3]))))
    True
    """
    module, dtype, device = placement(module, device)
    X_t = kernel_rows(X, name="X", module=module, dtype=dtype, device=device)
    bound = path_engine(engine, module, trajectory, example=X_t[:1])
    with torch.no_grad():
        n_outputs = output_width(module, X_t)
    shapes = bound.sketch_shapes(n_outputs)
    tile, groups = plan(
        bound, shapes, n_outputs, dtype.itemsize, n_components, working_memory, device
    )
    sketch = _Sketch(
        bound=bound,
        X_t=X_t,
        tile=tile,
        device=device,
        shapes=shapes,
        groups=groups,
        n_components=n_components,
        seed=seed,
        state_bytes=bound.bytes_per_row(n_outputs, dtype.itemsize),
    )
    features, diagonal = halve_on_device_oom(
        lambda smaller: _sketch_with_tile(
            replace(sketch, tile=smaller),
            trajectory,
            working_memory,
            n_jobs,
            shrink=tile // smaller,
        ),
        tile,
        what="The path features",
    )
    return features.cpu().numpy(), diagonal.cpu().numpy()


def _sketch_with_tile(sketch, trajectory, working_memory, n_jobs, shrink=1):
    """Features and diagonal of every row, float64 on the device, from scratch.

    A try of ``halve_on_device_oom``: after a CUDA out-of-memory error it
    runs again, with a smaller ``sketch.tile`` (``shrink`` times smaller
    than the first), smaller checkpoint stacks and fresh sums.
    """
    n, m, tile = sketch.X_t.shape[0], sketch.n_components, sketch.tile
    # A task's result is (rows, m) float64: at most a quarter of the budget.
    working_memory = _memory_for(working_memory, sketch.device)
    result_tiles = working_memory * 2**20 / 4 // (tile * m * 8)
    blocks = row_blocks(n, tile, tiles_per_block=int(max(1, min(8, result_tiles))))
    features = torch.zeros((n, m), dtype=torch.float64, device=sketch.device)
    diagonal = torch.zeros(n, dtype=torch.float64, device=sketch.device)
    function, checkpoints = _sketch_tasks(sketch, trajectory, blocks, shrink)
    for (r0, r1), parts in block_parts(
        function,
        sketch,
        blocks,
        checkpoints,
        n_jobs=n_jobs,
        # Checkpoints outside, row blocks inside: a thread's factors are
        # drawn once per checkpoint when they fit the budget together.
        checkpoints_outside=True,
    ):
        for part_features, part_diagonal in parts:
            features[r0:r1] += part_features
            diagonal[r0:r1] += part_diagonal
    return features, diagonal


def _memory_for(working_memory, device):
    """The MiB the features may take: ``working_memory``, or a CUDA device's budget.

    On a device the tile is the device's, larger than ``working_memory``
    would give; the factors and each task's result are then budgeted in
    the device's memory (``device_budget``) as well.
    """
    budget = device_budget(device)
    if budget is not None:
        return budget / 2**20
    if working_memory is None:
        return get_config()["working_memory"]
    return working_memory


def _checkpoints(trajectory):
    """Each kernel node's task arguments ``(k, weight, parameters, metric)``.

    Loaded when called (``block_parts``).
    """
    return [
        lambda k=k, node=node: (
            k,
            float(node.weight),
            compact(trajectory.parameters_at(node.step)),
            compact(trajectory.kernel_metric_at(node.step)),
        )
        for k, node in enumerate(trajectory.kernel_nodes())
        if node.weight
    ]


@dataclass
class _Sketch(Shared):
    """What every task of one call of :func:`path_features` shares."""

    bound: object  # the engine, bound to the module
    X_t: torch.Tensor
    tile: int
    device: torch.device
    shapes: list  # the engine's sketch pieces
    groups: list  # pieces whose factors are kept together (``plan``)
    n_components: int
    seed: int
    state_bytes: int = 0  # the engine's state per row


def _sketch_tasks(sketch, trajectory, blocks, shrink):
    """``(task, checkpoints)``: one task per checkpoint, or on a device stacks.

    The structured engine's Kronecker sketch runs a stack of checkpoints
    under ``torch.func.vmap`` (``_compute/_stacks.py``), each checkpoint
    with its own factors, drawn as they are for one (:func:`gaussian_factor`
    of ``(seed, k, piece, j)``). A checkpoint's task keeps one tile's state,
    one factor group and the tile's features alive; the stack takes what a
    quarter of the device's budget holds of them (divided by ``shrink``
    after an out-of-memory error). Elsewhere, and on the CPU, one task per
    checkpoint.
    """
    single = (_sketch_part, _checkpoints(trajectory))
    nodes = [
        (k, node) for k, node in enumerate(trajectory.kernel_nodes()) if node.weight
    ]
    if sketch.bound.name != "structured" or not nodes:
        return single
    m, itemsize = sketch.n_components, sketch.X_t.element_size()
    rows = min(sketch.tile, max(r1 - r0 for r0, r1 in blocks))
    factors = max(
        sum(sum(sketch.shapes[piece]) for piece in group) for group in sketch.groups
    )
    per_checkpoint = (
        rows * sketch.state_bytes
        + factors * m * itemsize
        + rows * m * (16 + 2 * itemsize)  # the pieces' parts, float64 sums
    )
    size = stack_size(sketch.device, per_checkpoint, len(nodes), shrink=shrink)
    if size <= 1:
        return single
    return _stacked_sketch_part, [
        _stacked_nodes(trajectory, group) for group in consecutive_groups(nodes, size)
    ]


def _stacked_nodes(trajectory, group):
    """A stack of kernel nodes' task arguments, loaded when called.

    ``(ks, weights, parameters, metric)``: their indices, float64 weights,
    and stacked parameters and metrics.
    """
    return lambda: (
        tuple(k for k, _ in group),
        torch.tensor([float(node.weight) for _, node in group], dtype=torch.float64),
        stack_mappings([compact(trajectory.parameters_at(n.step)) for _, n in group]),
        stack_mappings(
            [compact(trajectory.kernel_metric_at(n.step)) for _, n in group]
        ),
    )


def _stacked_sketch_part(sketch, r0, r1, ks, weights, parameters, metric):
    """:func:`_sketch_part` of a stack of checkpoints ``ks`` at once.

    Under ``torch.func.vmap`` over the stacked parameters, metrics and
    factors (checkpoint ``k``'s factors are those of ``k`` alone); each
    checkpoint's pieces are summed in float64, then the stack's features
    weighted by ``sqrt(weight_k / m)`` and its diagonals by ``weight_k`` in
    one float64 product each.
    """
    bound, X_t, tile, m = sketch.bound, sketch.X_t, sketch.tile, sketch.n_components
    parameters = to_device(parameters, sketch.device)
    metric = to_device(metric, sketch.device)
    scales = (weights / m).sqrt()
    features = torch.zeros((r1 - r0, m), dtype=torch.float64, device=sketch.device)
    diagonal = torch.zeros(r1 - r0, dtype=torch.float64, device=sketch.device)
    with torch.no_grad():
        for g, group in enumerate(sketch.groups):
            factors = sketch.cached(
                ("factors", ks, g),
                lambda group=group: _stacked_factors(sketch, ks, group),
            )
            for a0 in range(r0, r1, tile):
                rows = X_t[a0 : min(a0 + tile, r1)]

                def one(parameters, metric, factors, rows=rows, group=group, g=g):
                    state = bound.state(parameters, rows, metric=metric)
                    parts = [
                        bound.sketch(state, rows, piece, factors[piece]).double()
                        for piece in group
                    ]
                    total = sum(parts[1:], parts[0])
                    if g:
                        return (total,)
                    return total, bound.diagonal(state, rows).double()

                out = stacked_call(one, parameters, metric, factors)
                features[a0 - r0 : a0 - r0 + tile] += weighted_sum(scales, out[0])
                if g == 0:
                    diagonal[a0 - r0 : a0 - r0 + tile] += weighted_sum(weights, out[1])
    return features, diagonal


def _stacked_factors(sketch, ks, group):
    """The factors of ``group``'s pieces for each checkpoint of ``ks``, stacked.

    Each is drawn as for one checkpoint (:func:`gaussian_factor`), then
    stacked and cast to the work's dtype and device: ``(len(ks), height, m)``.
    """
    m, dtype = sketch.n_components, sketch.X_t.dtype
    return {
        piece: tuple(
            torch.stack(
                [gaussian_factor(sketch.seed, k, piece, j, height, m) for k in ks]
            ).to(device=sketch.device, dtype=dtype)
            for j, height in enumerate(sketch.shapes[piece])
        )
        for piece in group
    }


def _sketch_part(sketch, r0, r1, k, weight, parameters, metric):
    """Checkpoint ``k``'s weighted features and diagonal of rows ``r0:r1``.

    Returns
    -------
    features : torch.Tensor of float64, shape (r1 - r0, n_components)
        ``sqrt(weight / m) sum_l s_{k,l}(x)``, pieces added in order.
    diagonal : torch.Tensor of float64, shape (r1 - r0,)
        ``weight * K_k(x, x)``.
    """
    bound, X_t, tile, m = sketch.bound, sketch.X_t, sketch.tile, sketch.n_components
    device, dtype = sketch.device, X_t.dtype
    parameters, metric = to_device(parameters, device), to_device(metric, device)
    scale = math.sqrt(weight / m)
    features = torch.zeros((r1 - r0, m), dtype=torch.float64, device=device)
    diagonal = torch.zeros(r1 - r0, dtype=torch.float64, device=device)
    with torch.no_grad():
        for g, group in enumerate(sketch.groups):
            factors = sketch.cached(
                ("factors", k, g),
                lambda group=group: {
                    piece: tuple(
                        gaussian_factor(sketch.seed, k, piece, j, height, m).to(
                            device=device, dtype=dtype
                        )
                        for j, height in enumerate(sketch.shapes[piece])
                    )
                    for piece in group
                },
            )
            for a0 in range(r0, r1, tile):
                rows = X_t[a0 : min(a0 + tile, r1)]
                state = bound.state(parameters, rows, metric=metric)
                if g == 0:
                    part = bound.diagonal(state, rows)
                    diagonal[a0 - r0 : a0 - r0 + tile] += weight * part.double()
                for piece in group:
                    part = bound.sketch(state, rows, piece, factors[piece])
                    features[a0 - r0 : a0 - r0 + tile].add_(part.double(), alpha=scale)
    return features, diagonal
