"""The kernel machine: a trained network's prediction as a sum over training rows.

Theorem 1 of the paper (Domingos, 2020), in the discrete form of docs/design.md,
section 4::

    f(x; w_T) ~= b(x) + sum_i phi_i(x)
    phi_i(x)  = - sum_t eps_t [i in B_t] c_{i,t} K_{w_t}(x, x_i) g_{i,t}
    b(x)      = f(x; w_0) - alpha sum_t eps_t J_t(x) w_t

The first-order form is exact as the step size goes to zero; its error is
first order in the step size. The exact form replaces the query-side
Jacobian ``J_t(x)`` by its average over the segment ``w_t -> w_{t+1}``
(Gauss-Legendre nodes), which turns the identity into an exact one for any
step size, up to quadrature and rounding. For a piecewise-linear network
(relu) each segment is first split where a query's activation pattern
changes, and each piece integrated on its own (``_explain/_kinks.py``).

Nothing of shape (n_X, n_train, O, O) is formed: each step's loss
derivatives are folded into the training rows' engine states first
(``contract_vector``), so the work per step is that of a kernel block.

With momentum, Nesterov, Adam or AdamW a gradient acts over every later
step; the decomposition then walks the steps backwards carrying the
query-side direction ``q_s(x) = sum_{t>=s} eps_t beta_{t,s} P_t Jbar_t(x)^T``
(``_explain/_query_side.py``; docs/design.md, section 4, "Other solvers").
"""

import numbers
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.func import jvp, vmap

from .._compute._blocking import (
    device_budget,
    grid,
    halve_on_device_oom,
    tile_within_budget,
)
from .._compute._memory import check_result_fits
from .._compute._progress import progress_bar
from .._compute._stacks import (
    consecutive_groups,
    stack_mappings,
    stack_size,
    stacked_call,
    weighted_sum,
)
from .._compute._tasks import Shared, block_parts, compact, row_blocks, to_device
from .._kernels._path import kernel_engine, kernel_points, kernel_sum
from .._kernels._rows import kernel_rows, output_width
from .._model._network import forward, forward_at, in_evaluation_mode, placement
from .._training._trajectory import Step
from ..engines import TORCH_FUNC_LOCK
from ._kinks import (
    RowPoints,
    chain_layers,
    in_chunks,
    piece_rounds,
    probe,
    probe_direction,
    segment_kinks,
)
from ._query_side import QueryWalk, parameters_after, walk_block


class TopContributors(NamedTuple):
    """The training rows that contribute most to each query's prediction.

    Attributes
    ----------
    indices : ndarray of int, shape (n_X, k)
        Training-row indices, largest ``|contribution|`` first (Euclidean
        norm over outputs when there are several).
    values : ndarray of shape (n_X, k, O)
        Their contributions ``phi_i(x)``.
    share : ndarray of shape (n_X,)
        The fraction of the total absolute contribution they carry:
        ``sum_top |phi_i| / sum_all |phi_i|`` (norms over outputs).
    """

    indices: np.ndarray
    values: np.ndarray
    share: np.ndarray


