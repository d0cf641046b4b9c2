"""The training loop that records the Trajectory.

One step of plain gradient descent, exactly as docs/design.md, section 2,
writes it::

    w_{t+1} = w_t - eps_t * ( sum_{i in B_t} c_{i,t} J_t(x_i)^T g_{i,t} + alpha * w_t )

The backward pass is seeded with ``c_{i,t} g_{i,t}``, the very numbers the
trajectory records, and the resulting gradient goes to a ``torch.optim``
optimiser (SGD with momentum or Nesterov, in scikit-learn's velocity form
when the solver asks for it; Adam, AdamW: ``_solvers``), whose
step the trajectory records with whatever the decomposition needs (Adam's
preconditioner), so that the recorded path and the decomposition agree to
rounding. Early stopping keeps the best validation epoch, and the path ends
there.

No step waits for the host (docs/design.md, section 2): a step is queued on
the device with its checks (a finite objective and ``g``) kept as device
tensors, and its record copied to the host without blocking; the checks are
read a window of steps at a time, at the latest at the end of each epoch,
and a failed one rolls back exactly as a check read at once would.
"""

import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from .._compute._progress import EpochLog
from .._model._network import forward, trainable_parameters
from ..exceptions import DivergenceWarning
from ._probe import KernelProbe
from ._solvers import ADAPTIVE_DIVISOR, ADAPTIVE_FLOOR, Solver
from ._trajectory import Step, Trajectory, flatten_parameters

# Frames between a warning raised in train() and the user's call of fit,
# train's own included, when no caller says otherwise (``user_frame``):
# train <- fit <- _fit_context <- _restore_on_failure <- user.
_USER_FRAME = 5

# A final epoch loss this many times the first one: training blew up while
# staying finite (gradient descent with a sane step size does not do that).
_GROWTH_LIMIT = 10.0

#: Bytes of flat vectors (each step's ``w_t``, and Adam's ``P_t``) that the
#: steps queued on the device may hold before their checks are read: a
#: rollback returns to the ``w_{t-1}`` of whichever of them failed first.
WINDOW_BYTES = 256 << 20


class _Queued(NamedTuple):
    """A step taken on the device whose checks have not been read yet."""

    t: int
    start: torch.Tensor  # w_t, on the device: a later rollback's target
    objective: torch.Tensor  # 0-d, at w_t
    finite: torch.Tensor  # 0-d bool: g is finite
    node: object  # 0-d bool: the probe made t a node ("adaptive"); or None
    weight: float  # the batch's sample-weight sum, from the host
    step: Step  # the record, its tensors on the host (still filling on CUDA)
    checkpoint: object  # w_t on the host when t is a checkpoint, else None
    preconditioner: object  # Adam's P_t on the host, else None


@dataclass(frozen=True)
class TrainingOptions:
    """How :func:`train` runs gradient descent (the estimator's parameters).

    Attributes
    ----------
    learning_rate_init : float
        The (initial) step size ``eps``.
    max_iter : int
        Number of epochs (passes over the data).
    solver : Solver
        The update rule, with its L2 strength (``solver.alpha``: the
        objective adds ``alpha / 2 * ||w||^2``) or decoupled decay.
    learning_rate : {"constant", "invscaling", "adaptive"}
        The step-size schedule, for ``solver.name == "sgd"`` (scikit-learn's
        rules): "invscaling" sets ``eps = learning_rate_init / (t + 1) **
        power_t`` after each epoch, ``t`` the rows seen so far; "adaptive"
        divides ``eps`` by 5 each time the stopping rule fires, and stops
        only once it is below 1e-6.
    power_t : float
    batch_size : int or None
        Rows per step; None for full-batch gradient descent.
    shuffle : bool
        Reshuffle rows every epoch (minibatch only).
    tol, n_iter_no_change : float, int
        Stop when the epoch loss (or, with ``validation``, the validation
        score) has not improved by ``tol`` for more than ``n_iter_no_change``
        consecutive epochs (scikit-learn's rule: ``n_iter_no_change + 1``).
    validation : callable or None
        Early stopping: ``validation(module)`` scores the module on held-out
        rows (higher is better) after each epoch; training ends at the best
        epoch's parameters, and so does the path.
    record_every : int
        Keep the parameters every ``record_every`` steps.
    quadrature, kernel_nodes : str, int, float or None
        The kernel's rule over the kept parameters (:class:`Trajectory`).
    adaptive_tol : float
        With ``quadrature="adaptive"``: the probe kernel's relative movement
        that makes a new node (:class:`KernelProbe`).
    trajectory_dir : str, os.PathLike or None
        Keep the parameters and the per-step records in memory-mapped files
        there.
    verbose : int
        Print a table row per epoch (loss, its change, seconds) when positive.
    """

    learning_rate_init: float
    max_iter: int
    solver: Solver = Solver()
    learning_rate: str = "constant"
    power_t: float = 0.5
    batch_size: int | None = None
    shuffle: bool = True
    tol: float = 1e-4
    n_iter_no_change: int = 10
    validation: object = None
    record_every: int = 1
    quadrature: str = "left"
    kernel_nodes: int | float | None = None
    adaptive_tol: float = 0.05
    trajectory_dir: object = None
    verbose: int = 0


