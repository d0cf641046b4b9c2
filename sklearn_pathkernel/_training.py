"""The gradient-descent loop that records the Trajectory.

One step, exactly as DESIGN.md section 2 writes it::

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
from ._progress import EpochLog
from ._trajectory import Step, Trajectory, flatten_parameters
from .exceptions import DivergenceWarning


@dataclass
class TrainingResult:
    """What :func:`train` returns besides the trained module."""

    trajectory: Trajectory
    loss_curve: list = field(default_factory=list)
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
    learning_rate,
    max_iter,
    batch_size,
    shuffle,
    alpha,
    tol,
    n_iter_no_change,
    record_every,
    generator,
    verbose=0,
    owner="estimator",
):
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
    generator : torch.Generator
        Source of the shuffling order (on the CPU).
    verbose : int
        Print a table row per epoch (loss, its change, seconds) when positive.
    owner : str
        Estimator name for messages.

    Returns
    -------
    result : TrainingResult
    """
    named = trainable_parameters(module)
    params = [p for _, p in named]
    if not params:
        raise ValueError(f"The 'module' of {owner} has no trainable parameters.")
    trajectory = Trajectory(
        {name: tuple(p.shape) for name, p in named},
        record_every=record_every,
        alpha=alpha,
    )
    result = TrainingResult(trajectory)
    n_samples = X.shape[0]
    full_batch = batch_size is None or batch_size >= n_samples
    total_weight = float(sample_weight.sum())
    best_loss, no_improvement = np.inf, 0
    log = EpochLog(verbose)
    last_from = None  # w_t of the last recorded step: where a rollback returns

    for epoch in range(max_iter):
        if full_batch:
            batches = [torch.arange(n_samples, device=X.device)]
        else:
            order = (
                torch.randperm(n_samples, generator=generator)
                if shuffle
                else torch.arange(n_samples)
            ).to(X.device)
            batches = torch.split(order, batch_size)
        steps_per_epoch = len(batches)

        epoch_loss = 0.0
        for batch in batches:
            current = flatten_parameters(params)
            step_loss, step, batch_weight = _gradient_step(
                module, params, X, Y, batch, loss, sample_weight, learning_rate, alpha
            )
            if step is None:
                _roll_back(
                    module,
                    params,
                    result,
                    last_from,
                    step_loss,
                    learning_rate,
                    owner,
                    len(batches),
                )
                return result
            trajectory._append_step(current, step, copy=False)  # current is fresh
            last_from = current
            epoch_loss += step_loss * batch_weight / total_weight

        result.loss_curve.append(epoch_loss)
        result.n_iter = epoch + 1
        log.epoch(epoch + 1, epoch_loss)
        if epoch_loss > best_loss - tol:
            no_improvement += 1
        else:
            no_improvement = 0
        best_loss = min(best_loss, epoch_loss)
        if no_improvement >= n_iter_no_change:
            result.converged = True
            log.message(
                f"Training loss did not improve more than tol={tol} for "
                f"{n_iter_no_change} consecutive epochs. Stopping."
            )
            break

    if not _final_objective_finite(module, params, X, Y, sample_weight, loss, alpha):
        # The last update overflowed: step back to the last finite parameters.
        _roll_back(
            module,
            params,
            result,
            last_from,
            float("inf"),
            learning_rate,
            owner,
            steps_per_epoch,
        )
        return result
    trajectory._set_final(flatten_parameters(params))
    grew = _warn_if_the_loss_grew(result.loss_curve, learning_rate, owner)
    if not (result.converged or grew):
        warnings.warn(
            f"{owner}: gradient descent reached max_iter={max_iter} epochs and "
            "the loss is still improving. Increase max_iter, or raise tol to "
            "stop earlier.",
            ConvergenceWarning,
            stacklevel=5,  # train <- fit <- _fit_context <- _restore_on_failure <- user
        )
    return result