@dataclass
class KernelMachine:
    """A decomposition of a network's predictions over its training rows.

    Returned by ``decompose`` on the estimators; see
    :func:`decompose_path` for how it is computed.

    Parameters
    ----------
    bias, contributions, network_output, kernel, exact, kinks
        Stored as the attributes of the same names.

    Attributes
    ----------
    bias : ndarray of shape (n_X, O)
        ``b(x)``: the initial network's output plus the L2 term (Remark 4)
        and, for adamw, the decoupled decay's.
    contributions : ndarray of shape (n_X, n_train, O)
        ``phi_i(x)``: what training row ``i`` contributed to the output at
        ``x`` over the whole path.
    network_output : ndarray of shape (n_X, O)
        The trained network's own output (logits for a classifier).
    kernel : ndarray of shape (n_X, n_train)
        ``K_path(x, x_i)`` (summed over outputs), or the loss-weighted path
        kernel ``-phi_i(x)`` of Remark 2 when so requested (one output).
    exact : bool
        Whether the exact (segment-averaged) form was used.
    kinks : bool
        Whether each step's segment was split where a query's activation
        pattern changes (the exact form of a piecewise-linear network).

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_pathkernel import PathKernelRegressor
    >>> X, y = load_diabetes(return_X_y=True)
    >>> X, y = scale(X), scale(y)
    >>> est = PathKernelRegressor((16,), max_iter=30, dtype="float64",
    ...                           random_state=0).fit(X, y)
    >>> machine = est.decompose(X[:3], exact=True)
    >>> machine.contributions.shape
    (3, 442, 1)
    >>> bool(machine.error["max_rel"] < 1e-8)
    True
    """

    bias: np.ndarray
    contributions: np.ndarray
    network_output: np.ndarray
    kernel: np.ndarray
    exact: bool
    kinks: bool = False

    def prediction(self):
        """``bias + sum_i contributions_i``, shape (n_X, O)."""
        return self.bias + self.contributions.sum(axis=1)

    @property
    def error(self):
        """Largest reconstruction error against the network.

        Returns
        -------
        error : dict
            ``max_abs``: the largest ``|prediction - network_output|``;
            ``max_rel``: that divided by the largest ``|network_output|``.
        """
        diff = np.abs(self.prediction() - self.network_output).max()
        scale = max(np.abs(self.network_output).max(), np.finfo(float).tiny)
        return {"max_abs": float(diff), "max_rel": float(diff / scale)}

    @property
    def coefficients(self):
        """The paper's ``a_i(x) = phi_i(x) / K(x, x_i)``, one output only.

        Shape (n_X, n_train); zero where the kernel is zero. With the
        loss-weighted kernel of Remark 2 every coefficient is -1.
        """
        if self.contributions.shape[2] != 1:
            raise ValueError(
                "coefficients are defined for a single output; this network has "
                f"{self.contributions.shape[2]}. Use contributions instead."
            )
        phi = self.contributions[:, :, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.kernel != 0, phi / self.kernel, 0.0)

    def top_contributors(self, k=5, *, output=None):
        """The ``k`` training rows with the largest contributions, per query.

        Parameters
        ----------
        k : int, default=5
        output : int, "predicted" or None, default=None
            What "largest" measures: None, the Euclidean norm of a row's
            contributions over all outputs; an int, the absolute
            contribution to that output; "predicted", to each query's
            largest output (a classifier's predicted class), which is
            usually what explains a multiclass prediction.

        Returns
        -------
        top : TopContributors
            ``indices`` (n_X, k), ``values`` (n_X, k, O) and ``share``
            (n_X,), the fraction of the total absolute contribution carried
            (measured as ``output`` says).

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_pathkernel import KernelMachine
        >>> phi = np.array([[[0.1, -2.0], [0.5, 0.0], [-0.3, 0.1]]])  # 1 x 3 x 2
        >>> machine = KernelMachine(np.zeros((1, 2)), phi, phi.sum(1), None, True)
        >>> machine.top_contributors(2).indices  # by the norm over outputs
        array([[0, 1]])
        >>> machine.top_contributors(2, output=0).indices
        array([[1, 2]])
        """
        n_train, n_outputs = self.contributions.shape[1:]
        integer = isinstance(k, numbers.Integral) and not isinstance(k, bool)
        if not (integer and 1 <= k <= n_train):
            raise ValueError(
                f"k must be an integer between 1 and {n_train}; got {k!r}."
            )
        if output is None:
            size = np.linalg.norm(self.contributions, axis=2)
        elif isinstance(output, str) and output == "predicted":
            column = np.argmax(self.network_output, axis=1)
            size = np.abs(
                np.take_along_axis(self.contributions, column[:, None, None], axis=2)
            )[:, :, 0]
        elif isinstance(output, numbers.Integral) and -n_outputs <= output < n_outputs:
            size = np.abs(self.contributions[:, :, output])
        else:
            raise ValueError(
                "output must be None, 'predicted' or an output index below "
                f"{n_outputs}; got {output!r}."
            )
        order = np.argsort(-size, axis=1, kind="stable")[:, :k]
        values = np.take_along_axis(self.contributions, order[:, :, None], axis=1)
        total = size.sum(axis=1)
        top = np.take_along_axis(size, order, axis=1).sum(axis=1)
        share = np.divide(top, total, out=np.zeros_like(top), where=total > 0)
        return TopContributors(order, values, share)