@dataclass
class TrainingResult:
    """What :func:`train` returns besides the trained module."""

    trajectory: Trajectory
    loss_curve: list = field(default_factory=list)
    validation_scores: list | None = None
    best_validation_score: float | None = None
    best_loss: float | None = None
    n_iter: int = 0
    converged: bool = False
    diverged: bool = False


def train(
    module,
    X,
    Y,
    loss,
    *,
    sample_weight,
    options,
    generator,
    owner="estimator",
    trajectory=None,
    optimizer=None,
    rows_seen=0,
    user_frame=_USER_FRAME,
):
    """Train ``module`` in place with ``options.solver``, recording the path.

    With ``trajectory`` (and ``optimizer``) given, training continues that
    path: ``module`` holds its final parameters, the new steps are appended
    after its last one (numbered on from there) and ``optimizer`` carries
    its state (momentum buffers, Adam's moments and step count), so that
    the longer path follows one update rule (``partial_fit``, warm starts).

    Parameters
    ----------
    module : torch.nn.Module
        Already on the device and in the dtype of ``X``.
    X : torch.Tensor of shape (n_samples, n_features)
    Y : torch.Tensor of shape (n_samples, n_outputs)
        Targets in the form ``loss`` expects.
    loss : Loss
    sample_weight : torch.Tensor of shape (n_samples,)
        Non-negative weights; the per-batch weights are ``s_i / sum_B s_j``.
    options : TrainingOptions
    generator : torch.Generator or MLP stream
        Source of the shuffling order (on the CPU): a ``torch.Generator``, or
        the default MLP's stream of scikit-learn draws (``epoch_order``).
    owner : str
        Estimator name for messages.
    trajectory : Trajectory, default=None
        The path to extend; None starts a new one.
    optimizer : torch.optim.Optimizer, default=None
        ``options.solver``'s optimiser over ``module``'s trainable
        parameters, with the state the path left it in; None makes a
        fresh one.
    rows_seen : int, default=0
        Training rows the path has already seen: "invscaling" continues
        its step size from there.
    user_frame : int, default=5
        How many frames up from ``train`` the user's call is, ``train``
        included: the stack level at which its warnings point.

    Returns
    -------
    result : TrainingResult
        With ``diverged`` set when a non-finite loss made training step
        back (a :class:`DivergenceWarning` says so); the module then holds
        the last parameters with a finite loss.
    """
    return _GradientDescent(
        module,
        X,
        Y,
        loss,
        sample_weight,
        options,
        owner,
        trajectory=trajectory,
        optimizer=optimizer,
        rows_seen=rows_seen,
        user_frame=user_frame,
    ).run(generator)


