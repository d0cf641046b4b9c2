"""The gradient-descent loop that records the Trajectory.

One step, exactly as docs/design.md, section 2, writes it::

    w_{t+1} = w_t - eps * ( sum_{i in B_t} c_{i,t} J_t(x_i)^T g_{i,t} + alpha * w_t )

The backward pass is seeded with ``c_{i,t} g_{i,t}``, the very numbers the
trajectory records, so the recorded path and the decomposition agree to
rounding.
"""

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from ._network import forward, trainable_parameters
from ._probe import KernelProbe
from ._progress import EpochLog
from ._trajectory import Step, Trajectory, flatten_parameters
from .exceptions import DivergenceWarning

# Frames between a warning raised in train() and the user's call of fit:
# train <- fit <- _fit_context <- _restore_on_failure <- user.
_USER_FRAME = 5

# A final epoch loss this many times the first one: training blew up while
# staying finite (gradient descent with a sane step size does not do that).
_GROWTH_LIMIT = 10.0


@dataclass(frozen=True)
class TrainingOptions:
    """How :func:`train` runs gradient descent (the estimator's parameters).

    Attributes
    ----------
    learning_rate : float
        The step size ``eps``.
    max_iter : int
        Number of epochs (passes over the data).
    batch_size : int or None
        Rows per step; None for full-batch gradient descent.
    shuffle : bool
        Reshuffle rows every epoch (minibatch only).
    alpha : float
        L2 strength; the objective adds ``alpha / 2 * ||w||^2``.
    tol, n_iter_no_change : float, int
        Stop when the epoch loss has not improved by ``tol`` for
        ``n_iter_no_change`` consecutive epochs.
    record_every : int
        Keep the parameters every ``record_every`` steps.
    quadrature, kernel_nodes : str, int, float or None
        The kernel's rule over the kept parameters (:class:`Trajectory`).
    adaptive_tol : float
        With ``quadrature="adaptive"``: the probe kernel's relative movement
        that makes a new node (:class:`KernelProbe`).
    trajectory_dir : str, os.PathLike or None
        Keep the parameters in a memory-mapped file there.
    verbose : int
        Print a table row per epoch (loss, its change, seconds) when positive.
    """

    learning_rate: float
    max_iter: int
    batch_size: int | None = None
    shuffle: bool = True
    alpha: float = 0.0
    tol: float = 1e-4
    n_iter_no_change: int = 10
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
    n_iter: int = 0
    converged: bool = False
    diverged: bool = False


def train(module, X, Y, loss, *, sample_weight, options, generator, owner="estimator"):
    """Train ``module`` in place by (minibatch) gradient descent.

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
    generator : torch.Generator
        Source of the shuffling order (on the CPU).
    owner : str
        Estimator name for messages.

    Returns
    -------
    result : TrainingResult
        With ``diverged`` set when a non-finite loss made training step
        back (a :class:`DivergenceWarning` says so); the module then holds
        the last parameters with a finite loss.
    """
    return _GradientDescent(module, X, Y, loss, sample_weight, options, owner).run(
        generator
    )


