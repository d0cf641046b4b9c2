"""The decomposition for solvers whose gradients act over several steps.

With momentum, Nesterov, Adam or AdamW a gradient taken at step ``s`` moves
the parameters at every later step ``t``, by ``e_{t,s} beta_{t,s} P_t``
(docs/design.md, sections 4 and 12; ``e_{t,s}`` is ``eps_t``, or ``eps_s`` in
sgd's velocity form). Collecting, for each ``s``, what its gradient did to
the query's output gives the query-side direction::

    q_s(x) = sum_{t>=s} e_{t,s} beta_{t,s} P_t Jbar_t(x)^T      (d x O per query)
    phi_i(x) = - sum_s c_{i,s} (J_s(x_i) q_s(x))^T g_{i,s}
    b(x) = f(x; w_0) - alpha sum_s q_s(x)^T w_s - lambda sum_t eps_t Jbar_t(x) w_t

``beta_{t,s} = gamma kappa_t rho^(t-s) + delta [s = t]`` makes ``q_s`` a
backward recursion in ``s`` (``Solver.recursion``, ``_training/_solvers.py``)::

    z_t = eps_t P_t Jbar_t(x)^T,   B_s = kappa_s z_s + r_s B_{s+1},
    q_s = gamma B_s + delta z_s

with ``r_s = Solver.carry(s)``: ``rho``, times ``eps_s / eps_{s+1}`` in the
velocity form (exactly ``rho`` at a constant rate).

so a query block carries one ``d x (n_q O)`` matrix down the steps and never
anything of size ``n_train x d``. The training side of step ``s`` is its
batch rows' per-example gradients ``c_{i,s} J_s(x_i)^T g_{i,s}`` (blocks of
``rows`` rows, ``torch.func``), multiplied by ``q_s``. The first-order form is
the same walk with ``q_s = Ptilde_s J_s(x)^T``: ``Ptilde_s`` comes from the
same recursion with ``z_t = eps_t P_t`` (a vector), and ``J_s`` is taken at
the checkpoint that stands for step ``s``.

On a device (a CUDA device, or the CPU under ``device_policy``) the walk is
shaped for it: the path's checkpoints, preconditioners and step records go
up once per call (:class:`PathTensors`), so that no step copies from the
host or waits for the device, and the exact form's nodes are one batched
Jacobian per step (:func:`_nodes_jacobian_T`). The CPU's numbers are
computed as before, bit for bit.

For a piecewise-linear network's exact form, each row's ``Jbar_t(x)`` is
summed over the pieces of the step between its kinks (``_kinks.py``), at
per-row points; plain sgd then walks too, with ``kappa = 1``, ``rho = 0``,
``gamma = 1``, ``delta = 0``, when the engine cannot build its query states
at per-row points.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch.func import grad, jacrev, vmap

from .._compute._blocking import device_budget
from .._compute._tasks import Shared
from .._model._network import forward_at
from ..engines import TORCH_FUNC_LOCK
from ._kinks import in_chunks, piece_rounds, segment_kinks


@dataclass
class QueryWalk(Shared):
    """What every query block of one decomposition shares (``_compute/_tasks.py``).

    Unlike the kernels' tasks, a block walks every step of the path (the
    recursion carries ``B_s`` from step to step), so the trajectory itself
    is shared: dask scatters it to each worker once per call.
    """

    module: torch.nn.Module
    trajectory: object
    X_train: torch.Tensor
    X: torch.Tensor  # the query rows
    n_outputs: int
    nodes: list  # Gauss-Legendre points of a segment; [0.0] first-order
    node_weights: list
    exact: bool
    rows: int  # training rows per block of per-example gradients
    # Exact form: split each segment where a query's activation pattern
    # changes (_kinks.py), finding the changes by a batched forward or not.
    kinks: bool = False
    batched_patterns: bool = False

    def __sizeof__(self):
        trajectory = self.trajectory
        itemsize = self.X.element_size()
        stored = len(trajectory) + 1
        if trajectory.solver.diagonal:
            stored += trajectory.n_steps
        return Shared.__sizeof__(self) + stored * trajectory.n_parameters * itemsize


def flat_jacobian(module, parameters, X):
    """``J(X)`` at ``parameters``: shape (n, O, d), the trajectory's order.

    One ``jacrev`` per row (``vmap``), so the cost is ``n O`` backward
    passes of one row each.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._explain._query_side import flat_jacobian
    >>> net = torch.nn.Linear(2, 1)
    >>> params = {n: p.detach() for n, p in net.named_parameters()}
    >>> flat_jacobian(net, params, torch.tensor([[1.0, 2.0]]))  # [x, 1]
    tensor([[[1., 2., 1.]]])
    """
    return torch.cat(_jacobian_pieces(module, parameters, X), 2)


def per_example_gradients(module, parameters, X, cotangents):
    """``J(x_i)^T v_i`` for every row: shape (n, d), the trajectory's order.

    The gradient of the scalar ``v_i . f(x_i)`` with respect to the
    parameters, row by row (``vmap`` of ``grad``).

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._explain._query_side import per_example_gradients
    >>> net = torch.nn.Linear(2, 1)
    >>> params = {n: p.detach() for n, p in net.named_parameters()}
    >>> X = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    >>> per_example_gradients(net, params, X, torch.tensor([[1.0], [-2.0]]))
    tensor([[ 1.,  2.,  1.],
            [-6., -8., -2.]])
    """
    return torch.cat(_gradient_pieces(module, parameters, X, cotangents), 1)


def _jacobian_pieces(module, parameters, X):
    """:func:`flat_jacobian` one parameter at a time: (n, O, numel) each."""

    def one_row(p, x):
        return forward_at(module, p, x.unsqueeze(0))[0]

    with TORCH_FUNC_LOCK:
        jac = vmap(jacrev(one_row), in_dims=(None, 0))(parameters, X)
    return [jac[name].reshape(*jac[name].shape[:2], -1) for name in parameters]


def _gradient_pieces(module, parameters, X, cotangents):
    """:func:`per_example_gradients` one parameter at a time: (n, numel) each."""

    def one_row(p, x, v):
        return (forward_at(module, p, x.unsqueeze(0))[0] * v).sum()

    with TORCH_FUNC_LOCK:
        grads = vmap(grad(one_row), in_dims=(None, 0, 0))(parameters, X, cotangents)
    return [grads[name].reshape(X.shape[0], -1) for name in parameters]


def walk_block(walk, q0, q1):
    """The contributions and bias terms of the query rows ``q0:q1``.

    Walks the steps from the last to the first, carrying ``B_s`` (module
    docstring); everything is accumulated in float64. The path's tensors
    come from :class:`PathTensors`: on a device, uploaded once per call.

    Returns
    -------
    phi : torch.Tensor of float64, shape (n_q, n_train, O)
        ``phi_i(x)`` for every training row.
    bias_term : torch.Tensor of float64, shape (n_q, O)
        What the L2 and decay terms subtract from ``f(x; w_0)``.
    """
    trajectory, solver = walk.trajectory, walk.trajectory.solver
    Xq = walk.X[q0:q1]
    device = Xq.device
    n_q, n_outputs = Xq.shape[0], walk.n_outputs
    n_train = walk.X_train.shape[0]
    step_sizes = trajectory.step_sizes
    steps = trajectory.checkpoint_steps
    path = walk.cached(
        ("path", str(device)),
        lambda: PathTensors(trajectory, device, walk.X.dtype, after=walk.exact),
    )
    phi = torch.zeros((n_train, n_q * n_outputs), dtype=torch.float64, device=device)
    bias = torch.zeros(n_q * n_outputs, dtype=torch.float64, device=device)
    carried, cached = None, (None, None)  # first order: (k, J_k(x)^T)
    for s in range(trajectory.n_steps - 1, -1, -1):
        kappa, _, gamma, delta = solver.recursion(s)
        rho = solver.carry(s, step_sizes)  # times eps_s / eps_{s+1} for velocity
        eps = float(step_sizes[s])
        P = path.preconditioner(s)
        # The training side's parameters: w_s, or the checkpoint standing for s.
        k = int(np.searchsorted(steps, s, side="right")) - 1
        flat, start = path.parameters(k)
        w = flat.double()
        if walk.exact:
            JT = _segment_jacobian_T(walk, path, flat, k, Xq)
        else:
            if cached[0] != k:
                cached = (k, None)  # free the last one first
                cached = (k, _query_jacobian_T(walk.module, [start], [1.0], Xq))
            JT = cached[1]
        if solver.weight_decay:
            bias.add_(w @ JT, alpha=eps * solver.weight_decay)
        if walk.exact:  # z_s = eps_s P_s Jbar_s^T, in Jbar's place
            z = JT.mul_(eps) if P is None else JT.mul_(P[:, None]).mul_(eps)
        else:
            z = eps if P is None else eps * P
        if carried is None or not torch.is_tensor(carried):
            carried = kappa * z if carried is None else kappa * z + rho * carried
        else:  # in place: one d x (n_q O) matrix fewer at the peak
            carried.mul_(rho).add_(z, alpha=kappa)
        q = gamma * carried + delta * z if delta else gamma * carried
        if not walk.exact:
            q = JT * (q[:, None] if torch.is_tensor(q) else q)
        _training_side(walk, *path.step(s), start, q, phi)
        if solver.alpha:
            bias.add_(w @ q, alpha=solver.alpha)
    phi = phi.T.reshape(n_q, n_outputs, n_train).permute(0, 2, 1)
    return phi, bias.reshape(n_q, n_outputs)


def _training_side(walk, batch, cotangents, parameters, q, phi):
    """``phi[batch] -= (c_i J(x_i)^T g_i) @ q``, a block of batch rows at a time.

    ``cotangents``: the rows' ``c_i g_i``. Parameter by parameter (``addmm``
    into one product), so that the per-example gradients are never
    concatenated into a copy.
    """
    for r0 in range(0, len(batch), walk.rows):
        rows = batch[r0 : r0 + walk.rows]
        pieces = _gradient_pieces(
            walk.module, parameters, walk.X_train[rows], cotangents[r0 : r0 + walk.rows]
        )
        product, offset = None, 0
        for piece in pieces:
            width = piece.shape[1]
            block = q[offset : offset + width]
            if product is None:
                product = piece.double() @ block
            else:
                product.addmm_(piece.double(), block)
            offset += width
        phi.index_add_(0, rows, product, alpha=-1.0)


class PathTensors:
    """The path's tensors a walk reads at each step, on the walk's device.

    On a device (CUDA, or any device under ``device_policy``) every
    checkpoint, preconditioner and step record the walk reads is uploaded
    once, in a few copies, when all of it takes at most an eighth of
    ``device_budget``: a step then copies nothing from the host (a copy from
    pageable memory makes the host wait for the device). Otherwise, and on
    the CPU, each step's tensors are read when the step needs them, as
    before. The numbers are the same either way, so the results' bits do
    not depend on it.

    Parameters
    ----------
    trajectory : Trajectory
    device : torch.device
    dtype : torch.dtype
        The network's: the loss derivatives' dtype in the walk.
    after : bool
        Whether the walk reads ``w_{t+1}`` too (the exact form's segments).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn_pathkernel import PathKernelRegressor
    >>> from sklearn_pathkernel._compute._blocking import device_policy
    >>> from sklearn_pathkernel._explain._query_side import PathTensors
    >>> rng = np.random.RandomState(0)
    >>> est = PathKernelRegressor((3,), solver="adam", max_iter=2,
    ...                           random_state=0).fit(rng.randn(20, 2), rng.randn(20))
    >>> cpu = torch.device("cpu")
    >>> PathTensors(est.trajectory_, cpu, torch.float32, after=True).resident
    False
    >>> with device_policy(2**30):
    ...     path = PathTensors(est.trajectory_, cpu, torch.float32, after=True)
    >>> path.resident, path.parameters(0)[1]["0.weight"].shape
    (True, torch.Size([3, 2]))
    """

    def __init__(self, trajectory, device, dtype, *, after):
        self.trajectory, self.device, self.dtype = trajectory, device, dtype
        first = trajectory.parameters(0)
        self._names = list(first)
        self._shapes = [p.shape for p in first.values()]
        self._numels = [p.numel() for p in first.values()]
        budget = device_budget(device)
        self.resident = budget is not None and (
            _path_bytes(trajectory, after) <= budget // 8
        )
        if self.resident:
            self._upload(after)

    def _upload(self, after):
        trajectory, device = self.trajectory, self.device
        flats = [trajectory.flat_parameters(k) for k in range(len(trajectory))]
        if after:
            final = trajectory.final_parameters()
            flats.append(torch.cat([p.reshape(-1) for p in final.values()]))
        self._flats = torch.stack(flats).to(device)
        P = [trajectory.preconditioner(t) for t in range(trajectory.n_steps)]
        self._preconditioners = None if P[0] is None else torch.stack(P).to(device)
        records = [trajectory.step(t) for t in range(trajectory.n_steps)]
        self._offsets = np.cumsum([0] + [len(r.batch) for r in records])
        self._records = [
            torch.cat([getattr(r, field) for r in records]).to(device)
            for field in ("batch", "batch_weights", "output_gradients")
        ]

    def parameters(self, k):
        """Checkpoint ``k`` (``len(trajectory)``: ``w_T``): ``(flat, mapping)``."""
        if self.resident:
            flat = self._flats[k]
        elif k < len(self.trajectory):
            flat = self.trajectory.flat_parameters(k).to(self.device)
        else:
            final = self.trajectory.final_parameters(device=self.device)
            flat = torch.cat([p.reshape(-1) for p in final.values()])
        return flat, self.mapping(flat)

    def mapping(self, flat, leading=None):
        """A flat vector as a name -> tensor mapping of views.

        ``leading``: the length of a leading dimension of ``flat`` (a stack
        of flat vectors), kept in front of each shape.
        """
        front = () if leading is None else (leading,)
        pieces = torch.split(flat, self._numels, dim=len(front))
        return {
            name: piece.reshape(*front, *shape)
            for name, piece, shape in zip(self._names, pieces, self._shapes)
        }

    def preconditioner(self, t):
        """Adam's ``P_t`` in float64, or None."""
        if not self.resident:
            P = self.trajectory.preconditioner(t)
            return None if P is None else P.to(self.device, torch.float64)
        P = self._preconditioners
        return None if P is None else P[t].double()

    def step(self, t):
        """Step ``t``'s batch and its rows' ``c_i g_i``, shape (b, O)."""
        if self.resident:
            lo, hi = self._offsets[t], self._offsets[t + 1]
            batch, weights, gradients = (r[lo:hi] for r in self._records)
        else:
            batch, weights, gradients = self.trajectory.step(t)[1:]
        device, dtype = self.device, self.dtype
        cotangents = weights.to(device, dtype)[:, None] * gradients.to(device, dtype)
        return batch.to(device), cotangents


def _path_bytes(trajectory, after):
    """Bytes of what :class:`PathTensors` uploads of ``trajectory``."""
    d = trajectory.n_parameters
    total = (len(trajectory) + after) * d * trajectory.flat_parameters(0).element_size()
    P = trajectory.preconditioner(0)
    if P is not None:
        total += trajectory.n_steps * d * P.element_size()
    for t in range(trajectory.n_steps):
        total += sum(tensor.nbytes for tensor in trajectory.step(t)[1:])
    return total


def _segment_jacobian_T(walk, path, flat, k, Xq):
    """``Jbar_s(x)^T`` of the exact form: (d, n_q O) float64.

    At the Gauss-Legendre nodes of the segment from checkpoint ``k``
    (``flat``) to the next, or, with ``walk.kinks``, at those of each piece
    between the query's pattern changes, row by row. The nodes' parameters
    are taken on the flat vectors (the same numbers as parameter by
    parameter, in a few launches); on a device every node's Jacobian comes
    from one ``vmap``.
    """
    end, start = path.parameters(k + 1)[0], path.mapping(flat)
    if walk.kinks:
        end = path.mapping(end)
        kinks = segment_kinks(
            walk.module, start, end, Xq, batched=walk.batched_patterns
        )
        rounds = piece_rounds(kinks, walk.nodes, walk.node_weights)
        chunks = in_chunks(rounds, Xq.shape[0])
        return _rows_jacobian_T(walk.module, start, end, chunks, Xq, walk.n_outputs)
    step = end - flat
    if device_budget(Xq.device) is not None:
        nodes = torch.tensor(walk.nodes, dtype=flat.dtype, device=flat.device)
        points = path.mapping(flat + nodes[:, None] * step, leading=len(nodes))
        return _nodes_jacobian_T(walk.module, points, walk.node_weights, Xq)
    points = [path.mapping(flat + a * step) for a in walk.nodes]
    return _query_jacobian_T(walk.module, points, walk.node_weights, Xq)


def _nodes_jacobian_T(module, points, weights, Xq):
    """:func:`_query_jacobian_T` with the points stacked: one ``vmap`` for all.

    ``points``: a mapping of (n_nodes, *shape) tensors. A device's shape of
    the work: one batched Jacobian and one weighted sum per parameter,
    instead of a Jacobian and an addition per node and parameter.
    """

    def one_row(p, x):
        return forward_at(module, p, x.unsqueeze(0))[0]

    with TORCH_FUNC_LOCK:
        jac = vmap(vmap(jacrev(one_row), in_dims=(None, 0)), in_dims=(0, None))(
            points, Xq
        )
    weights = torch.tensor(weights, dtype=torch.float64, device=Xq.device)
    columns = Xq.shape[0] * next(iter(jac.values())).shape[2]
    summed = [
        torch.tensordot(weights, piece.reshape(len(weights), columns, -1).double(), 1)
        for piece in jac.values()
    ]  # (columns, numel) each, float64
    return torch.cat([block.T for block in summed])


def _rows_jacobian_T(module, start, end, rounds, Xq, n_outputs):
    """``sum_rounds w J(x; start + s (end - start))^T`` with per-row ``s`` and ``w``.

    ``rounds``: (rows, s, w) triples, a row possibly several times (its
    terms add up); (d, n_q O) float64, in
    the columns of :func:`_query_jacobian_T`.
    """
    delta = {n: end[n] - start[n] for n in start}
    d = sum(p.numel() for p in start.values())
    total = torch.zeros(
        (d, Xq.shape[0] * n_outputs), dtype=torch.float64, device=Xq.device
    )
    outputs = torch.arange(n_outputs, device=Xq.device)
    for rows, s, w in rounds:
        rows = rows.to(Xq.device)
        columns = (rows[:, None] * n_outputs + outputs).reshape(-1)
        weights = w.to(Xq.device).repeat_interleave(n_outputs)[None, :]
        pieces = _jacobian_pieces_at(module, start, delta, s.to(Xq), Xq[rows])
        offset = 0
        for piece in pieces:
            width = piece.shape[2]
            part = piece.reshape(len(columns), width).T.double() * weights
            total[offset : offset + width].index_add_(1, columns, part)
            offset += width
    return total


def _jacobian_pieces_at(module, start, delta, s, X):
    """:func:`_jacobian_pieces` with row ``i`` at ``start + s[i] delta``."""

    def one_row(s_i, x):
        point = {n: start[n] + s_i * delta[n] for n in start}
        return jacrev(lambda p: forward_at(module, p, x.unsqueeze(0))[0])(point)

    with TORCH_FUNC_LOCK:
        jac = vmap(one_row)(s, X)
    return [jac[name].reshape(*jac[name].shape[:2], -1) for name in start]


def _query_jacobian_T(module, points, weights, Xq):
    """``sum_q weights[q] J(Xq; points[q])^T``: (d, n_q O) float64.

    The segment average ``Jbar(x)^T`` for the exact form (one point for
    the first-order form), written parameter by parameter into one float64
    matrix; columns in query-major order (query, then output).
    """
    total = None
    for point, weight in zip(points, weights):
        pieces = _jacobian_pieces(module, point, Xq)
        if total is None:
            d = sum(piece.shape[2] for piece in pieces)
            columns = pieces[0].shape[0] * pieces[0].shape[1]
            total = torch.zeros((d, columns), dtype=torch.float64, device=Xq.device)
        offset = 0
        for piece in pieces:
            width = piece.shape[2]
            total[offset : offset + width].add_(
                piece.reshape(columns, width).T, alpha=weight
            )
            offset += width
    return total


def parameters_after(trajectory, t, device=None):
    """``w_{t+1}``: the next checkpoint, or the final parameters.

    Every step is a checkpoint here (``record_every=1``, as the exact form
    and the walk need).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_pathkernel import PathKernelRegressor
    >>> from sklearn_pathkernel._explain._query_side import parameters_after
    >>> rng = np.random.RandomState(0)
    >>> X, y = rng.randn(20, 2), rng.randn(20)
    >>> est = PathKernelRegressor((3,), max_iter=2, random_state=0).fit(X, y)
    >>> traj = est.trajectory_
    >>> bool((parameters_after(traj, 1)["0.weight"]
    ...       == traj.final_parameters()["0.weight"]).all())
    True
    """
    if t + 1 < len(trajectory):
        return trajectory.parameters(t + 1, device=device)
    return trajectory.final_parameters(device=device)