def _gradient_step(module, params, X, Y, batch, loss, sample_weight, eps, alpha):
    """Take one step in place.

    Returns the objective at ``w_t``, the ``Step`` (None when the objective
    or ``g`` is not finite, and then no step is taken) and the batch's total
    sample weight.
    """
    out = forward(module, X[batch])
    weights = sample_weight[batch]
    weight_sum = float(weights.sum())
    objective, c, g = _evaluate(out, params, Y[batch], weights, weight_sum, loss, alpha)
    if c is None:
        return objective, None, weight_sum
    grads = torch.autograd.grad(out, params, grad_outputs=c[:, None] * g)
    with torch.no_grad():
        for p, grad in zip(params, grads):
            if alpha:
                grad = grad + alpha * p
            p.sub_(eps * grad)
    return objective, Step(float(eps), batch.cpu(), c.cpu(), g.cpu()), weight_sum


def _evaluate(out, params, target, weights, weight_sum, loss, alpha):
    """Objective, batch weights ``c`` and ``g`` at outputs ``out``.

    Returns ``(objective, None, None)`` when the objective or ``g`` is not
    finite: the one divergence test, used at every step and at the end.
    """
    with torch.no_grad():
        # An all-zero-weight batch moves only through the L2 term.
        c = weights / weight_sum if weight_sum > 0 else torch.zeros_like(weights)
        g = loss.gradient(out, target)
        objective = (c * loss.value(out, target)).sum()
        if alpha:
            objective = objective + 0.5 * alpha * sum((p * p).sum() for p in params)
        objective = float(objective)
    if not (np.isfinite(objective) and bool(torch.isfinite(g).all())):
        return objective, None, None
    return objective, c, g


# A final epoch loss this many times the first one: training blew up while
# staying finite (gradient descent with a sane step size does not do that).
_GROWTH_LIMIT = 10.0


def _warn_if_the_loss_grew(loss_curve, learning_rate, owner):
    """Warn, and return True, when the loss ended far above where it started."""
    if len(loss_curve) < 2 or not loss_curve[-1] > _GROWTH_LIMIT * loss_curve[0]:
        return False
    warnings.warn(
        f"{owner}: the training loss grew from {loss_curve[0]:.4g} to "
        f"{loss_curve[-1]:.4g}: gradient descent is diverging without "
        f"overflowing yet. Use a smaller learning_rate (now {learning_rate}), "
        "or rescale X and y.",
        DivergenceWarning,
        stacklevel=6,  # as for train's own warnings, one frame deeper
    )
    return True


def _final_objective_finite(module, params, X, Y, sample_weight, loss, alpha):
    with torch.no_grad():
        out = forward(module, X)
    total = float(sample_weight.sum())
    return _evaluate(out, params, Y, sample_weight, total, loss, alpha)[1] is not None


def _roll_back(
    module, params, result, last_from, bad_loss, learning_rate, owner, steps_per_epoch
):
    """Return to the parameters of the last recorded step, and warn.

    That step is what led to non-finite outputs, so it is dropped from the
    path: the trajectory still ends at the parameters the module keeps.
    """
    trajectory = result.trajectory
    if last_from is None:
        raise ValueError(
            f"{owner}: the loss is not finite at the initial parameters "
            f"(loss={bad_loss}). Check y for huge values (rescale it, e.g. with "
            "StandardScaler) or use dtype='float64'."
        )
    n_good = trajectory.n_steps - 1
    with torch.no_grad():
        offset = 0
        for p in params:
            p.copy_(last_from[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
    trajectory._truncate(n_good)
    trajectory._set_final(last_from)
    # Count only epochs whose every update was kept, so that
    # len(loss_curve) == n_iter and both describe the path that remains.
    result.n_iter = min(result.n_iter, n_good // steps_per_epoch)
    del result.loss_curve[result.n_iter :]
    result.diverged = True
    warnings.warn(
        f"{owner}: training diverged at step {n_good + 1} (the loss became "
        f"{bad_loss}). Kept the parameters after step {n_good}, the last with "
        f"a finite loss, and the path up to them. Use a smaller learning_rate "
        f"(now {learning_rate}), or rescale X and y.",
        DivergenceWarning,
        stacklevel=6,  # as for train's own warnings, one frame deeper
    )