@in_evaluation_mode
def decompose_path(
    module,
    trajectory,
    X_train,
    X,
    *,
    exact=False,
    n_nodes=4,
    kinks="auto",
    kernel="path",
    engine="auto",
    working_memory=None,
    n_jobs=None,
    verbose=0,
    device=None,
):
    """Decompose the network's outputs at ``X`` over its training rows.

    Plain sgd runs on the engines (``contract_vector``); so does the
    first-order form with heavy-ball or Nesterov momentum, at the effective
    step sizes. The exact form with momentum, and both forms with Adam or
    AdamW, walk the steps backwards per query block, carrying the
    query-side direction: memory about ``3 O d`` float64 numbers per query
    row. The rows are placed, and the engine bound, once for the whole call,
    the kernel included.

    Parameters
    ----------
    module : torch.nn.Module
        The trained network (``est.module_``).
    trajectory : Trajectory
        Its recorded path (``est.trajectory_``).
    X_train : array-like or torch.Tensor of shape ``(n_train, *input_shape)``
        The training rows, in the order the trajectory's steps index them;
        converted to the module's dtype and moved to the device of the work.
    X : array-like or torch.Tensor of shape ``(n_X, *input_shape)``
        Query rows, likewise.
    exact : bool, default=False
        Average the query-side Jacobian over each step's segment, which
        makes the decomposition exact; needs every step's parameters
        (``record_every=1``). Costs ``n_nodes`` times the first-order form.
    n_nodes : int, default=4
        Gauss-Legendre nodes per step for ``exact=True``, or per piece of a
        step between kinks. Four reach float64 rounding for smooth
        activations at ordinary step sizes, and are exact on the pieces of a
        piecewise-linear network of up to 8 parameterised layers in a chain
        (its Jacobian is a polynomial of degree below that number there, and
        ``n`` nodes integrate degree ``2n - 1``). On an ``nn.Sequential``
        chain the pieces get no more than the ``ceil(L / 2)`` nodes their
        degree needs (``L`` parameterised layers; one for one hidden layer).
    kinks : "auto" or bool, default="auto"
        For ``exact=True``: split each step's segment where a query's
        activation pattern changes (relu, leaky_relu, hardtanh, max-pooling,
        a comparison...: every discrete decision of the forward pass), and
        integrate each piece with ``n_nodes`` nodes, which makes
        piecewise-linear networks exact. Plain sgd stays on the engines when
        the engine's query states follow per-row points (structured); other
        solvers and engines walk the steps backwards
        (``_explain/_query_side.py``). "auto" splits when the forward pass
        makes such decisions and can be evaluated row by row
        (``torch.func.vmap``), else warns and integrates across kinks; True
        insists (an error when it cannot); False never splits. Ignored when
        ``exact=False``.
    kernel : {"path", "loss_weighted"}, default="path"
        What :attr:`KernelMachine.kernel` holds: the path kernel, or the
        loss-weighted path kernel of Remark 2 (then all coefficients are -1).
    engine : {"auto", "structured", "hooks", "jacobian", "ntk_vp"}, default="auto"
        How the Jacobian work is done (see ``path_kernel``): the products
        between query and training rows of the engine route, and the path
        kernel.
    working_memory : float, default=None
        Budget in MiB for one block of query rows. Blocks hold 512 rows
        whenever that fits, and a power of two fewer otherwise, so results
        are bit-identical across every budget that fits 512 rows. On a CUDA
        device blocks are the device's (up to 8192 rows within half its
        free memory), whatever the budget.
    n_jobs : int, default=None
        Each query block and checkpoint is a joblib task, threads unless a
        ``joblib.parallel_config`` chooses another backend (dask, for a
        cluster); the result is bit-identical whatever runs them.
    verbose : int, default=0
        Show a progress bar over query blocks and steps.
    device : str or torch.device, default=None
        Where to compute; the module's device when None.

    Returns
    -------
    machine : KernelMachine

    Examples
    --------
    >>> import torch
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_pathkernel import PathKernelRegressor, decompose_path
    >>> X, y = load_diabetes(return_X_y=True)
    >>> X, y = scale(X)[:100], scale(y)[:100]
    >>> est = PathKernelRegressor((8,), solver="adam", learning_rate_init=0.01,
    ...                           max_iter=10, dtype="float64",
    ...                           random_state=0).fit(X, y)
    >>> machine = decompose_path(est.module_, est.trajectory_, torch.tensor(X),
    ...                          torch.tensor(X[:3]), exact=True)
    >>> machine.contributions.shape, bool(machine.error["max_rel"] < 1e-10)
    ((3, 100, 1), True)

    A relu network's steps are split at each query's kinks:

    >>> relu = PathKernelRegressor((8,), activation="relu", max_iter=10,
    ...                            dtype="float64", random_state=0).fit(X, y)
    >>> machine = decompose_path(relu.module_, relu.trajectory_, torch.tensor(X),
    ...                          torch.tensor(X[:3]), exact=True)
    >>> machine.kinks, bool(machine.error["max_rel"] < 1e-12)
    (True, True)
    """
    _check_options(trajectory, exact=exact, n_nodes=n_nodes, kernel=kernel, kinks=kinks)
    module, dtype, device = placement(module, device)
    rows = {"module": module, "dtype": dtype, "device": device}
    X_train = kernel_rows(X_train, name="X_train", **rows)
    X = kernel_rows(X, name="X", like=X_train, like_name="X_train", **rows)
    output_width(module, X_train, name="X_train")  # a clear error if it fails
    # One engine for the products and the kernel, bound once: in the
    # kernel's metric when it has one (Adam), which only the walk needs.
    points = kernel_points(trajectory) if kernel == "path" else []
    bound = kernel_engine(
        engine, module, trajectory.parameter_names, points, example=X[:1]
    )
    with torch.no_grad():
        network_output = forward(module, X).double()
    n_X, n_outputs = network_output.shape
    if kernel == "loss_weighted" and n_outputs != 1:
        raise ValueError(
            "The loss-weighted kernel (Remark 2) is defined for one output; "
            f"this network has {n_outputs}."
        )
    check_result_fits(
        (n_X, X_train.shape[0], n_outputs),
        what="The contributions",
        remedy="Decompose fewer query rows at a time, e.g. decompose(X[i:j]).",
    )
    options = dict(working_memory=working_memory, n_jobs=n_jobs, verbose=verbose)
    split = _kink_search(module, trajectory, X, kinks) if exact else None
    contributions, bias = _contributions(
        module, bound, trajectory, X_train, X, n_outputs, exact, n_nodes, split,
        **options,
    )  # fmt: skip
    if kernel == "loss_weighted":
        kernel_matrix = -contributions[:, :, 0]
    else:
        kernel_matrix = kernel_sum(
            bound,
            points,
            X,
            X_train,
            n_outputs=n_outputs,
            network_dtype=dtype,
            **options,
        )
    return KernelMachine(
        bias,
        contributions,
        network_output.cpu().numpy(),
        kernel_matrix,
        exact,
        kinks=split is not None,
    )


