"""The recorded path of gradient descent."""

import dataclasses
import os
from typing import NamedTuple

import numpy as np
import torch

from ._checkpoints import CheckpointStore, RecordStore
from ._quadrature import check_rule, node_count, node_weights, select_nodes
from ._solvers import Solver, backward_sums, effective_step_sizes


class Step(NamedTuple):
    """What one gradient-descent step used (docs/design.md, section 2).

    Attributes
    ----------
    step_size : float
        ``eps_t``.
    batch : torch.Tensor of int64, shape (b,)
        Training-row indices of ``B_t``.
    batch_weights : torch.Tensor, shape (b,)
        ``c_{i,t} = s_i / sum_{j in B_t} s_j``.
    output_gradients : torch.Tensor, shape (b, n_outputs)
        ``g_{i,t} = dl(y_i, f) / df`` at ``f = f(x_i; w_t)``.
    """

    step_size: float
    batch: torch.Tensor
    batch_weights: torch.Tensor
    output_gradients: torch.Tensor


class KernelNode(NamedTuple):
    """One term ``weight * K_{w_step}`` of the path kernel's quadrature.

    Attributes
    ----------
    step : int
        ``t`` of the parameters ``w_t``; ``n_steps`` stands for ``w_T``.
    weight : float
    """

    step: int
    weight: float


#: The keys of a trajectory's packed form (``Trajectory.__getstate__``): what a
#: pickle and :func:`~sklearn_pathkernel.save` hold, and what ``load`` checks.
PACKED_KEYS = frozenset(
    {
        "solver",
        "_names",
        "_shapes",
        "_numels",
        "record_every",
        "quadrature",
        "_kernel_nodes",
        "_checkpoint_steps",
        "_adaptive_steps",
        "_final",
        "_packed_preconditioners",
        "_packed_checkpoints",
        "_directory",
        "_packed_steps",
    }
)