class _GradientDescent:
    """One run of :func:`train`: the loop, its stopping rules and its rollback."""

    def __init__(
        self,
        module,
        X,
        Y,
        loss,
        sample_weight,
        options,
        owner,
        *,
        trajectory=None,
        optimizer=None,
        rows_seen=0,
        user_frame=_USER_FRAME,
    ):
        named = trainable_parameters(module)
        if not named:
            raise ValueError(f"The 'module' of {owner} has no trainable parameters.")
        self.module, self.X, self.Y, self.loss = module, X, Y, loss
        self.params = [p for _, p in named]
        self.sample_weight = sample_weight
        self.options = options
        self.owner = owner
        self.user_frame = user_frame
        if trajectory is None:
            trajectory = Trajectory(
                {name: tuple(p.shape) for name, p in named},
                record_every=options.record_every,
                solver=options.solver,
                quadrature=options.quadrature,
                kernel_nodes=options.kernel_nodes,
                directory=options.trajectory_dir,
            )
        self.result = TrainingResult(trajectory)
        self.named = dict(named)
        self.probe = (
            KernelProbe(module, list(self.named), X, options.adaptive_tol)
            if options.quadrature == "adaptive"
            else None
        )
        self.last_from = None  # w_t of the last recorded step: where a rollback returns
        self.first_step = trajectory.n_steps  # > 0 when continuing a path
        self.steps_per_epoch = 1
        self.optimizer = (
            options.solver.optimizer(self.params, options.learning_rate_init)
            if optimizer is None
            else optimizer
        )
        # Rows the path has seen: "invscaling" sets eps from them (MLP's t_).
        self.rows_seen = int(rows_seen)
        self.eps = float(options.learning_rate_init)  # this epoch's step size
        if self.rows_seen and self._sgd_schedule("invscaling"):
            self.eps = options.learning_rate_init / (self.rows_seen + 1) ** (
                options.power_t
            )
        self.best = None  # early stopping: (n_steps, flat parameters) of the best epoch
        self._queue_setup(trajectory)

    def run(self, generator):
        options, result = self.options, self.result
        best_loss, no_improvement, rows_seen = np.inf, 0, self.rows_seen
        if options.validation is not None:
            result.validation_scores, result.best_validation_score = [], -np.inf
        log = EpochLog(options.verbose)
        for epoch in range(options.max_iter):
            epoch_loss = self._epoch(generator)
            if epoch_loss is None:
                self._restore_best()
                return result  # diverged and rolled back
            result.loss_curve.append(epoch_loss)
            result.n_iter = epoch + 1
            rows_seen += self.X.shape[0]
            log.epoch(epoch + 1, epoch_loss)
            if options.validation is None:
                improved = epoch_loss <= best_loss - options.tol
                best_loss = min(best_loss, epoch_loss)
            else:
                improved = self._validate(log)
            no_improvement = 0 if improved else no_improvement + 1
            if self._sgd_schedule("invscaling"):
                self.eps = (
                    options.learning_rate_init / (rows_seen + 1) ** options.power_t
                )
            # Strictly more, as MLP: n_iter_no_change + 1 epochs without gain.
            if no_improvement > options.n_iter_no_change:
                what = "Validation score" if options.validation else "Training loss"
                if self._sgd_schedule("adaptive") and self.eps > ADAPTIVE_FLOOR:
                    self.eps /= ADAPTIVE_DIVISOR
                    no_improvement = 0
                    log.message(
                        f"{what} did not improve more than tol={options.tol} for "
                        f"{options.n_iter_no_change} consecutive epochs. Setting "
                        f"learning rate to {self.eps:.6g}."
                    )
                    continue
                result.converged = True
                log.message(
                    f"{what} did not improve more than tol={options.tol} for "
                    f"{options.n_iter_no_change} consecutive epochs. Stopping."
                )
                break
        if options.validation is None:
            result.best_loss = float(best_loss)
        self._restore_best()
        return self._finish()

    def _queue_setup(self, trajectory):
        """What queuing steps without reading them back needs (:meth:`_epoch`)."""
        self.queued = []  # steps taken, not yet checked nor recorded
        self.t = trajectory.n_steps  # the next step's index on the path
        self.device = self.X.device
        # Host copies go through pinned memory, filled while the device runs
        # on; elsewhere (the CPU, other devices) they are plain copies.
        self.async_copies = self.device.type == "cuda"
        self.host_weight = self.sample_weight.cpu()  # weight sums without reading
        self.total_weight = float(self.host_weight.sum())
        diagonal = self.options.solver.diagonal
        d = sum(p.numel() for p in self.params)
        per_step = d * self.params[0].element_size() * (2 if diagonal else 1)
        self.window_steps = max(1, WINDOW_BYTES // max(per_step, 1))
        # Adam's step count, known on the host (its state keeps it in a tensor).
        first = self.optimizer.state.get(self.params[0], {}) if diagonal else {}
        self.optimizer_steps = int(float(first["step"])) if "step" in first else 0

    def _epoch(self, generator):
        """One pass over the data: the epoch's loss, or None after a rollback.

        Every step is queued on the device without reading anything back;
        the queued steps' checks are read together, when they hold
        :data:`WINDOW_BYTES` of parameters and at the end of the epoch
        (:meth:`_settle`).
        """
        plan = self._plan(generator)
        self.steps_per_epoch = len(plan)
        epoch_loss = 0.0
        for batch, rows, weight_sum in plan:
            self._step(batch, rows, weight_sum)
            if len(self.queued) >= self.window_steps:
                epoch_loss = self._settle(epoch_loss)
                if epoch_loss is None:
                    return None
        return self._settle(epoch_loss)

    def _plan(self, generator):
        """This epoch's batches: ``(rows on the device, on the host, weight sum)``.

        The host rows are what the step records keep, and the weight sums
        come from the host copy of ``sample_weight``: no step waits for the
        device to know them. Moving the rows costs one transfer an epoch.
        """
        rows = batches = list(self._batches(generator))
        if self.device.type != "cpu":
            on_host = torch.cat(rows)
            if self.async_copies:
                on_host = on_host.pin_memory()
            moved = on_host.to(self.device, non_blocking=self.async_copies)
            batches = list(torch.split(moved, [len(r) for r in rows]))
        sums = torch.stack([self.host_weight[r].sum() for r in rows]).tolist()
        return list(zip(batches, rows, sums))

    def _settle(self, epoch_loss):
        """Read the queued steps' checks at once, and record those that pass.

        The first step whose objective or ``g`` is not finite rolls the run
        back as if it had stopped there (the steps after it are dropped):
        returns None then, else ``epoch_loss`` plus the steps' share.
        """
        queued, self.queued = self.queued, []
        if not queued:
            return epoch_loss
        values = torch.stack([q.objective for q in queued]).tolist()
        flags = [q.finite for q in queued] + [
            q.node for q in queued if q.node is not None
        ]
        flags = torch.stack(flags).tolist()
        nodes = iter(flags[len(queued) :])
        if self.async_copies:  # the host copies are complete from here on
            torch.cuda.current_stream(self.device).synchronize()
        for q, value, finite in zip(queued, values, flags):
            if not (np.isfinite(value) and finite):
                # _roll_back <- _settle <- _epoch <- run <- train
                self._roll_back(value, start=q.start, frames=4)
                return None
            self._record(q, q.node is not None and next(nodes))
            epoch_loss += value * q.weight / self.total_weight
        return epoch_loss

    def _record(self, q, node):
        """Hand a checked step to the trajectory (host tensors, complete)."""
        trajectory = self.result.trajectory
        trajectory._append_step(
            q.start if q.checkpoint is None else self._kept(q.checkpoint),
            q.step,
            preconditioner=None
            if q.preconditioner is None
            else self._kept(q.preconditioner),
            copy=False,  # fresh tensors
        )
        if node:
            trajectory._add_adaptive_node(q.t)
        self.last_from = q.start

    def _kept(self, host):
        """``host`` as the trajectory keeps it: out of pinned memory, if it was in."""
        if not self.async_copies:
            return host
        return torch.empty(host.shape, dtype=host.dtype).copy_(host)

    def _sgd_schedule(self, name):
        """Whether the step-size schedule ``name`` applies (sgd only, as MLP)."""
        return self.options.solver.name == "sgd" and self.options.learning_rate == name

    def _validate(self, log):
        """Score this epoch's parameters; keep them when they are the best so far.

        Returns whether the score improved by more than ``tol``.
        """
        result = self.result
        was_training = self.module.training
        self.module.eval()  # scored as predict would: dropout off
        with torch.no_grad():
            score = float(self.options.validation(self.module))
        self.module.train(was_training)
        result.validation_scores.append(score)
        log.message(f"Validation score: {score:.6f}")
        improved = score >= result.best_validation_score + self.options.tol
        if score > result.best_validation_score:
            result.best_validation_score = score
            self.best = (
                self.result.trajectory.n_steps,
                flatten_parameters(self.params),
            )
        return improved

    def _restore_best(self):
        """Early stopping: return to the best epoch, and end the path there."""
        trajectory = self.result.trajectory
        if self.best is None or self.best[0] >= trajectory.n_steps:
            return
        n_steps, flat = self.best
        self._load(flat)
        trajectory._truncate(n_steps)
        trajectory._set_final(flat)
        self.last_from = None

    def _batches(self, generator):
        """This epoch's batches of row indices, on the host (``_plan`` moves them).

        ``generator`` orders the rows: a ``torch.Generator`` (``randperm``),
        or scikit-learn's MLP stream (the default MLP's), whose
        ``epoch_order(n_samples, shuffle)`` draws the epoch's order as
        ``MLPClassifier`` does, then cut as its ``gen_batches`` cuts it.
        One batch of all the rows takes them in row order (MLP's stream is
        still drawn from): the same sum, and continued full-batch paths
        stay bit-identical to one fit.
        """
        n_samples = self.X.shape[0]
        batch_size = self.options.batch_size
        full = batch_size is None or batch_size >= n_samples
        if not isinstance(generator, torch.Generator):
            order = generator.epoch_order(n_samples, self.options.shuffle)
            order = torch.as_tensor(order, dtype=torch.int64)
        elif full:
            order = None
        elif self.options.shuffle:
            order = torch.randperm(n_samples, generator=generator)
        else:
            order = torch.arange(n_samples)
        if full:
            return [torch.arange(n_samples)]
        return torch.split(order, batch_size)

    def _step(self, batch, rows, weight_sum):
        """Queue one step on the device, reading nothing back.

        ``batch`` are its rows on the device, ``rows`` the same on the host
        and ``weight_sum`` their sample weights' sum. Its checks (a finite
        objective and ``g``) are read later, by :meth:`_settle`, and its
        record goes to the host meanwhile.
        """
        current = flatten_parameters(self.params)
        out = forward(self.module, self.X[batch])
        weights = self.sample_weight[batch]
        objective, finite, c, g = self._evaluate(
            out, self.Y[batch], weights, weight_sum
        )
        eps, t = self.eps, self.t
        checkpoint = t % self.options.record_every == 0
        node = None
        if self.probe is not None and checkpoint:
            node = self.probe.moved({n: p.detach() for n, p in self.named.items()})
        grads = torch.autograd.grad(out, self.params, grad_outputs=c[:, None] * g)
        for p, grad in zip(self.params, grads):
            p.grad = grad
        # A new rate; in MLP's velocity form it also rescales momentum buffers.
        self.options.solver.set_step_size(self.optimizer, eps)
        self.optimizer.step()  # adds the coupled L2 (weight_decay) itself
        self.optimizer_steps += 1
        for p in self.params:
            p.grad = None
        preconditioner = self.options.solver.preconditioner(
            self.optimizer, self.params, step=self.optimizer_steps
        )
        host = self._to_host
        self.queued.append(
            _Queued(
                t,
                current,
                objective,
                finite,
                node,
                weight_sum,
                Step(float(eps), rows, host(c), host(g)),
                host(current) if checkpoint else None,
                None if preconditioner is None else host(preconditioner),
            )
        )
        self.t += 1

    def _to_host(self, tensor):
        """A host copy of ``tensor``, queued (pinned) on CUDA: read it after a sync."""
        return tensor.to("cpu", non_blocking=self.async_copies)

    def _evaluate(self, out, target, weights, weight_sum):
        """Objective, whether ``g`` is finite, ``c`` and ``g`` at outputs ``out``.

        All on the device, nothing read back: the objective not being finite,
        or ``g``, is the one divergence test (:meth:`_diverged`), used at
        every step and at the end.
        """
        alpha = self.options.solver.alpha
        with torch.no_grad():
            # An all-zero-weight batch moves only through the L2 term.
            c = weights / weight_sum if weight_sum > 0 else torch.zeros_like(weights)
            g = self.loss.gradient(out, target)
            objective = (c * self.loss.value(out, target)).sum()
            if alpha:
                objective = objective + 0.5 * alpha * sum(
                    (p * p).sum() for p in self.params
                )
            finite = torch.isfinite(g).all()
        return objective, finite, c, g

    def _finish(self):
        """Check the final parameters, warn as needed, and close the path."""
        with torch.no_grad():
            out = forward(self.module, self.X)
        objective, finite, _, _ = self._evaluate(
            out, self.Y, self.sample_weight, self.total_weight
        )
        if not (np.isfinite(float(objective)) and bool(finite)):
            # The last update overflowed: step back to the last finite parameters.
            # _roll_back <- _finish <- run <- train
            self._roll_back(float("inf"), frames=3)
            return self.result
        self.result.trajectory._set_final(flatten_parameters(self.params))
        grew = self._warn_if_the_loss_grew()
        if not (self.result.converged or grew):
            warnings.warn(
                f"{self.owner}: gradient descent reached "
                f"max_iter={self.options.max_iter} epochs and the loss is still "
                "improving. Increase max_iter, or raise tol to stop earlier.",
                ConvergenceWarning,
                stacklevel=self.user_frame + 2,  # _finish <- run <- train
            )
        return self.result

    def _warn_if_the_loss_grew(self):
        """Warn, and return True, when the loss ended far above where it started."""
        curve = self.result.loss_curve
        if len(curve) < 2 or not curve[-1] > _GROWTH_LIMIT * curve[0]:
            return False
        warnings.warn(
            f"{self.owner}: the training loss grew from {curve[0]:.4g} to "
            f"{curve[-1]:.4g}: gradient descent is diverging without overflowing "
            "yet. Use a smaller learning_rate_init (now "
            f"{self.options.learning_rate_init}), or rescale X and y.",
            DivergenceWarning,
            stacklevel=self.user_frame + 3,  # <- _finish <- run <- train
        )
        return True

    def _roll_back(self, bad_loss, *, start=None, frames):
        """Return to the parameters of the last recorded step, and warn.

        That step is what led to non-finite outputs, so it is dropped from
        the path: the trajectory still ends at the parameters the module
        keeps. ``start`` is where the failed step started (steps queued
        after it have moved the module on); ``frames`` counts the calls
        between this one and ``train``, for the warning's stack level.
        """
        result, trajectory = self.result, self.result.trajectory
        if self.last_from is None:
            if start is not None:
                self._load(start)  # the parameters training started from
            raise ValueError(
                f"{self.owner}: the loss is not finite at the initial parameters "
                f"(loss={bad_loss}). Check y for huge values (rescale it, e.g. "
                "with StandardScaler) or use dtype='float64'."
            )
        n_good = trajectory.n_steps - 1
        self._load(self.last_from)
        trajectory._truncate(n_good)
        trajectory._set_final(self.last_from)
        # Count only epochs whose every update was kept, so that
        # len(loss_curve) == n_iter and both describe the path that remains.
        result.n_iter = min(
            result.n_iter, (n_good - self.first_step) // self.steps_per_epoch
        )
        del result.loss_curve[result.n_iter :]
        result.diverged = True
        warnings.warn(
            f"{self.owner}: training diverged at step {n_good + 1} (the loss became "
            f"{bad_loss}). Kept the parameters after step {n_good}, the last with "
            "a finite loss, and the path up to them. Use a smaller "
            f"learning_rate_init (now {self.options.learning_rate_init}), or "
            "rescale X and y.",
            DivergenceWarning,
            stacklevel=self.user_frame + frames,
        )

    def _load(self, flat):
        """Copy the flat vector ``flat`` into the module's trained parameters."""
        with torch.no_grad():
            offset = 0
            for p in self.params:
                p.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