def _contributions(
    module,
    bound,
    trajectory,
    X_train,
    X,
    n_outputs,
    exact,
    n_nodes,
    split,
    *,
    working_memory,
    n_jobs,
    verbose,
):
    """``(contributions, bias)`` by the route the solver and the form need.

    ``split``: None, or how :func:`_kink_search` finds the pattern changes.
    """
    if split is not None and chain_layers(module) is not None:
        # No more nodes than the pieces' degree needs: the same result.
        n_nodes = min(n_nodes, max(1, (chain_layers(module) + 1) // 2))
    nodes, node_weights = _quadrature(n_nodes if exact else 0)
    solver = trajectory.solver
    # Each step's gradient moves the query once, by p_s J_s(x): the engines'
    # products between query and training rows. Otherwise a gradient acts over
    # later steps through P_t (and Jbar_t): the backward walk of
    # _explain/_query_side.py, which also takes per-row nodes between kinks.
    engine = solver.plain or (not exact and not solver.diagonal)
    if split is not None:
        # The engines, when their query states can be built row by row.
        engine = solver.plain and _engine_takes_row_points(module, bound, trajectory, X)
        split = {**split, "engine": engine}
    route = _engine_route if engine else _walk_route
    plan = route(
        module,
        bound,
        trajectory,
        X_train,
        X,
        n_outputs=n_outputs,
        exact=exact,
        nodes=nodes,
        node_weights=node_weights,
        working_memory=working_memory,
        split=split,
    )
    # A CUDA out-of-memory error starts the blocks again with half as many rows.
    return halve_on_device_oom(
        lambda block: _gather(
            plan._replace(block=block), trajectory, n_outputs, exact, n_jobs, verbose
        ),
        plan.block,
        what="The decomposition",
    )


class _Route(NamedTuple):
    """How a route computes a query block's contributions (:func:`_gather`)."""

    function: object  # a task: function(shared, q0, q1, *checkpoint())
    shared: Shared
    checkpoints: list  # callables giving each checkpoint's task arguments
    fold: object  # fold(parts, b, progress) -> (phi, bias) of one block
    block: int  # query rows per block
    # tasks(block) -> (function, checkpoints) for blocks of that many rows
    # (stacks of checkpoints on a device), or None: function and checkpoints.
    tasks: object = None


def _engine_route(
    module,
    bound,
    trajectory,
    X_train,
    X,
    *,
    n_outputs,
    exact,
    nodes,
    node_weights,
    working_memory,
    split,
):
    """The route through the engines' products: a task per block and checkpoint.

    For plain sgd, and the first-order form with momentum (``P_t = I``).
    """
    n_train = X_train.shape[0]
    walk = _Walk(
        module=module,
        bound=bound,
        X_train=X_train,
        X=X,
        nodes=nodes,
        node_weights=node_weights,
        alpha=trajectory.alpha,
        kinks=split is not None,
        batched_patterns=bool(split and split["batched"]),
    )
    itemsize = next(module.parameters()).element_size()
    block = tile_within_budget(
        working_memory,
        # Per query row: its states, and per training row and output the
        # float64 contributions, one task's returned parts (float64 at most)
        # and three temporaries.
        bound.bytes_per_row(n_outputs, itemsize) * (1 + len(nodes))
        + n_train * n_outputs * (16 + 3 * itemsize),
        X.device,  # a CUDA device's tiles: a few query blocks
    )

    def fold(parts, b, progress):
        # Folded in checkpoint and step order: the same operations whatever
        # ran the tasks.
        phi = torch.zeros(
            (b.shape[0], n_train, n_outputs), dtype=torch.float64, device=b.device
        )
        for steps in parts:
            for batch, part, bias_term in steps:
                phi.index_add_(1, batch.to(b.device), part.double())
                b -= bias_term
                progress.update(1)
        return phi, b

    def tasks(rows):
        # Checkpoints go in stacks on a device (structured engine); fewer
        # after an out-of-memory error halved the block.
        per_row = bound.bytes_per_row(n_outputs, itemsize)
        return _checkpoint_tasks(
            trajectory, walk, exact, per_row, rows, shrink=block // rows
        )

    return _Route(
        _checkpoint_part, walk, _checkpoints(trajectory, exact), fold, block, tasks
    )


def _gather(plan, trajectory, n_outputs, exact, n_jobs, verbose):
    """Contributions and bias of the query rows, block by block.

    One task per query block and checkpoint of ``plan`` (``block_parts``);
    ``plan.fold(parts, b, progress)`` adds a block's parts, in checkpoint
    order, to ``b = f(x; w_0)`` on the block and returns the block's
    ``(phi, bias)``, float64 tensors.
    """
    walk = plan.shared
    X, n_train = walk.X, walk.X_train.shape[0]
    blocks, outputs = _query_blocks(walk.module, trajectory, X, plan.block)
    contributions = np.zeros((X.shape[0], n_train, n_outputs))
    bias = np.zeros((X.shape[0], n_outputs))
    progress = _progress(verbose, len(blocks) * trajectory.n_steps, exact)
    function, checkpoints = plan.function, plan.checkpoints
    if plan.tasks is not None:
        function, checkpoints = plan.tasks(plan.block)
    runs = block_parts(function, walk, blocks, checkpoints, n_jobs=n_jobs)
    with progress:
        for ((q0, q1), parts), b in zip(runs, outputs):
            phi, b = plan.fold(parts, b, progress)
            contributions[q0:q1] = phi.cpu().numpy()
            bias[q0:q1] = b.cpu().numpy()
    return contributions, bias


def _query_blocks(module, trajectory, X, block):
    """The query blocks of ``block`` rows, and ``f(x; w_0)`` on each (float64).

    Under ``TORCH_FUNC_LOCK``, as every functional use of the module:
    ``functional_call`` swaps the module's parameters for the call.
    """
    blocks = row_blocks(X.shape[0], block, tiles_per_block=1)
    with torch.no_grad(), TORCH_FUNC_LOCK:
        initial = trajectory.parameters(0, device=X.device)
        outputs = [forward_at(module, initial, X[q0:q1]).double() for q0, q1 in blocks]
    return blocks, outputs


def _progress(verbose, total, exact):
    """The decomposition's progress bar over (query block, step) pairs."""
    return progress_bar(
        verbose,
        total=total,
        desc="decompose" + (" (exact)" if exact else ""),
        unit="step",
    )


def _check_options(trajectory, *, exact, n_nodes, kernel, kinks):
    """Refuse what :func:`decompose_path` cannot do, before any work."""
    if not (isinstance(kinks, bool) or (isinstance(kinks, str) and kinks == "auto")):
        raise ValueError(f"kinks must be 'auto', True or False; got {kinks!r}.")
    if kernel not in ("path", "loss_weighted"):
        raise ValueError(
            f"kernel must be 'path' or 'loss_weighted'; got {kernel!r} instead."
        )
    if exact and trajectory.record_every != 1:
        raise ValueError(
            "The exact decomposition needs the parameters at every step, but "
            f"this path kept one checkpoint every {trajectory.record_every} "
            "steps. Refit with record_every=1, or use exact=False."
        )
    if exact and n_nodes < 1:
        raise ValueError(f"n_nodes must be at least 1; got {n_nodes}.")


@dataclass
class _Walk(Shared):
    """What every task of one engine-route decomposition shares."""

    module: torch.nn.Module
    bound: object  # the engine, bound to the module
    X_train: torch.Tensor
    X: torch.Tensor  # the query rows
    nodes: list  # points of each step's segment where the query side is taken
    node_weights: list  # their quadrature weights, summing to 1
    alpha: float  # the L2 strength
    # Exact form: the nodes of each piece between a query's kinks instead
    # (_kinks.py), patterns found by a batched forward or not.
    kinks: bool = False
    batched_patterns: bool = False


def _checkpoints(trajectory, exact):
    """Each checkpoint's task arguments ``(parameters, step records)``.

    Loaded when called (``block_parts``). With heavy-ball or Nesterov
    momentum (P_t = I), first order: a step's gradient moves the query by
    p_s J_s(x) (p_s = eps_s for plain sgd).
    """
    step_sizes = trajectory.effective_step_sizes
    return [
        lambda k=k, steps=steps: (
            compact(trajectory.parameters(k)),
            _step_records(trajectory, steps, exact, step_sizes),
        )
        for k, steps in enumerate(_steps_by_checkpoint(trajectory))
    ]


def _checkpoint_tasks(trajectory, walk, exact, per_row, block, shrink):
    """``(task, checkpoints)``: one task per checkpoint, or on a device stacks.

    The structured engine's products run a stack of checkpoints under
    ``torch.func.vmap`` (``_compute/_stacks.py``): checkpoints in a row
    whose steps have the same batch sizes (with ``record_every=1`` and a
    full batch, all of them), as many as a quarter of the device's budget
    holds of one checkpoint's query and batch states and its steps'
    contributions, fewer by ``shrink`` after an out-of-memory error. Not
    across kinks: their search waits for the device. Elsewhere, and on the
    CPU, one task per checkpoint.
    """
    single = (_checkpoint_part, _checkpoints(trajectory, exact))
    if walk.bound.name != "structured" or walk.kinks:
        return single
    by_checkpoint = list(enumerate(_steps_by_checkpoint(trajectory)))
    batches = {
        k: tuple(trajectory.step(t).batch.shape[0] for t in steps)
        for k, steps in by_checkpoint
    }
    widest = max((max(b, default=0) for b in batches.values()), default=0)
    steps = max(len(b) for b in batches.values())
    n_outputs = trajectory.step(0).output_gradients.shape[1]
    per_checkpoint = per_row * (block * (1 + len(walk.nodes)) + widest) + (
        steps * block * widest * n_outputs * (16 + 3 * walk.X.element_size())
    )
    size = stack_size(walk.X.device, per_checkpoint, len(by_checkpoint), shrink=shrink)
    if size <= 1:
        return single
    groups = consecutive_groups(by_checkpoint, size, key=lambda kc: batches[kc[0]])
    step_sizes = trajectory.effective_step_sizes
    return _stacked_checkpoint_part, [
        lambda group=group: _stacked_arguments(trajectory, group, exact, step_sizes)
        for group in groups
    ]


def _stacked_arguments(trajectory, group, exact, step_sizes):
    """A stack of checkpoints' task arguments: stacked parameters and records.

    Each checkpoint of ``group`` (``(k, steps)``, equal batch sizes) gives
    its parameters and its steps' records (:func:`_step_records`); the
    records at each step position are stacked: step sizes into a float64
    tensor, batches, weights, loss derivatives and ends along a new axis.
    """
    records = [
        _step_records(trajectory, steps, exact, step_sizes) for _, steps in group
    ]
    stacked = []
    for position in zip(*records):  # the j-th step of every checkpoint
        steps = [step for step, _ in position]
        stacked.append(
            (
                Step(
                    torch.tensor([s.step_size for s in steps], dtype=torch.float64),
                    *(torch.stack(fields) for fields in list(zip(*steps))[1:]),
                ),
                None
                if position[0][1] is None
                else stack_mappings([e for _, e in position]),
            )
        )
    start = stack_mappings([compact(trajectory.parameters(k)) for k, _ in group])
    return start, stacked


def _stacked_checkpoint_part(walk, q0, q1, start, steps):
    """:func:`_checkpoint_part` of a stack of checkpoints at once (``vmap``).

    Returns the parts of :func:`_checkpoint_part` for each checkpoint of
    the stack in turn, so the caller folds them in checkpoint and step
    order as it does one checkpoint's.
    """
    Xq = walk.X[q0:q1]
    device = Xq.device
    start = to_device(start, device)
    with torch.no_grad():
        static = walk.cached(
            ("static", q0, q1), lambda: walk.bound.static(Xq, walk.X_train)
        )

        def one(start, step_size, batch, batch_weights, output_gradients, end):
            train_state = walk.bound.state(start, walk.X_train[batch])
            vectors = (
                -step_size.to(Xq.dtype)
                * batch_weights.to(Xq.dtype)[:, None]
                * output_gradients.to(Xq.dtype)
            )
            batch_static = None if static is None else static[:, batch]
            train = (train_state, vectors, batch_static, step_size)
            nodes = _node_part if end is None else _nodes_at_once
            total, bias_term = nodes(walk, Xq, start, end, train)
            return (total, bias_term) if walk.alpha else (total,)

        stacked = []
        for step, end in steps:
            out = stacked_call(
                one, start, *to_device(step._asdict(), device).values(),
                to_device(end, device),
            )  # fmt: skip
            stacked.append((step.batch, *out))
    return [
        (batch[k], total[k], bias[0][k] if bias else 0.0)
        for k in range(next(iter(start.values())).shape[0])
        for batch, total, *bias in stacked
    ]


def _step_records(trajectory, steps, exact, step_sizes):
    """What a task needs of ``steps``: each step, and its end when exact.

    The step size recorded is ``step_sizes[t]``: ``eps_t`` for plain sgd,
    the effective ``p_t`` for momentum's first-order form.
    """
    records = []
    for t in steps:
        step = trajectory.step(t)
        tensors = compact(
            {
                "batch": step.batch,
                "batch_weights": step.batch_weights,
                "output_gradients": step.output_gradients,
            }
        )
        end = compact(parameters_after(trajectory, t)) if exact else None
        records.append((Step(float(step_sizes[t]), **tensors), end))
    return records


def _walk_route(
    module,
    bound,
    trajectory,
    X_train,
    X,
    *,
    n_outputs,
    exact,
    nodes,
    node_weights,
    working_memory,
    split,
):
    """The route of ``walk_block`` (``_explain/_query_side.py``).

    One joblib task per query block, for the whole path: a block walks every
    step, so its recursion stays in one task, and blocks run in parallel.
    The engine (``bound``) has no part in it.
    """
    n_train = X_train.shape[0]
    d = trajectory.n_parameters
    itemsize = X.element_size()
    # Per query row and output: Jbar_s^T (which becomes z_s), B_s and q_s
    # (d each, float64), one node's Jacobian in the network's dtype with
    # jacrev's own copy; its float64 contributions and their transposed copy.
    # Split at kinks: a node's parameters too, one copy per row (vmap).
    per_row = n_outputs * (d * (3 * 8 + 2 * itemsize) + n_train * 16)
    per_row += 0 if split is None else d * itemsize
    if exact and split is None and device_budget(X.device) is not None:
        # On a device every node's Jacobian at once, and a float64 copy.
        n = len(nodes)
        per_row += n_outputs * d * ((n - 1) * 2 * itemsize + (n + 1) * 8)
    block = tile_within_budget(working_memory, per_row, X.device)
    # Per-example gradients: a fixed block of training rows, a property of
    # the network and device (as the kernels' column chunks), so bits do not
    # depend on the budget.
    rows = grid(d * (8 + 2 * itemsize), X.device)[1]
    walk = QueryWalk(
        module=module,
        trajectory=trajectory,
        X_train=X_train,
        X=X,
        n_outputs=n_outputs,
        nodes=nodes,
        node_weights=node_weights,
        exact=exact,
        rows=rows,
        kinks=split is not None,
        batched_patterns=bool(split and split["batched"]),
    )

    def fold(parts, b, progress):
        ((phi, bias_term),) = parts  # the whole path, one part
        progress.update(trajectory.n_steps)
        return phi, b.sub_(bias_term)

    # The whole path is one "checkpoint": a task's arguments are its block's.
    return _Route(walk_block, walk, [lambda: ()], fold, block)


def _checkpoint_part(walk, q0, q1, start, steps):
    """One checkpoint's steps on the query rows ``q0:q1``, not yet added up.

    For each step, the query side is taken at each quadrature node of the
    segment from ``start`` to the step's end (the first-order form: only
    ``start`` itself), the training side at ``start``; the step's loss
    derivatives are folded into the training rows' states
    (``contract_vector``). The query rows' static Gram against the training
    rows is the same at every checkpoint: kept while the block's checkpoints
    follow each other on this thread (``Shared.cached``).

    Returns
    -------
    parts : list of (batch, part, bias_term), one per step
        ``phi[:, batch] += part`` and ``b -= bias_term``: the step's
        contributions ``(n_q, |B_t|, O)`` (the network's dtype for the
        first-order form, float64 summed over the nodes when exact) and its
        L2 bias term ``(n_q, O)`` (0.0 without L2).
    """
    Xq = walk.X[q0:q1]
    device = Xq.device
    start = {n: p.to(device) for n, p in start.items()}
    parts = []
    with torch.no_grad():
        static = walk.cached(
            ("static", q0, q1), lambda: walk.bound.static(Xq, walk.X_train)
        )
        for step, end in steps:
            batch = step.batch.to(device)
            train_state = walk.bound.state(start, walk.X_train[batch])
            vectors = (
                -step.step_size
                * step.batch_weights.to(device, Xq.dtype)[:, None]
                * step.output_gradients.to(device, Xq.dtype)
            )
            batch_static = None if static is None else static[:, batch]
            train = (train_state, vectors, batch_static, step.step_size)
            if end is not None:
                end = {n: p.to(device) for n, p in end.items()}
            if walk.kinks:
                total, bias_term = _kinked_part(walk, Xq, start, end, train)
            else:
                total, bias_term = _node_part(walk, Xq, start, end, train)
            parts.append((step.batch, total, bias_term))
    return parts


def _node_part(walk, Xq, start, end, train):
    """A step's contributions and L2 bias term at the segment's shared nodes.

    ``train``: the batch rows' state, the step's vectors, the batch's
    static Gram and the step size. The first-order form (``end`` None) takes
    ``start`` alone.
    """
    train_state, vectors, batch_static, step_size = train
    points = [start]
    if end is not None:
        points = [
            {n: start[n] + s * (end[n] - start[n]) for n in start} for s in walk.nodes
        ]
    total, bias_term = None, 0.0
    for weight, point in zip(walk.node_weights, points):
        part = walk.bound.contract_vector(
            walk.bound.state(point, Xq), train_state, vectors, batch_static
        )
        if len(points) == 1:
            total = part  # weight 1: added as it is
        else:
            if total is None:
                total = torch.zeros_like(part, dtype=torch.float64)
            total.add_(part.double(), alpha=weight)
        if walk.alpha:
            # Remark 4: the L2 pull, through the same (averaged) Jacobian.
            bias_term = bias_term + weight * walk.alpha * (
                step_size * _jvp(walk.module, point, Xq, start).double()
            )
    return total, bias_term


def _nodes_at_once(walk, Xq, start, end, train):
    """:func:`_node_part` of the exact form, every node of the segment at once.

    The query states at the segment's nodes go through ``torch.func.vmap``
    over the node (one launch per operation for all nodes; a checkpoint
    stack's task, ``_stacked_checkpoint_part``), and their parts are
    weighted and summed in float64 in one product.
    """
    train_state, vectors, batch_static, step_size = train
    s = torch.tensor(walk.nodes, dtype=Xq.dtype, device=Xq.device)
    weights = torch.tensor(walk.node_weights, dtype=torch.float64)

    def at(s_q):
        point = {n: start[n] + s_q * (end[n] - start[n]) for n in start}
        state = walk.bound.state(point, Xq)
        part = walk.bound.contract_vector(state, train_state, vectors, batch_static)
        if not walk.alpha:
            return (part,)
        return part, _jvp(walk.module, point, Xq, start)

    out = stacked_call(at, s)
    bias_term = 0.0
    if walk.alpha:  # Remark 4: the L2 pull, through the averaged Jacobian
        bias_term = walk.alpha * (step_size * weighted_sum(weights, out[1]))
    return weighted_sum(weights, out[0]), bias_term


def _kinked_part(walk, Xq, start, end, train):
    """:func:`_node_part` at each row's nodes of the pieces between its kinks.

    Each round's query states are taken at per-row points by a batched
    forward (``RowPoints``), which an engine computing its states by
    explicit tensor code follows (``_engine_takes_row_points``).
    """
    train_state, vectors, batch_static, step_size = train
    delta = {n: end[n] - start[n] for n in start}
    kinks = segment_kinks(walk.module, start, end, Xq, batched=walk.batched_patterns)
    total, bias_term = None, 0.0
    rounds = piece_rounds(kinks, walk.nodes, walk.node_weights)
    for rows, s, w in in_chunks(rounds, Xq.shape[0]):
        rows, w = rows.to(Xq.device), w.to(Xq.device)
        with RowPoints(start, delta, s.to(Xq)):
            state = walk.bound.state(start, Xq[rows])
        part = walk.bound.contract_vector(
            state,
            train_state,
            vectors,
            None if batch_static is None else batch_static[rows],
        )
        if total is None:
            total = torch.zeros(
                (Xq.shape[0], *part.shape[1:]), dtype=torch.float64, device=Xq.device
            )
        total.index_add_(0, rows, part.double() * w[:, None, None])
        if walk.alpha:
            pull = _rows_jvp(walk.module, start, delta, s.to(Xq), Xq[rows], start)
            if not torch.is_tensor(bias_term):
                bias_term = torch.zeros_like(total[:, 0])
            bias_term.index_add_(
                0, rows, pull.double() * (walk.alpha * step_size * w)[:, None]
            )
    return total, bias_term


def _rows_jvp(module, start, delta, s, X, tangent):
    """``J(x_i; start + s_i delta) @ tangent`` row by row: (n, O)."""

    def one_row(s_i, x):
        point = {n: start[n] + s_i * delta[n] for n in start}
        return jvp(lambda p: forward_at(module, p, x[None])[0], (point,), (tangent,))[1]

    with TORCH_FUNC_LOCK:
        return vmap(one_row)(s, X)


def _engine_takes_row_points(module, bound, trajectory, X):
    """Whether ``bound`` builds states at per-row points under ``RowPoints``.

    An engine whose states come from explicit tensor code (the structured
    engine) follows the batched forward; one that runs autograd through
    the module (hooks, Jacobian, ntk_vp) would take its backward at the
    shared parameters. Checked on two rows against states at each row's
    own point, along a direction as large as the parameters.
    """
    start = trajectory.parameters(0, device=X.device)
    delta = probe_direction(start)
    rows = X[:2]
    s = torch.linspace(0.25, 0.75, len(rows), dtype=X.dtype, device=X.device)
    with torch.no_grad():
        train = bound.state(start, rows)
        vectors = torch.ones_like(forward_at(module, start, rows))
        static = bound.static(rows, rows)
        try:
            with RowPoints(start, delta, s):
                state = bound.state(start, rows)
            batched = bound.contract_vector(state, train, vectors, static)
        except Exception:  # an engine the batched forward cannot reach
            return False
        direct = []
        for i, a in enumerate(s):
            point = {n: start[n] + a * delta[n] for n in start}
            state = bound.state(point, rows[i : i + 1])
            own = None if static is None else static[i : i + 1]
            direct.append(bound.contract_vector(state, train, vectors, own))
        direct = torch.cat(direct)
    scale = direct.abs().max().item() + 1e-300
    tolerance = 1e-8 if X.dtype == torch.float64 else 1e-3
    return bool((batched - direct).abs().max() <= tolerance * scale)


def _jvp(module, parameters, X, tangent):
    """``J(X; parameters) @ tangent``, shape (n, O)."""
    with TORCH_FUNC_LOCK:
        _, out = jvp(lambda p: forward_at(module, p, X), (parameters,), (tangent,))
    return out


def _kink_search(module, trajectory, X, kinks):
    """How the exact form finds kinks: None (no split) or ``{"batched": bool}``.

    "auto" splits when the forward pass makes discrete decisions
    (``_kinks.probe``) and can be evaluated row by row; it warns when it
    cannot, and integrates across the kinks.
    """
    if kinks is False:
        return None
    start = trajectory.parameters(0, device=X.device)
    try:
        names, batched = probe(module, start, X[:2])
    except Exception as exc:  # the user's module under torch.func.vmap
        if kinks is True:
            raise ValueError(
                "kinks=True needs the network's forward pass row by row "
                f"(torch.func.vmap), which failed: {exc}. Use kinks=False."
            ) from exc
        warnings.warn(
            "The exact decomposition could not search this network for kinks "
            "(its forward pass fails under torch.func.vmap: "
            f"{type(exc).__name__}); it integrates across them with shared "
            "Gauss-Legendre nodes, exact only for smooth networks. The "
            "result's error attribute reports the gap.",
            UserWarning,
            stacklevel=3,
        )
        return None
    if not names and kinks == "auto":
        return None  # smooth: today's routes, unchanged
    return {"batched": batched}


def _steps_by_checkpoint(trajectory):
    """The steps each checkpoint stands for (its kernel is used for them)."""
    bounds = np.append(trajectory.checkpoint_steps, trajectory.n_steps)
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _quadrature(n_nodes):
    """Gauss-Legendre nodes in [0, 1] and weights summing to 1.

    Zero nodes stands for the first-order form: the segment's left end alone.
    """
    if n_nodes == 0:
        return [0.0], [1.0]
    nodes, weights = np.polynomial.legendre.leggauss(n_nodes)
    return list((nodes + 1) / 2), list(weights / 2)