class Trajectory:
    """The path the parameters took during gradient descent.

    What is *stored* and what the *kernel* visits are separate. Checkpoint
    ``k`` holds the trainable parameters ``w_t`` at step
    ``t = checkpoint_steps[k]``: every step when ``record_every=1`` (what the
    exact decomposition needs), else every ``record_every``-th; ``weights[k]``
    is the summed step sizes of the steps it stands for, and
    ``sum_k weights[k] * K_{w_k}`` is the every-step (left Riemann) sum that
    the first-order decomposition uses. The path kernel instead sums over
    :meth:`kernel_nodes`: a few of the checkpoints (and ``w_T``) with the
    weights of the ``quadrature`` rule (docs/design.md, section 3), so that
    its cost does not grow with every step. Every step's batch, batch
    weights and loss derivatives are kept as well, for the decomposition;
    the final parameters ``w_T`` too.

    The ``solver`` says how steps were taken (docs/design.md, section 12).
    Momentum spreads a gradient over later steps, so a step's weight in the
    kernel is its effective step size ``p_s = sum_{t>=s} eps_t beta_{t,s}``
    (:attr:`effective_step_sizes`), ``eps_s`` for plain sgd. Adam also keeps
    every step's diagonal preconditioner ``P_t`` (one more flat vector per
    step, stored like the checkpoints); the kernel at node ``s`` is then
    taken in the metric ``Ptilde_s / p_s`` (:meth:`kernel_metric_at`).

    Checkpoints are one flat CPU vector each, and the per-step records one
    row ``(index, weight, derivatives)`` per batch row: in memory or, with
    ``directory`` (or past 1 GiB, and the records once the parameters have
    moved), in memory-mapped files. That is
    ``(len(trajectory) + 1) * n_parameters * itemsize`` bytes for the
    parameters, plus ``n_steps * batch_size * (n_outputs + 2)`` numbers for the
    per-step records; on disk only 16 bytes a step (its size, where its rows
    end) stay in memory. For example the default MLP (one hidden layer of
    100) on 30 features, trained full batch for 200 steps in float32, keeps
    201 * 3201 * 4 bytes = 2.6 MB of parameters.

    Trajectories are built by the estimators' ``fit``; users read them.

    Parameters
    ----------
    parameter_shapes : dict of str to tuple of int
        Names and shapes of the trainable parameters, in module order.
    record_every : int, default=1
        Keep the parameters every ``record_every`` steps.
    alpha : float, default=0.0
        The L2 strength of the update rule, which the decomposition's bias
        term needs (Remark 4 of the paper); ``solver.alpha`` when a solver
        is given.
    solver : Solver, default=None
        The update rule; plain sgd with ``alpha`` when None.
    quadrature : {"left", "trapezoid", "simpson", "adaptive"}, default="left"
        The rule of :meth:`kernel_nodes`.
    kernel_nodes : int, float or None, default=None
        How many nodes the kernel visits: a count, a fraction of the steps,
        or None for every checkpoint. Ignored by "adaptive", whose nodes
        training chose.
    directory : str, os.PathLike or None, default=None
        Keep the checkpoints and the per-step records in memory-mapped
        files there (created when missing; ValueError when it is a file).

    Attributes
    ----------
    weights : ndarray of shape (n_checkpoints,)
        Left-sum weight of each stored checkpoint (not the kernel's).
    checkpoint_steps : ndarray of shape (n_checkpoints,)
    step_sizes : ndarray of shape (n_steps,)
    effective_step_sizes : ndarray of shape (n_steps,)
    solver : Solver
    n_steps : int
    n_parameters : int

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_pathkernel import PathKernelRegressor
    >>> X, y = load_diabetes(return_X_y=True)
    >>> est = PathKernelRegressor(max_iter=20, random_state=0).fit(scale(X), scale(y))
    >>> traj = est.trajectory_
    >>> len(traj), traj.n_steps, float(traj.weights.sum())
    (20, 20, 2.0)
    >>> [node.step for node in traj.kernel_nodes()]  # Simpson, a tenth: w_0, w_T
    [0, 20]
    >>> sorted(traj.parameters(0))[:2]
    ['0.bias', '0.weight']
    """

    def __init__(
        self,
        parameter_shapes,
        *,
        record_every=1,
        alpha=0.0,
        solver=None,
        quadrature="left",
        kernel_nodes=None,
        directory=None,
    ):
        check_rule(quadrature, kernel_nodes)
        self.solver = Solver(alpha=float(alpha)) if solver is None else solver
        self._names = list(parameter_shapes)
        self._shapes = [tuple(s) for s in parameter_shapes.values()]
        self._numels = [int(np.prod(s, dtype=np.int64)) for s in self._shapes]
        self.record_every = int(record_every)
        self.quadrature = quadrature
        self._kernel_nodes = kernel_nodes
        self._checkpoints = CheckpointStore(directory)
        # Adam's P_t, every step: the kernel's metric and the exact
        # decomposition both sum over all later steps.
        self._preconditioners = (
            CheckpointStore(directory) if self.solver.diagonal else None
        )
        self._metrics = {}  # step -> Ptilde_s / p_s, flat: built on demand
        self._checkpoint_steps = []
        self._adaptive_steps = None  # nodes training chose, for "adaptive"
        self._steps = RecordStore(directory)
        self._final = None

    # -- recording (used by training) -------------------------------------
    def _append_step(self, flat_parameters, step, *, preconditioner=None, copy=True):
        """Record step ``t = n_steps`` taken from ``flat_parameters``.

        ``preconditioner`` is the step's flat ``P_t`` (Adam), None for sgd.
        ``copy=False`` takes ownership of CPU tensors nobody else will
        change (training passes fresh ``flatten_parameters`` results and
        preconditioners, already on the host).
        """
        if (preconditioner is None) != (self._preconditioners is None):
            raise ValueError(
                f"A {self.solver.name!r} step needs "
                + ("its preconditioner." if self.solver.diagonal else "none.")
            )
        if len(self._steps) % self.record_every == 0:
            self._checkpoints.append(
                _to_cpu(flat_parameters) if copy else flat_parameters.to("cpu")
            )
            self._checkpoint_steps.append(len(self._steps))
        if preconditioner is not None:
            self._preconditioners.append(
                _to_cpu(preconditioner) if copy else preconditioner.to("cpu")
            )
        if self._checkpoints.on_disk:
            self._steps.to_disk()  # the records follow the parameters there
        self._steps.append(step)
        self._metrics.clear()

    def _add_adaptive_node(self, step):
        """Make step ``step`` (a recorded checkpoint) an "adaptive" node."""
        if self._adaptive_steps is None:
            self._adaptive_steps = []
        self._adaptive_steps.append(int(step))

    def _set_final(self, flat_parameters):
        self._final = _to_cpu(flat_parameters)
        self._metrics.clear()
        self._steps.flush()  # the last steps join the others, on disk if there

    def _truncate(self, n_steps):
        """Forget steps ``n_steps`` and later (used after a divergence)."""
        self._steps.truncate(n_steps)
        if self._preconditioners is not None:
            self._preconditioners.truncate(n_steps)
        self._metrics.clear()
        keep = sum(s < n_steps for s in self._checkpoint_steps)
        self._checkpoints.truncate(keep)
        del self._checkpoint_steps[keep:]
        if self._adaptive_steps is not None:
            self._adaptive_steps = [s for s in self._adaptive_steps if s < n_steps]

    def _shift_rows(self, first_step, offset):
        """Make steps ``first_step`` and later index rows ``offset`` further on.

        Used when training continues on new rows (``partial_fit``, a warm
        start): its steps index the call's rows, which the kernel machine
        appends after the ``offset`` rows it already has.
        """
        self._steps.shift_batches(int(first_step), int(offset))

    def _mark(self):
        """Where the path ends now, for :meth:`_rewind`: ``(n_steps, w_T)``."""
        return self.n_steps, self._final

    def _rewind(self, mark):
        """Return to the end ``mark`` (from :meth:`_mark`): drop the later steps.

        Undoes a continuation that did not finish, so that the path stays
        the one the estimator's network ended on.
        """
        n_steps, final = mark
        self._truncate(n_steps)
        self._set_final(final)

    # -- persistence --------------------------------------------------------
    def __getstate__(self):
        # Thousands of small tensors pickle one by one, slowly: pack the
        # checkpoints into one matrix and every step's records into three.
        # Parameters and records are embedded even when they live in files:
        # those are scratch, removed with the trajectory.
        state = self.__dict__.copy()
        steps = state.pop("_steps")
        checkpoints = state.pop("_checkpoints")
        state.pop("_metrics")  # a cache
        state["solver"] = dataclasses.asdict(self.solver)  # plain data for save()
        preconditioners = state.pop("_preconditioners")
        state["_packed_preconditioners"] = (
            None if preconditioners is None else preconditioners.matrix()
        )
        state["_packed_checkpoints"] = checkpoints.matrix()
        state["_directory"] = checkpoints.directory if checkpoints.on_disk else None
        state["_packed_steps"] = steps.packed()
        return state

    def __setstate__(self, state):
        packed = state.pop("_packed_checkpoints")
        directory = state.pop("_directory", None)
        packed_steps = state.pop("_packed_steps")
        preconditioners = state.pop("_packed_preconditioners", None)
        # Paths saved before solvers existed were plain sgd with an alpha.
        alpha = state.pop("alpha", 0.0)
        state["solver"] = Solver(**state.get("solver", {"alpha": alpha}))
        self.__dict__.update(state)
        self._metrics = {}
        # Paths saved before quadrature rules existed keep their left sum.
        for name, default in [
            ("quadrature", "left"),
            ("_kernel_nodes", None),
            ("_adaptive_steps", None),
        ]:
            self.__dict__.setdefault(name, default)
        self._checkpoints = CheckpointStore(
            directory if directory is None or os.path.isdir(directory) else None
        )
        gone = directory is not None and self._checkpoints.directory is None
        if gone and packed is not None:
            self._checkpoints.to_disk(packed[0])  # in a temporary directory
        for row in [] if packed is None else packed.unbind(0):
            self._checkpoints.append(row)
        self._preconditioners = None
        if self.solver.diagonal:
            self._preconditioners = CheckpointStore(self._checkpoints.directory)
            for row in [] if preconditioners is None else preconditioners.unbind(0):
                self._preconditioners.append(row)
        self._steps = RecordStore(self._checkpoints.directory)
        if self._checkpoints.on_disk:
            self._steps.to_disk()
        if packed_steps[0]:
            self._steps.extend(*packed_steps)

    # -- reading ----------------------------------------------------------
    def __len__(self):
        return len(self._checkpoints)

    def __repr__(self):
        return (
            f"Trajectory(n_checkpoints={len(self)}, n_steps={self.n_steps}, "
            f"n_parameters={self.n_parameters}, record_every={self.record_every})"
        )

    @property
    def n_steps(self):
        """Number of gradient-descent steps taken."""
        return len(self._steps)

    @property
    def n_parameters(self):
        """Number of trainable parameters ``d``."""
        return sum(self._numels)

    @property
    def parameter_names(self):
        """Names of the trainable parameters, in module order."""
        return list(self._names)

    @property
    def step_sizes(self):
        """``eps_t`` for every step, float64 array of shape (n_steps,)."""
        return self._steps.step_sizes()

    @property
    def alpha(self):
        """The coupled L2 strength of the update rule (``solver.alpha``)."""
        return self.solver.alpha

    @property
    def effective_step_sizes(self):
        """``p_s = sum_{t>=s} eps_t beta_{t,s}`` per step: a step's kernel weight.

        ``eps_s`` for plain sgd; with momentum, what a gradient taken at step
        ``s`` moves the parameters by over the rest of training
        (docs/design.md, section 12). Float64 array of shape (n_steps,).
        """
        return effective_step_sizes(self.solver, self.step_sizes)

    @property
    def checkpoint_steps(self):
        """The step index of each checkpoint, int array (n_checkpoints,)."""
        return np.array(self._checkpoint_steps, dtype=np.int64)

    @property
    def weights(self):
        """Each checkpoint's weight: the summed step sizes it stands for.

        The left sum over every stored checkpoint, which the first-order
        decomposition uses; the kernel's weights are :meth:`kernel_nodes`.
        """
        return node_weights(self.checkpoint_steps, self.effective_step_sizes, "left")

    @property
    def on_disk(self):
        """Whether the checkpoints live in a memory-mapped file."""
        return self._checkpoints.on_disk

    def kernel_nodes(self):
        """The terms of the path kernel: ``K_path = sum weight * K_{w_step}``.

        The ``quadrature`` rule over ``kernel_nodes`` of the recorded steps
        (docs/design.md, section 3): weights that sum polynomials in ``t``
        of degree 0 ("left"), 1 ("trapezoid", "adaptive") or 2 ("simpson")
        exactly against the every-step sum ``sum_t eps_t K_{w_t}``. Every
        weight is non-negative, so the kernel stays positive semi-definite;
        nodes of weight 0 are left out.

        Returns
        -------
        nodes : list of KernelNode
            In increasing ``step``; read the parameters with
            :meth:`parameters_at`.
        """
        return [
            KernelNode(int(step), float(weight))
            for step, weight in zip(*self._node_steps_and_weights())
            if weight != 0
        ]

    def _node_steps_and_weights(self):
        candidates = self.checkpoint_steps
        if self.quadrature == "adaptive":
            candidates = np.array(self._adaptive_steps or [0], dtype=np.int64)
            n_nodes = len(candidates) + 1
        else:
            n_nodes = node_count(self._kernel_nodes, self.n_steps)
        # Without w_T (a path still being recorded) only a left sum is possible.
        rule = self.quadrature if self._final is not None else "left"
        steps = select_nodes(candidates, self.n_steps, n_nodes, rule)
        return steps, node_weights(steps, self.effective_step_sizes, rule)

    def with_quadrature(self, quadrature, kernel_nodes=None):
        """The same path, sharing its records, with another kernel rule.

        Parameters
        ----------
        quadrature : {"left", "trapezoid", "simpson", "adaptive"}
            "adaptive" needs a path recorded with it.
        kernel_nodes : int, float or None, default=None
            A count, a fraction of the steps, or None for every checkpoint.

        Returns
        -------
        trajectory : Trajectory

        Examples
        --------
        >>> from sklearn.datasets import load_diabetes
        >>> from sklearn.preprocessing import scale
        >>> from sklearn_pathkernel import PathKernelRegressor
        >>> X, y = load_diabetes(return_X_y=True)
        >>> est = PathKernelRegressor(max_iter=20, random_state=0)
        >>> est = est.fit(scale(X), scale(y))
        >>> every_step = est.trajectory_.with_quadrature("left")
        >>> len(every_step.kernel_nodes())
        20
        """
        check_rule(quadrature, kernel_nodes)
        if quadrature == "adaptive" and self._adaptive_steps is None:
            raise ValueError(
                "quadrature='adaptive' needs the nodes that training chose; this "
                "path was recorded with quadrature="
                f"{self.quadrature!r}. Refit with quadrature='adaptive'."
            )
        view = object.__new__(Trajectory)
        view.__dict__.update(self.__dict__)
        view.quadrature, view._kernel_nodes = quadrature, kernel_nodes
        return view

    def parameters_at(self, step, *, device=None):
        """``w_step`` as a mapping: a stored checkpoint's, or ``w_T``.

        Parameters
        ----------
        step : int
            A step of :attr:`checkpoint_steps`, or ``n_steps`` for ``w_T``.
        device : torch.device or str, default=None

        Returns
        -------
        parameters : dict of str to torch.Tensor
        """
        if step == self.n_steps and self._final is not None:
            return self.final_parameters(device=device)
        k = int(np.searchsorted(self._checkpoint_steps, step))
        if k == len(self) or self._checkpoint_steps[k] != step:
            raise ValueError(f"step {step} was not recorded on this path.")
        return self.parameters(k, device=device)

    def preconditioner(self, t):
        """Adam's ``P_t`` of step ``t``: a flat CPU tensor, or None for sgd.

        Parameters
        ----------
        t : int
            Step index.

        Returns
        -------
        preconditioner : torch.Tensor of shape (n_parameters,) or None
        """
        if self._preconditioners is None:
            return None
        return self._preconditioners[t]

    def kernel_metric_at(self, step, *, device=None):
        """The metric of the kernel term at ``step``: ``Ptilde_s / p_s``.

        The path kernel is ``sum_s J_s Ptilde_s J_s^T`` with the effective
        preconditioned step ``Ptilde_s = sum_{t>=s} eps_t beta_{t,s} P_t``
        (docs/design.md, section 12); its weight ``p_s`` is in
        :meth:`kernel_nodes`, and this is what is left: a weighted average of
        the later steps' ``P_t``, positive. None when every ``P_t`` is the
        identity (sgd). ``w_T`` (``step == n_steps``) takes the last step's.

        Parameters
        ----------
        step : int
            A step of :attr:`checkpoint_steps`, or ``n_steps``.
        device : torch.device or str, default=None

        Returns
        -------
        metric : dict of str to torch.Tensor, or None
            Shaped like :meth:`parameters_at`.

        Examples
        --------
        >>> from sklearn.datasets import load_diabetes
        >>> from sklearn.preprocessing import scale
        >>> from sklearn_pathkernel import PathKernelRegressor
        >>> X, y = load_diabetes(return_X_y=True)
        >>> est = PathKernelRegressor((8,), solver="adam", learning_rate_init=0.01,
        ...                           max_iter=10, random_state=0)
        >>> traj = est.fit(scale(X), scale(y)).trajectory_
        >>> metric = traj.kernel_metric_at(0)
        >>> sorted(metric)[:2], bool(metric["0.weight"].min() > 0)
        (['0.bias', '0.weight'], True)
        """
        if self._preconditioners is None or self.n_steps == 0:
            return None
        s = min(int(step), self.n_steps - 1)
        if s not in self._metrics:
            self._collect_metrics(
                {s} | {min(n.step, self.n_steps - 1) for n in self.kernel_nodes()}
            )
        return self._unflatten(self._metrics[s], device)

    def _collect_metrics(self, steps):
        """``Ptilde_s / p_s`` at ``steps``, by one backward pass over the steps."""
        wanted = set(steps)
        p = self.effective_step_sizes
        for s, total in backward_sums(
            self.solver, self.step_sizes, lambda t: self._preconditioners[t].double()
        ):
            if s in wanted:
                self._metrics[s] = (total / p[s]).to(self._preconditioners[s].dtype)
            if s <= min(wanted):
                break

    def step(self, t):
        """The batch, batch weights and loss derivatives of step ``t``.

        Parameters
        ----------
        t : int
            Step index.

        Returns
        -------
        step : Step
        """
        return Step(*self._steps[t])

    def flat_parameters(self, k):
        """Checkpoint ``k`` as one flat CPU tensor of length ``n_parameters``.

        Parameters
        ----------
        k : int
            Checkpoint index.

        Returns
        -------
        flat : torch.Tensor of shape (n_parameters,)
        """
        return self._checkpoints[k]

    def parameters(self, k, *, device=None):
        """Checkpoint ``k`` as a name -> tensor mapping.

        Usable with ``torch.func.functional_call(module_, parameters, (X,))``.
        Negative ``k`` counts from the end, as for lists.

        Parameters
        ----------
        k : int
            Checkpoint index.
        device : torch.device or str, default=None
            Where to put the tensors; the CPU when None.

        Returns
        -------
        parameters : dict of str to torch.Tensor
        """
        return self._unflatten(self._checkpoints[k], device)

    def final_parameters(self, *, device=None):
        """The parameters ``w_T`` after the last step, as a mapping.

        Parameters
        ----------
        device : torch.device or str, default=None
            Where the tensors go; None leaves them on the CPU.

        Returns
        -------
        parameters : dict of str to torch.Tensor
        """
        return self._unflatten(self._final, device)

    def _unflatten(self, flat, device):
        if device is not None:
            flat = flat.to(device)
        pieces = torch.split(flat, self._numels)
        return {
            name: piece.view(shape)
            for name, piece, shape in zip(self._names, pieces, self._shapes)
        }


def flatten_parameters(parameters):
    """Concatenate tensors into one detached flat vector."""
    return torch.cat([p.detach().reshape(-1) for p in parameters])


def _to_cpu(tensor):
    return tensor.detach().to("cpu", copy=True)