class _GradientDescent:
    """One run of :func:`train`: the loop, its stopping rules and its rollback."""

    def __init__(self, module, X, Y, loss, sample_weight, options, owner):
        named = trainable_parameters(module)
        if not named:
            raise ValueError(f"The 'module' of {owner} has no trainable parameters.")
        self.module, self.X, self.Y, self.loss = module, X, Y, loss
        self.params = [p for _, p in named]
        self.sample_weight = sample_weight
        self.options = options
        self.owner = owner
        self.result = TrainingResult(
            Trajectory(
                {name: tuple(p.shape) for name, p in named},
                record_every=options.record_every,
                alpha=options.alpha,
                quadrature=options.quadrature,
                kernel_nodes=options.kernel_nodes,
                directory=options.trajectory_dir,
            )
        )
        self.named = dict(named)
        self.probe = (
            KernelProbe(module, list(self.named), X, options.adaptive_tol)
            if options.quadrature == "adaptive"
            else None
        )
        self.last_from = None  # w_t of the last recorded step: where a rollback returns
        self.steps_per_epoch = 1

    def run(self, generator):
        options, result = self.options, self.result
        total_weight = float(self.sample_weight.sum())
        best_loss, no_improvement = np.inf, 0
        log = EpochLog(options.verbose)
        for epoch in range(options.max_iter):
            batches = self._batches(generator)
            self.steps_per_epoch = len(batches)
            epoch_loss = 0.0
            for batch in batches:
                step_loss, batch_weight = self._step(batch)
                if step_loss is None:
                    return result  # diverged and rolled back
                epoch_loss += step_loss * batch_weight / total_weight
            result.loss_curve.append(epoch_loss)
            result.n_iter = epoch + 1
            log.epoch(epoch + 1, epoch_loss)
            no_improvement = (
                no_improvement + 1 if epoch_loss > best_loss - options.tol else 0
            )
            best_loss = min(best_loss, epoch_loss)
            if no_improvement >= options.n_iter_no_change:
                result.converged = True
                log.message(
                    f"Training loss did not improve more than tol={options.tol} for "
                    f"{options.n_iter_no_change} consecutive epochs. Stopping."
                )
                break
        return self._finish()

    def _batches(self, generator):
        """This epoch's batches of row indices, on the device of ``X``."""
        n_samples = self.X.shape[0]
        batch_size = self.options.batch_size
        if batch_size is None or batch_size >= n_samples:
            return [torch.arange(n_samples, device=self.X.device)]
        order = (
            torch.randperm(n_samples, generator=generator)
            if self.options.shuffle
            else torch.arange(n_samples)
        )
        return torch.split(order.to(self.X.device), batch_size)

    def _step(self, batch):
        """Take and record one step in place.

        Returns the objective at ``w_t`` (None when it or ``g`` is not
        finite: then the run has rolled back) and the batch's sample weight.
        """
        current = flatten_parameters(self.params)
        out = forward(self.module, self.X[batch])
        weights = self.sample_weight[batch]
        weight_sum = float(weights.sum())
        objective, c, g = self._evaluate(out, self.Y[batch], weights, weight_sum)
        if c is None:
            self._roll_back(objective)
            return None, weight_sum
        eps, alpha = self.options.learning_rate, self.options.alpha
        t = self.result.trajectory.n_steps
        node = (
            self.probe is not None
            and t % self.options.record_every == 0
            and self.probe.moved({n: p.detach() for n, p in self.named.items()})
        )
        grads = torch.autograd.grad(out, self.params, grad_outputs=c[:, None] * g)
        with torch.no_grad():
            for p, grad in zip(self.params, grads):
                if alpha:
                    grad = grad + alpha * p
                p.sub_(eps * grad)
        step = Step(float(eps), batch.cpu(), c.cpu(), g.cpu())
        self.result.trajectory._append_step(current, step, copy=False)  # fresh copy
        if node:
            self.result.trajectory._add_adaptive_node(t)
        self.last_from = current
        return objective, weight_sum

    def _evaluate(self, out, target, weights, weight_sum):
        """Objective, batch weights ``c`` and ``g`` at outputs ``out``.

        Returns ``(objective, None, None)`` when the objective or ``g`` is not
        finite: the one divergence test, used at every step and at the end.
        """
        alpha = self.options.alpha
        with torch.no_grad():
            # An all-zero-weight batch moves only through the L2 term.
            c = weights / weight_sum if weight_sum > 0 else torch.zeros_like(weights)
            g = self.loss.gradient(out, target)
            objective = (c * self.loss.value(out, target)).sum()
            if alpha:
                objective = objective + 0.5 * alpha * sum(
                    (p * p).sum() for p in self.params
                )
            objective = float(objective)
        if not (np.isfinite(objective) and bool(torch.isfinite(g).all())):
            return objective, None, None
        return objective, c, g

    def _finish(self):
        """Check the final parameters, warn as needed, and close the path."""
        with torch.no_grad():
            out = forward(self.module, self.X)
        total = float(self.sample_weight.sum())
        if self._evaluate(out, self.Y, self.sample_weight, total)[1] is None:
            # The last update overflowed: step back to the last finite parameters.
            self._roll_back(float("inf"))
            return self.result
        self.result.trajectory._set_final(flatten_parameters(self.params))
        grew = self._warn_if_the_loss_grew()
        if not (self.result.converged or grew):
            warnings.warn(
                f"{self.owner}: gradient descent reached "
                f"max_iter={self.options.max_iter} epochs and the loss is still "
                "improving. Increase max_iter, or raise tol to stop earlier.",
                ConvergenceWarning,
                stacklevel=_USER_FRAME + 2,  # _finish <- run <- train
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
            "yet. Use a smaller learning_rate (now "
            f"{self.options.learning_rate}), or rescale X and y.",
            DivergenceWarning,
            stacklevel=_USER_FRAME + 3,  # <- _finish <- run <- train
        )
        return True

    def _roll_back(self, bad_loss):
        """Return to the parameters of the last recorded step, and warn.

        That step is what led to non-finite outputs, so it is dropped from
        the path: the trajectory still ends at the parameters the module
        keeps.
        """
        result, trajectory = self.result, self.result.trajectory
        if self.last_from is None:
            raise ValueError(
                f"{self.owner}: the loss is not finite at the initial parameters "
                f"(loss={bad_loss}). Check y for huge values (rescale it, e.g. "
                "with StandardScaler) or use dtype='float64'."
            )
        n_good = trajectory.n_steps - 1
        with torch.no_grad():
            offset = 0
            for p in self.params:
                p.copy_(self.last_from[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        trajectory._truncate(n_good)
        trajectory._set_final(self.last_from)
        # Count only epochs whose every update was kept, so that
        # len(loss_curve) == n_iter and both describe the path that remains.
        result.n_iter = min(result.n_iter, n_good // self.steps_per_epoch)
        del result.loss_curve[result.n_iter :]
        result.diverged = True
        warnings.warn(
            f"{self.owner}: training diverged at step {n_good + 1} (the loss became "
            f"{bad_loss}). Kept the parameters after step {n_good}, the last with "
            "a finite loss, and the path up to them. Use a smaller learning_rate "
            f"(now {self.options.learning_rate}), or rescale X and y.",
            DivergenceWarning,
            # _roll_back <- _step <- run <- train, or <- _finish <- run <- train
            stacklevel=_USER_FRAME + 3,
        )
