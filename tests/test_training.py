"""Tests for the gradient-descent loop, against plain per-row autograd.

The reference update is docs/design.md, section 2:

    w_{t+1} = w_t - eps * ( sum_{i in B_t} c_{i,t} J_t(x_i)^T g_{i,t} + alpha * w_t )

with ``c_{i,t} = s_i / sum_{j in B_t} s_j`` and ``g = dl/df`` in closed form.
"""

import contextlib
import copy
import gc
import math
import os
import re
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network._stochastic_optimizers import SGDOptimizer
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from sklearn_pathkernel._model._network import forward, make_mlp, trainable_parameters
from sklearn_pathkernel._training._loop import TrainingOptions, train
from sklearn_pathkernel._training._losses import (
    BINARY_LOGISTIC,
    SOFTMAX_CROSS_ENTROPY,
    SQUARED_ERROR,
)
from sklearn_pathkernel._training._solvers import Solver
from sklearn_pathkernel._training._trajectory import Step, flatten_parameters
from sklearn_pathkernel.exceptions import DivergenceWarning

F64 = torch.float64

# -- helpers -----------------------------------------------------------------


def _mlp(n_features, n_outputs, hidden=(4,), activation="tanh", seed=0):
    gen = torch.Generator().manual_seed(seed)
    return make_mlp(n_features, n_outputs, hidden, activation, generator=gen).to(F64)


def _data(loss, n=6, p=3, n_outputs=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, p, generator=gen, dtype=F64)
    if loss is SQUARED_ERROR:
        Y = torch.randn(n, n_outputs, generator=gen, dtype=F64)
    elif loss is BINARY_LOGISTIC:
        Y = torch.randint(0, 2, (n, 1), generator=gen).to(F64)
    else:
        labels = torch.randint(0, n_outputs, (n,), generator=gen)
        Y = torch.nn.functional.one_hot(labels, n_outputs).to(F64)
    s = torch.rand(n, generator=gen, dtype=F64) + 0.5
    return X, Y, s


def _reference_g(loss, f, y):
    """Closed-form dl/df, written independently of the package."""
    if loss is SQUARED_ERROR:
        return f - y
    if loss is BINARY_LOGISTIC:
        return torch.sigmoid(f) - y
    return torch.softmax(f, dim=-1) - y


def _reference_value(loss, f, y):
    if loss is SQUARED_ERROR:
        return 0.5 * ((f - y) ** 2).sum(-1)
    if loss is BINARY_LOGISTIC:
        p = torch.sigmoid(f)
        return -(y * torch.log(p) + (1 - y) * torch.log1p(-p)).sum(-1)
    return -(y * torch.log_softmax(f, dim=-1)).sum(-1)


def _names(module):
    return [name for name, _ in trainable_parameters(module)]


def _unflatten(module, flat):
    out, offset = {}, 0
    for name, p in trainable_parameters(module):
        out[name] = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return out


def _flat(module):
    return flatten_parameters([p for _, p in trainable_parameters(module)])


def _jacobian(module, flat, x):
    """J(x) at parameters ``flat``: an (O, d) matrix, one autograd call per output."""
    leaves = {
        n: t.detach().clone().requires_grad_(True)
        for n, t in _unflatten(module, flat).items()
    }
    out = functional_call(module, leaves, (x[None, :],)).reshape(-1)
    rows = []
    for o in range(out.shape[0]):
        grads = torch.autograd.grad(out[o], list(leaves.values()), retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def _reference_update(module, flat, X, Y, loss, batch, weights, eps, alpha):
    """One step by hand: returns (w_{t+1}, c, g, objective at w_t)."""
    c = weights[batch] / weights[batch].sum()
    direction = torch.zeros_like(flat)
    gs, values = [], []
    for ci, i in zip(c, batch.tolist()):
        with torch.no_grad():
            f_i = functional_call(module, _unflatten(module, flat), (X[i : i + 1],))[0]
        g_i = _reference_g(loss, f_i, Y[i])
        gs.append(g_i)
        values.append(_reference_value(loss, f_i, Y[i]))
        direction += ci * (_jacobian(module, flat, X[i]).T @ g_i)
    objective = float((c * torch.stack(values)).sum() + 0.5 * alpha * (flat @ flat))
    return flat - eps * (direction + alpha * flat), c, torch.stack(gs), objective


def _options(sample_weight=None, generator=None, **overrides):
    """``train``'s keyword arguments: one full-batch epoch unless overridden."""
    options = dict(
        learning_rate_init=0.1,
        max_iter=1,
        batch_size=None,
        shuffle=True,
        alpha=0.0,
        tol=0.0,
        n_iter_no_change=10**6,
        record_every=1,
        verbose=0,
    )
    options.update(overrides)
    options.setdefault("solver", Solver(alpha=options.pop("alpha")))
    options.pop("alpha", None)
    return dict(
        sample_weight=sample_weight,
        options=TrainingOptions(**options),
        generator=torch.Generator().manual_seed(0) if generator is None else generator,
    )


def _train_recording(module, X, Y, loss, **overrides):
    """Train with every warning recorded: ``(result, warnings)``."""
    options = _options(**overrides)
    if options["sample_weight"] is None:
        options["sample_weight"] = torch.ones(X.shape[0], dtype=X.dtype)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = train(module, X, Y, loss, **options)
    return result, record


def _train(module, X, Y, loss, **overrides):
    """Train; a ConvergenceWarning for max_iter is expected and dropped, any
    other warning (a DivergenceWarning in particular) fails the test."""
    result, record = _train_recording(module, X, Y, loss, **overrides)
    unexpected = [
        w
        for w in record
        if w.category is not ConvergenceWarning or "max_iter" not in str(w.message)
    ]
    assert not unexpected, [str(w.message) for w in unexpected]
    return result


LOSSES = [
    pytest.param(SQUARED_ERROR, 2, id="squared_error"),
    pytest.param(BINARY_LOGISTIC, 1, id="binary_logistic"),
    pytest.param(SOFTMAX_CROSS_ENTROPY, 3, id="softmax"),
]

# -- (1) + (2): one full-batch step --------------------------------------------


@pytest.mark.parametrize("loss, n_outputs", LOSSES)
@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_one_full_batch_step_matches_formula(loss, n_outputs, alpha):
    X, Y, s = _data(loss, n_outputs=n_outputs)
    module = _mlp(3, n_outputs)
    w0 = _flat(module).clone()
    eps = 0.07
    expected, c_ref, g_ref, objective = _reference_update(
        module, w0, X, Y, loss, torch.arange(6), s, eps, alpha
    )
    assert not torch.allclose(expected, w0)  # the step moves

    result = _train(
        module, X, Y, loss, sample_weight=s, learning_rate_init=eps, alpha=alpha
    )

    torch.testing.assert_close(_flat(module), expected, rtol=1e-12, atol=1e-14)
    traj = result.trajectory
    assert traj.n_steps == 1
    assert len(traj) == 1
    assert torch.equal(traj.flat_parameters(0), w0)
    assert result.loss_curve == [pytest.approx(objective, rel=1e-12)]
    assert result.n_iter == 1

    # (2) the recorded Step holds exactly the numbers the update used.
    step = traj.step(0)
    assert isinstance(step, Step)
    assert step.step_size == eps
    assert step.batch.dtype == torch.int64
    assert torch.equal(step.batch, torch.arange(6))
    torch.testing.assert_close(step.batch_weights, c_ref, rtol=1e-15, atol=0)
    torch.testing.assert_close(step.batch_weights, s / s.sum(), rtol=1e-15, atol=0)
    assert step.output_gradients.shape == (6, n_outputs)
    torch.testing.assert_close(step.output_gradients, g_ref, rtol=1e-13, atol=1e-15)
    # ... and they reproduce the update through explicit Jacobians.
    direction = sum(
        ci * (_jacobian(module, w0, X[i]).T @ gi)
        for ci, i, gi in zip(
            step.batch_weights, step.batch.tolist(), step.output_gradients
        )
    )
    torch.testing.assert_close(
        w0 - step.step_size * (direction + alpha * w0),
        _flat(module),
        rtol=1e-12,
        atol=1e-14,
    )


def test_sample_weights_scale_invariant_but_not_ignored():
    X, Y, s = _data(SQUARED_ERROR)
    results = []
    for weights in (s, 10.0 * s, torch.ones(6, dtype=F64)):
        module = _mlp(3, 2)
        _train(module, X, Y, SQUARED_ERROR, sample_weight=weights)
        results.append(_flat(module))
    # c = s / sum(s): scaling all weights changes nothing ...
    torch.testing.assert_close(results[0], results[1], rtol=1e-13, atol=1e-15)
    # ... but the weights themselves matter.
    assert not torch.allclose(results[0], results[2])


# -- (3): final parameters and replay ----------------------------------------


@pytest.mark.parametrize("loss, n_outputs", LOSSES)
def test_replay_reproduces_final_parameters(loss, n_outputs):
    X, Y, s = _data(loss, n_outputs=n_outputs, seed=1)
    module = _mlp(3, n_outputs, seed=1)
    initial = copy.deepcopy(module)
    alpha, eps = 0.05, 0.2
    result = _train(
        module,
        X,
        Y,
        loss,
        sample_weight=s,
        learning_rate_init=eps,
        alpha=alpha,
        max_iter=6,
    )
    traj = result.trajectory
    assert traj.n_steps == 6 and len(traj) == 6

    # The trajectory ends where the module is.
    final = traj.final_parameters()
    assert list(final) == _names(module)
    for name, p in trainable_parameters(module):
        assert torch.equal(final[name], p.detach()), name
    assert torch.equal(traj.flat_parameters(0), _flat(initial))

    # Replay every recorded step from checkpoint 0 with explicit Jacobians.
    w = traj.flat_parameters(0).clone()
    for t in range(traj.n_steps):
        torch.testing.assert_close(w, traj.flat_parameters(t), rtol=1e-12, atol=1e-14)
        step = traj.step(t)
        expected, c, g, objective = _reference_update(
            initial, w, X, Y, loss, step.batch, s, step.step_size, alpha
        )
        torch.testing.assert_close(step.batch_weights, c, rtol=1e-14, atol=0)
        torch.testing.assert_close(step.output_gradients, g, rtol=1e-11, atol=1e-13)
        assert result.loss_curve[t] == pytest.approx(objective, rel=1e-11)
        w = expected
    torch.testing.assert_close(w, _flat(module), rtol=1e-11, atol=1e-13)
    # The loss went down.
    assert result.loss_curve[-1] < result.loss_curve[0]


# -- (4): minibatches --------------------------------------------------------


def _minibatch_run(seed=1, shuffle=True, record_every=1, max_iter=3, lr=0.05, n=10):
    X, Y, s = _data(SQUARED_ERROR, n=n, seed=2)
    module = _mlp(3, 2, seed=2)
    result = _train(
        module,
        X,
        Y,
        SQUARED_ERROR,
        sample_weight=s,
        learning_rate_init=lr,
        max_iter=max_iter,
        batch_size=3,
        shuffle=shuffle,
        record_every=record_every,
        generator=torch.Generator().manual_seed(seed),
    )
    return module, result.trajectory, result, s


def test_minibatch_epochs_partition_rows():
    _, traj, result, s = _minibatch_run()
    assert result.n_iter == 3
    assert traj.n_steps == 12  # ceil(10 / 3) = 4 steps per epoch
    orders = []
    for epoch in range(3):
        steps = [traj.step(4 * epoch + b) for b in range(4)]
        assert [len(st.batch) for st in steps] == [3, 3, 3, 1]
        order = torch.cat([st.batch for st in steps])
        assert torch.equal(torch.sort(order).values, torch.arange(10))
        orders.append(order)
        for st in steps:
            torch.testing.assert_close(
                st.batch_weights, s[st.batch] / s[st.batch].sum(), rtol=1e-15, atol=0
            )
    # Shuffled: not the natural order, and a fresh order every epoch.
    assert any(not torch.equal(o, torch.arange(10)) for o in orders)
    assert not torch.equal(orders[0], orders[1])
    assert not torch.equal(orders[1], orders[2])


def test_minibatch_no_shuffle_gives_ordered_batches():
    _, traj, _, _ = _minibatch_run(shuffle=False)
    expected = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]] * 3
    assert [traj.step(t).batch.tolist() for t in range(traj.n_steps)] == expected


def test_minibatch_steps_follow_formula():
    X, Y, s = _data(SQUARED_ERROR, n=10, seed=2)
    module, traj, _, _ = _minibatch_run(max_iter=1, lr=0.05)
    initial = _mlp(3, 2, seed=2)
    for t in range(traj.n_steps):
        step = traj.step(t)
        nxt = traj.flat_parameters(t + 1) if t + 1 < len(traj) else _flat(module)
        expected, _, g, _ = _reference_update(
            initial,
            traj.flat_parameters(t),
            X,
            Y,
            SQUARED_ERROR,
            step.batch,
            s,
            0.05,
            0.0,
        )
        torch.testing.assert_close(step.output_gradients, g, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(nxt, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("schedule", ["invscaling", "adaptive"])
def test_momentum_under_a_schedule_steps_as_scikit_learns_sgd(schedule, nesterov):
    # MLP's velocity form: each recorded step is scikit-learn's SGDOptimizer
    # update, fed the gradient computed by hand at the recorded w_t and the
    # step size the schedule gave (which changes, or the test is empty).
    X, Y, s = _data(SQUARED_ERROR, n=6, seed=3)
    module = _mlp(3, 2, seed=3)
    solver = Solver(
        "sgd", momentum=0.9, nesterov=nesterov, alpha=0.01, momentum_form="velocity"
    )
    adaptive = {"tol": 1e9, "n_iter_no_change": 0} if schedule == "adaptive" else {}
    traj = _train(
        module, X, Y, SQUARED_ERROR, solver=solver, learning_rate=schedule,
        learning_rate_init=0.2, max_iter=4, batch_size=3, sample_weight=s, **adaptive,
    ).trajectory  # fmt: skip
    assert len(set(traj.step_sizes.tolist())) >= 3
    initial = _mlp(3, 2, seed=3)
    w = [traj.flat_parameters(0).numpy().copy()]
    sk = SGDOptimizer(w, 0.2, momentum=0.9, nesterov=nesterov)
    for t in range(traj.n_steps):
        flat, step = traj.flat_parameters(t), traj.step(t)
        moved, _, _, _ = _reference_update(
            initial, flat, X, Y, SQUARED_ERROR, step.batch, s, 1.0, 0.01
        )
        sk.learning_rate = step.step_size
        sk.update_params(w, [(flat - moved).numpy()])
        nxt = traj.flat_parameters(t + 1) if t + 1 < len(traj) else _flat(module)
        np.testing.assert_allclose(nxt.numpy(), w[0], rtol=1e-10, atol=1e-13)


def test_constant_rate_momentum_trains_the_same_bits_in_both_forms():
    X, Y, s = _data(SQUARED_ERROR, n=6, seed=4)
    runs = []
    for form in ("buffer", "velocity"):
        module = _mlp(3, 2, seed=4)
        solver = Solver("sgd", momentum=0.9, nesterov=True, momentum_form=form)
        _train(module, X, Y, SQUARED_ERROR, solver=solver, max_iter=3, batch_size=3)
        runs.append(_flat(module))
    assert torch.equal(*runs)


def test_minibatch_epoch_loss_is_weighted_mean_of_batches():
    # With a zero step size every batch sees w_0, so the epoch loss is the
    # sample-weighted mean loss over all rows.
    X, Y, s = _data(SQUARED_ERROR, n=10, seed=2)
    module = _mlp(3, 2, seed=2)
    with torch.no_grad():
        values = _reference_value(SQUARED_ERROR, module(X), Y)
        expected = float((s * values).sum() / s.sum())
    result = _train(
        module,
        X,
        Y,
        SQUARED_ERROR,
        sample_weight=s,
        learning_rate_init=0.0,
        batch_size=3,
        max_iter=1,
    )
    assert result.loss_curve == [pytest.approx(expected, rel=1e-12)]


@pytest.mark.parametrize(
    "record_every, expected_steps", [(5, [0, 5, 10]), (4, [0, 4, 8])]
)
def test_record_every_subsamples_checkpoints(record_every, expected_steps):
    module1, every1, _, _ = _minibatch_run(record_every=1)
    module_k, every_k, _, _ = _minibatch_run(record_every=record_every)
    lr = 0.05
    assert len(every1) == 12
    assert len(every_k) == len(expected_steps) < len(every1)
    assert every_k.n_steps == 12
    np.testing.assert_array_equal(every_k.checkpoint_steps, expected_steps)
    assert every_k.weights.sum() == pytest.approx(lr * 12, rel=1e-12)
    group = [min(record_every, 12 - t) for t in expected_steps]
    np.testing.assert_allclose(every_k.weights, lr * np.array(group), rtol=1e-12)
    # Recording less does not change the training.
    for k, t in enumerate(expected_steps):
        assert torch.equal(every_k.flat_parameters(k), every1.flat_parameters(t))
    assert torch.equal(_flat(module_k), _flat(module1))
    assert torch.equal(
        flatten_parameters(every_k.final_parameters().values()), _flat(module1)
    )


def test_same_generator_seed_same_trajectory():
    module_a, a, _, _ = _minibatch_run(seed=5)
    module_b, b, _, _ = _minibatch_run(seed=5)
    _, c, _, _ = _minibatch_run(seed=6)
    assert a.n_steps == b.n_steps == c.n_steps
    for t in range(a.n_steps):
        sa, sb = a.step(t), b.step(t)
        assert torch.equal(sa.batch, sb.batch)
        assert torch.equal(sa.batch_weights, sb.batch_weights)
        assert torch.equal(sa.output_gradients, sb.output_gradients)
        assert torch.equal(a.flat_parameters(t), b.flat_parameters(t))
    assert torch.equal(_flat(module_a), _flat(module_b))
    # Another seed gives another order.
    assert any(
        not torch.equal(a.step(t).batch, c.step(t).batch) for t in range(a.n_steps)
    )


def test_full_batch_ignores_generator_and_large_batch_size():
    X, Y, s = _data(SQUARED_ERROR, seed=3)
    finals = []
    for seed, batch_size in [(0, None), (1, None), (2, 6), (3, 100)]:
        module = _mlp(3, 2, seed=3)
        result = _train(
            module,
            X,
            Y,
            SQUARED_ERROR,
            sample_weight=s,
            max_iter=2,
            batch_size=batch_size,
            generator=torch.Generator().manual_seed(seed),
        )
        assert result.trajectory.n_steps == 2
        assert all(
            torch.equal(result.trajectory.step(t).batch, torch.arange(6))
            for t in range(2)
        )
        finals.append(_flat(module))
    for other in finals[1:]:
        assert torch.equal(other, finals[0])


# -- (5): stopping -------------------------------------------------------------


@pytest.mark.parametrize(
    "lr, tol, n_iter_no_change, expected_n_iter",
    [
        # MLP's rule: stop after more than n_iter_no_change epochs without gain.
        (0.01, 1e6, 2, 4),  # nothing counts as an improvement: stop after 1 + 3
        (1e-12, 1e-3, 3, 5),  # the loss barely moves: stop after 1 + 4
    ],
)
def test_tol_stop_converges_without_warning(lr, tol, n_iter_no_change, expected_n_iter):
    X, Y, s = _data(SQUARED_ERROR)
    module = _mlp(3, 2)
    result, record = _train_recording(
        module,
        X,
        Y,
        SQUARED_ERROR,
        sample_weight=s,
        learning_rate_init=lr,
        tol=tol,
        n_iter_no_change=n_iter_no_change,
        max_iter=50,
    )
    assert not [w for w in record if issubclass(w.category, ConvergenceWarning)]
    assert result.converged is True
    assert result.diverged is False
    assert result.n_iter == expected_n_iter
    assert len(result.loss_curve) == expected_n_iter
    assert result.trajectory.n_steps == expected_n_iter
    final = flatten_parameters(result.trajectory.final_parameters().values())
    assert torch.equal(final, _flat(module))


def test_max_iter_warns_convergence_warning():
    X, Y, s = _data(SQUARED_ERROR)
    module = _mlp(3, 2)
    with pytest.warns(
        ConvergenceWarning,
        match=r"MyNet: gradient descent reached max_iter=4 epochs and the loss is "
        r"still improving",
    ) as record:
        result = train(
            module,
            X,
            Y,
            SQUARED_ERROR,
            **_options(sample_weight=s, max_iter=4, tol=1e-4, n_iter_no_change=10),
            owner="MyNet",
        )
    assert not [w for w in record if issubclass(w.category, DivergenceWarning)]
    assert result.converged is False
    assert result.diverged is False
    assert result.n_iter == 4
    assert len(result.loss_curve) == 4
    assert result.trajectory.n_steps == 4
    assert all(b < a for a, b in zip(result.loss_curve, result.loss_curve[1:]))


# -- (6): divergence -----------------------------------------------------------


def _divergence_problem():
    # A linear model, a step size far beyond 2 / lambda_max: |w| grows by a
    # factor ~1e8 each step until the squared error overflows.
    gen = torch.Generator().manual_seed(4)
    X = torch.randn(8, 3, generator=gen, dtype=F64)
    Y = torch.randn(8, 1, generator=gen, dtype=F64)
    s = torch.rand(8, generator=gen, dtype=F64) + 0.5
    module = _mlp(3, 1, hidden=(), activation="identity", seed=4)
    return module, X, Y, s


def _simulate(module, X, Y, s, lr, n_steps):
    """Plain full-batch GD on the weighted mean squared error.

    Returns the parameters w_0, w_1, ... and the first t with a non-finite loss.
    """
    module = copy.deepcopy(module)
    params = [p for _, p in trainable_parameters(module)]
    c = s / s.sum()
    history = []
    for t in range(n_steps):
        history.append(flatten_parameters(params))
        objective = (c * 0.5 * ((module(X) - Y) ** 2).sum(1)).sum()
        if not torch.isfinite(objective):
            return history, t
        grads = torch.autograd.grad(objective, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)
    raise AssertionError("the reference never diverged")


LR_DIVERGE = 1e8


def test_divergence_keeps_last_finite_parameters():
    module, X, Y, s = _divergence_problem()
    history, t_star = _simulate(module, X, Y, s, LR_DIVERGE, 200)
    assert 3 <= t_star < 100

    with pytest.warns(
        DivergenceWarning,
        match=rf"MyNet: training diverged at step {t_star} \(the loss became "
        r"(inf|nan)\)\. Kept the parameters after step "
        rf"{t_star - 1}, the last with a finite loss",
    ) as record:
        result = train(
            module,
            X,
            Y,
            SQUARED_ERROR,
            **_options(sample_weight=s, learning_rate_init=LR_DIVERGE, max_iter=200),
            owner="MyNet",
        )
    # Only the divergence is reported, not also "reached max_iter".
    assert all(
        w.category is DivergenceWarning
        for w in record
        if issubclass(w.category, ConvergenceWarning)
    )
    assert result.diverged is True
    assert result.converged is False
    traj = result.trajectory
    # w_{t*} has a non-finite loss: the step that led there is dropped.
    assert traj.n_steps == t_star - 1
    assert len(traj) == t_star - 1
    # The loss curve holds the objective at w_0, w_1, ...: all finite.
    assert len(result.loss_curve) == result.n_iter
    assert result.n_iter in (t_star - 1, t_star)
    c = s / s.sum()
    for t, value in enumerate(result.loss_curve):
        with torch.no_grad():
            f = functional_call(module, _unflatten(module, history[t]), (X,))
            expected = float((c * _reference_value(SQUARED_ERROR, f, Y)).sum())
        assert math.isfinite(value)
        assert value == pytest.approx(expected, rel=1e-8)

    # The module keeps w_{t*-1}, and the trajectory ends there too.
    kept = _flat(module)
    assert torch.isfinite(kept).all()
    torch.testing.assert_close(kept, history[t_star - 1], rtol=1e-9, atol=0)
    final = traj.final_parameters()
    for name, p in trainable_parameters(module):
        assert torch.equal(final[name], p.detach()), name
    # Checkpoints are the path up to it.
    for t in range(traj.n_steps):
        torch.testing.assert_close(
            traj.flat_parameters(t), history[t], rtol=1e-9, atol=0
        )
    with torch.no_grad():
        out = forward(module, X)
        assert torch.isfinite(out).all()
        assert torch.isfinite(SQUARED_ERROR.value(out, Y)).all()


def test_divergence_on_the_last_step_is_caught():
    # max_iter = t*: the very last update is the one that makes the loss
    # non-finite. The result must be the same as when training goes on longer.
    module, X, Y, s = _divergence_problem()
    history, t_star = _simulate(module, X, Y, s, LR_DIVERGE, 200)
    with pytest.warns(DivergenceWarning, match="training diverged"):
        result = train(
            module,
            X,
            Y,
            SQUARED_ERROR,
            **_options(sample_weight=s, learning_rate_init=LR_DIVERGE, max_iter=t_star),
        )
    assert result.diverged is True
    assert result.trajectory.n_steps == t_star - 1
    torch.testing.assert_close(_flat(module), history[t_star - 1], rtol=1e-9, atol=0)
    with torch.no_grad():
        assert torch.isfinite(SQUARED_ERROR.value(forward(module, X), Y)).all()


def test_divergence_on_first_step_keeps_initial_parameters():
    module, X, Y, s = _divergence_problem()
    initial = _flat(module).clone()
    # Huge targets: the loss at w_0 is finite (~1e300), at w_1 it overflows.
    Y = torch.full_like(Y, 1e150)
    _, t_star = _simulate(module, X, Y, s, 1e10, 10)
    assert t_star == 1
    with pytest.warns(DivergenceWarning, match="training diverged at step 1 "):
        result = train(
            module,
            X,
            Y,
            SQUARED_ERROR,
            **_options(sample_weight=s, learning_rate_init=1e10, max_iter=10),
        )
    assert result.diverged is True
    assert result.trajectory.n_steps == 0
    assert len(result.trajectory) == 0
    assert torch.equal(_flat(module), initial)
    assert torch.equal(
        flatten_parameters(result.trajectory.final_parameters().values()), initial
    )


def test_overflowing_last_update_is_rolled_back():
    # The only step overflows the outputs themselves: the module goes back to
    # w_0 and the path is empty.
    module, X, Y, s = _divergence_problem()
    X = 100.0 * X
    initial = _flat(module).clone()
    _, t_star = _simulate(module, X, Y, s, 1e308, 3)
    assert t_star == 1
    with pytest.warns(DivergenceWarning, match=r"training diverged at step 1 \("):
        result = train(
            module,
            X,
            Y,
            SQUARED_ERROR,
            **_options(sample_weight=s, learning_rate_init=1e308, max_iter=1),
        )
    assert result.diverged is True
    assert result.trajectory.n_steps == 0
    assert torch.equal(_flat(module), initial)
    assert torch.equal(
        flatten_parameters(result.trajectory.final_parameters().values()), initial
    )
    with torch.no_grad():
        assert torch.isfinite(forward(module, X)).all()


@pytest.mark.parametrize("batch_size", [None, 3])
def test_non_finite_loss_at_initial_parameters_raises(batch_size):
    module, X, Y, s = _divergence_problem()
    initial = _flat(module).clone()
    Y = torch.full_like(Y, 1e200)  # (f - y)^2 overflows
    with pytest.raises(
        ValueError,
        match=re.escape("MyNet: the loss is not finite at the initial parameters"),
    ):
        train(
            module,
            X,
            Y,
            SQUARED_ERROR,
            **_options(sample_weight=s, batch_size=batch_size, max_iter=5),
            owner="MyNet",
        )
    assert torch.equal(_flat(module), initial)


# -- (7): an all-zero-weight batch -------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_zero_weight_batch_moves_only_by_l2(alpha):
    X, Y, _ = _data(SQUARED_ERROR, n=6, seed=5)
    s = torch.tensor([0.0, 0.0, 1.0, 2.0, 1.0, 3.0], dtype=F64)
    module = _mlp(3, 2, seed=5)
    eps = 0.1
    result = _train(
        module,
        X,
        Y,
        SQUARED_ERROR,
        sample_weight=s,
        learning_rate_init=eps,
        alpha=alpha,
        batch_size=2,
        shuffle=False,
        max_iter=1,
    )
    traj = result.trajectory
    assert traj.n_steps == 3
    zero = traj.step(0)
    assert zero.batch.tolist() == [0, 1]
    assert torch.equal(zero.batch_weights, torch.zeros(2, dtype=F64))
    assert torch.isfinite(zero.output_gradients).all()
    w0, w1 = traj.flat_parameters(0), traj.flat_parameters(1)
    if alpha == 0.0:
        assert torch.equal(w1, w0)
    else:
        torch.testing.assert_close(w1, (1 - eps * alpha) * w0, rtol=1e-14, atol=0)
        assert not torch.allclose(w1, w0)
    # The next batch moves by its data again, with weights s_B / sum s_B.
    torch.testing.assert_close(
        traj.step(1).batch_weights, torch.tensor([1 / 3, 2 / 3], dtype=F64)
    )
    assert not torch.allclose(traj.flat_parameters(2), (1 - eps * alpha) * w1)
    assert all(math.isfinite(v) for v in result.loss_curve)


# -- (8): verbose ----------------------------------------------------------------


def test_verbose_prints_a_table_row_per_epoch(capsys):
    X, Y, s = _data(SQUARED_ERROR)
    result = _train(
        _mlp(3, 2), X, Y, SQUARED_ERROR, sample_weight=s, max_iter=3, verbose=1
    )
    header, rule, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["epoch", "train_loss", "change", "dur"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert len(rows) == 3
    previous = None
    for epoch, (row, value) in enumerate(zip(rows, result.loss_curve), start=1):
        fields = row.split()
        assert int(fields[0]) == epoch
        assert float(fields[1]) == pytest.approx(value, rel=1e-7)
        if previous is not None:
            assert float(fields[2]) == pytest.approx(value - previous, rel=1e-4)
        assert float(fields[-1]) >= 0
        previous = value


def test_verbose_reports_stop(capsys):
    X, Y, s = _data(SQUARED_ERROR)
    _train(
        _mlp(3, 2),
        X,
        Y,
        SQUARED_ERROR,
        sample_weight=s,
        max_iter=50,
        tol=1e6,
        n_iter_no_change=2,
        verbose=1,
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 4 + 1  # header, rule, four epochs, the reason
    assert [int(line.split()[0]) for line in lines[2:6]] == [1, 2, 3, 4]
    assert "Stopping" in lines[6]


def test_verbose_zero_prints_nothing(capsys):
    X, Y, s = _data(SQUARED_ERROR)
    _train(_mlp(3, 2), X, Y, SQUARED_ERROR, sample_weight=s, max_iter=3, verbose=0)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


# -- misc ----------------------------------------------------------------------


def test_no_trainable_parameters_raises():
    module = _mlp(3, 1)
    for p in module.parameters():
        p.requires_grad_(False)
    X, Y, s = _data(SQUARED_ERROR, n_outputs=1)
    with pytest.raises(ValueError, match="The 'module' of MyNet has no trainable"):
        train(module, X, Y, SQUARED_ERROR, **_options(sample_weight=s), owner="MyNet")


def test_frozen_parameters_are_not_moved_nor_recorded():
    module = _mlp(3, 2)
    module[0].weight.requires_grad_(False)
    frozen = module[0].weight.detach().clone()
    X, Y, s = _data(SQUARED_ERROR)
    result = _train(module, X, Y, SQUARED_ERROR, sample_weight=s, max_iter=2, alpha=0.1)
    assert torch.equal(module[0].weight, frozen)
    assert result.trajectory.parameter_names == ["0.bias", "2.weight", "2.bias"]
    assert result.trajectory.n_parameters == 4 + 8 + 2


# -- adaptive kernel nodes and on-disk recording -------------------------------


def _adaptive_run(lr, tol=0.05, **overrides):
    X, Y, _ = _data(SQUARED_ERROR, n=12, seed=3)
    module = _mlp(3, 2, seed=3)
    return _train(
        module,
        X,
        Y,
        SQUARED_ERROR,
        learning_rate_init=lr,
        max_iter=40,
        quadrature="adaptive",
        adaptive_tol=tol,
        **overrides,
    ).trajectory


def test_adaptive_keeps_fewer_nodes_when_the_kernel_barely_moves():
    moving = _adaptive_run(lr=0.5)
    still = _adaptive_run(lr=1e-4)
    assert still._adaptive_steps == [0]  # the first step is always a node
    assert len(moving._adaptive_steps) > 3
    assert [n.step for n in still.kernel_nodes()] == [0, 40]
    # A tighter tolerance keeps more nodes on the same path.
    assert len(_adaptive_run(lr=0.5, tol=0.01)._adaptive_steps) > len(
        moving._adaptive_steps
    )


def test_adaptive_nodes_are_where_the_probe_kernel_moved_past_the_tolerance():
    # Recompute the probe kernel at every step with the oracle: each node is
    # the first step whose kernel moved more than tol since the last node.
    from _oracle import tangent_kernel_reference

    from sklearn_pathkernel._training._probe import PROBE_ROWS

    X, _, _ = _data(SQUARED_ERROR, n=12, seed=3)
    traj = _adaptive_run(lr=0.5)
    module = _mlp(3, 2, seed=3)
    probe = X[torch.linspace(0, 11, PROBE_ROWS).round().long()]
    nodes, last = [], None
    for t in range(traj.n_steps):
        K = tangent_kernel_reference(module, traj.parameters(t), probe)
        if last is None or np.linalg.norm(K - last) > 0.05 * np.linalg.norm(last):
            nodes.append(t)
            last = K
    assert traj._adaptive_steps == nodes


def test_the_probe_does_not_change_the_path():
    adaptive = _adaptive_run(lr=0.5)
    X, Y, _ = _data(SQUARED_ERROR, n=12, seed=3)
    plain = _train(
        _mlp(3, 2, seed=3), X, Y, SQUARED_ERROR, learning_rate_init=0.5, max_iter=40
    ).trajectory
    for k in range(plain.n_steps):
        assert torch.equal(adaptive.flat_parameters(k), plain.flat_parameters(k))


def test_recording_to_disk_is_bit_identical_and_a_memmap(tmp_path):
    _, memory, _, _ = _minibatch_run()
    X, Y, s = _data(SQUARED_ERROR, n=10, seed=2)
    disk = _train(
        _mlp(3, 2, seed=2),
        X,
        Y,
        SQUARED_ERROR,
        sample_weight=s,
        learning_rate_init=0.05,
        max_iter=3,
        batch_size=3,
        trajectory_dir=tmp_path,
        generator=torch.Generator().manual_seed(1),
    ).trajectory
    assert disk.on_disk and isinstance(disk._checkpoints._file._data, np.memmap)
    assert not disk._checkpoints._rows  # nothing kept in memory
    assert len(disk) == len(memory) == 12
    for k in range(12):
        assert torch.equal(disk.flat_parameters(k), memory.flat_parameters(k))


# -- per-step records on disk ----------------------------------------------------


def _fit_quietly(estimator, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(X, y)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_records_on_disk_give_the_same_kernel_and_exact_decomposition(tmp_path, solver):
    from sklearn_pathkernel import PathKernelRegressor

    rng = np.random.RandomState(0)
    X, y = rng.randn(23, 3), rng.randn(23)
    options = dict(
        hidden_layer_sizes=(5,),
        solver=solver,
        learning_rate_init=0.01,
        batch_size=4,
        max_iter=3,
        random_state=0,
    )
    memory = _fit_quietly(PathKernelRegressor(**options), X, y)
    disk = _fit_quietly(PathKernelRegressor(trajectory_dir=tmp_path, **options), X, y)
    a, b = memory.trajectory_, disk.trajectory_
    assert b._steps.on_disk and not a._steps.on_disk and b.n_steps == 18
    assert isinstance(b._steps._rows._data, np.memmap)
    for t in range(a.n_steps):
        for x, z in zip(a.step(t), b.step(t)):
            assert x == z if isinstance(x, float) else torch.equal(x, z)
    np.testing.assert_array_equal(disk.kernel(X[:5]), memory.kernel(X[:5]))
    exact_memory = memory.decompose(X[:3], exact=True)
    exact_disk = disk.decompose(X[:3], exact=True)
    for name in ("bias", "contributions", "network_output"):
        np.testing.assert_array_equal(
            getattr(exact_disk, name), getattr(exact_memory, name)
        )


def test_scratch_files_go_with_the_estimator(tmp_path):
    from sklearn_pathkernel import PathKernelRegressor

    rng = np.random.RandomState(0)
    X, y = rng.randn(12, 3), rng.randn(12)
    est = PathKernelRegressor((4,), batch_size=5, max_iter=2, trajectory_dir=tmp_path)
    _fit_quietly(est, X, y)
    first = sorted(os.listdir(tmp_path))
    assert [name.split("-")[0] for name in first] == ["checkpoints", "records"]
    _fit_quietly(est, X, y)  # a refit replaces them
    assert len(os.listdir(tmp_path)) == 2 and not set(first) & set(os.listdir(tmp_path))
    del est
    gc.collect()
    assert os.listdir(tmp_path) == []


def test_trajectory_dir_naming_a_file_is_refused_before_training(tmp_path, monkeypatch):
    from sklearn_pathkernel import PathKernelRegressor
    from sklearn_pathkernel._training import _loop

    a_file = tmp_path / "not-a-dir"
    a_file.write_text("taken")

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(_loop._GradientDescent, "run", no_training)
    X, y = np.random.RandomState(0).randn(8, 2), np.arange(8.0)
    message = rf"trajectory_dir='{re.escape(str(a_file))}' is a file, not a directory"
    with pytest.raises(ValueError, match=message):
        PathKernelRegressor((4,), max_iter=2, trajectory_dir=a_file).fit(X, y)
    assert a_file.read_text() == "taken"


# -- parity with scikit-learn's MLP (issue 22; benchmarks/bench_mlp_parity.py) --


def _mlp_start(n_features, n_outputs, hidden, seed):
    """MLP's initial relu network for ``random_state=seed``, as a torch module.

    scikit-learn's ``_initialize`` draws layer by layer the weights, then
    the biases, uniform in ``+-sqrt(6 / (fan_in + fan_out))``.
    """
    rng = np.random.RandomState(seed)
    widths = [n_features, *hidden, n_outputs]
    layers = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        bound = np.sqrt(6.0 / (fan_in + fan_out))
        weight = rng.uniform(-bound, bound, (fan_in, fan_out))
        bias = rng.uniform(-bound, bound, fan_out)
        linear = torch.nn.Linear(fan_in, fan_out, dtype=F64)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight.T))
            linear.bias.copy_(torch.from_numpy(bias))
        layers += [linear, torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


@pytest.mark.parametrize(
    "config",
    [
        # Nesterov under invscaling, full batch: the row issue 22 reported.
        dict(learning_rate="invscaling", learning_rate_init=0.2, batch_size=178),
        # adaptive drops the rate (tol 0.02, 2 epochs) in minibatches.
        dict(
            learning_rate="adaptive", learning_rate_init=0.05, batch_size=50,
            tol=0.02, n_iter_no_change=2,
        ),
    ],
    ids=["invscaling-full", "adaptive-minibatch"],
)  # fmt: skip
def test_from_mlps_start_training_is_mlps_training(config):
    # Same initial network, same batches (no shuffling), no L2: the update
    # rule, schedules and stopping rule are MLP's, to rounding.
    from sklearn.datasets import load_wine
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import scale

    from sklearn_pathkernel import PathKernelClassifier

    X, y = load_wine(return_X_y=True)
    X = scale(X)
    params = dict(
        MLPClassifier().get_params(),
        hidden_layer_sizes=(8,), solver="sgd", momentum=0.9,
        nesterovs_momentum=True, alpha=0.0, shuffle=False, max_iter=25,
        random_state=3, **config,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(**params).fit(X, y)
        ours = PathKernelClassifier(
            **{k: v for k, v in params.items() if k != "hidden_layer_sizes"},
            module=_mlp_start(13, 3, (8,), 3),
            dtype="float64",
        ).fit(X, y)
    assert ours.n_iter_ == mlp.n_iter_
    assert len(set(ours.trajectory_.step_sizes.tolist())) > 1  # a schedule ran
    np.testing.assert_allclose(ours.loss_curve_, mlp.loss_curve_, rtol=1e-9)
    layers = [m for m in ours.module_ if isinstance(m, torch.nn.Linear)]
    for layer, coef, intercept in zip(layers, mlp.coefs_, mlp.intercepts_):
        np.testing.assert_allclose(layer.weight.detach().numpy().T, coef, atol=1e-9)
        np.testing.assert_allclose(layer.bias.detach().numpy(), intercept, atol=1e-9)


# -- (8): steps that do not wait for the host (issue 21, item 3) ---------------


class _Reads(TorchDispatchMode):
    """Records what would make the host wait for a device: reads of tensor values.

    ``aten::_local_scalar_dense`` (``.item()``, ``float()``, ``bool()``); and
    ``Tensor.tolist``/``Tensor.numpy``, which dispatch nothing on the CPU, so
    :func:`_count_reads` patches them to call :meth:`read`. Each read is
    tagged with whether it happened inside a training step. ``ignored()``
    gives tensors that torch itself keeps on the host on every device
    (``torch.optim.Adam``'s step counts, read by Adam each step): reading
    them waits for nothing.
    """

    def __init__(self, ignored):
        super().__init__()
        self.ignored = ignored
        self.in_step = False
        self.reads = []

    def read(self, name):
        self.reads.append((name, self.in_step))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name == "_local_scalar_dense" and not any(
            args[0] is t for t in self.ignored()
        ):
            self.read(name)
        return func(*args, **(kwargs or {}))


def _count_reads(
    monkeypatch, solver, *, batch_size, quadrature="left", epochs=2, counting=True
):
    """Reads inside the training steps, reads in all, and the result.

    ``counting=False`` trains the same without counting (faster).
    """
    from sklearn_pathkernel._training import _loop

    X, Y, s = _data(SOFTMAX_CROSS_ENTROPY, n=32, n_outputs=3, seed=6)
    module = _mlp(3, 3, hidden=(5,), seed=6)
    optimizer = solver.optimizer([p for _, p in trainable_parameters(module)], 0.01)
    counter = _Reads(
        lambda: [state["step"] for state in optimizer.state.values() if "step" in state]
    )
    step = _loop._GradientDescent._step

    def counted_step(self, *args):
        counter.in_step = True
        try:
            return step(self, *args)
        finally:
            counter.in_step = False

    def reading(real, name):
        def method(tensor, *args, **kwargs):
            counter.read(name)
            return real(tensor, *args, **kwargs)

        return method

    with monkeypatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if counting:
            patch.setattr(_loop._GradientDescent, "_step", counted_step)
        for name in ("tolist", "numpy") if counting else ():
            patch.setattr(
                torch.Tensor, name, reading(getattr(torch.Tensor, name), name)
            )
        options = _options(
            sample_weight=s,
            solver=solver,
            learning_rate_init=0.01,
            max_iter=epochs,
            batch_size=batch_size,
            quadrature=quadrature,
        )
        with counter if counting else contextlib.nullcontext():
            result = train(
                module, X, Y, SOFTMAX_CROSS_ENTROPY, optimizer=optimizer, **options
            )
    inside = [name for name, in_step in counter.reads if in_step]
    return inside, [name for name, _ in counter.reads], result


SOLVERS_READING = [
    pytest.param(Solver("sgd"), "left", id="sgd"),
    pytest.param(
        Solver("sgd", momentum=0.9, nesterov=True, momentum_form="velocity"),
        "left",
        id="nesterov",
    ),
    pytest.param(Solver("adam"), "left", id="adam"),
    pytest.param(Solver("sgd"), "adaptive", id="adaptive"),
]


@pytest.mark.parametrize("solver, quadrature", SOLVERS_READING)
def test_a_training_step_reads_nothing_back(monkeypatch, solver, quadrature):
    inside, whole, result = _count_reads(
        monkeypatch, solver, batch_size=4, quadrature=quadrature
    )
    assert result.trajectory.n_steps == 16  # 8 steps an epoch, 2 epochs
    assert inside == []  # main's loop: 3 reads a step (11 with Adam)
    # The reads an epoch (its weight sums, the queued steps' checks) do not
    # grow with its steps: the same with half as many.
    _, fewer, _ = _count_reads(monkeypatch, solver, batch_size=8, quadrature=quadrature)
    assert len(whole) == len(fewer) <= 12, (whole, fewer)


def _reading_every_step(module, X, Y, loss, s, solver, lr, batches):
    """main's loop before issue 21: every step reads its checks at once.

    Replays ``batches`` (a recorded path's) and returns per step ``(w_t, c,
    g, P_t)``, the weighted losses, and ``w_T``.
    """
    params = [p for _, p in trainable_parameters(module)]
    optimizer = solver.optimizer(params, lr)
    steps, losses = [], []
    for batch in batches:
        current = flatten_parameters(params)
        out = forward(module, X[batch])
        weight_sum = float(s[batch].sum())
        with torch.no_grad():
            c = s[batch] / weight_sum
            g = loss.gradient(out, Y[batch])
            objective = float((c * loss.value(out, Y[batch])).sum())
        assert np.isfinite(objective) and bool(torch.isfinite(g).all())
        grads = torch.autograd.grad(out, params, grad_outputs=c[:, None] * g)
        for p, grad in zip(params, grads):
            p.grad = grad
        solver.set_step_size(optimizer, lr)
        optimizer.step()
        for p in params:
            p.grad = None
        steps.append((current, c, g, solver.preconditioner(optimizer, params)))
        losses.append(objective * weight_sum / float(s.sum()))
    return steps, losses, flatten_parameters(params)


@pytest.mark.parametrize("solver, quadrature", SOLVERS_READING[:3])
def test_queued_steps_record_the_bits_of_reading_every_step(
    monkeypatch, solver, quadrature
):
    _, _, result = _count_reads(monkeypatch, solver, batch_size=4, counting=False)
    traj = result.trajectory
    X, Y, s = _data(SOFTMAX_CROSS_ENTROPY, n=32, n_outputs=3, seed=6)
    batches = [traj.step(t).batch for t in range(traj.n_steps)]
    steps, losses, final = _reading_every_step(
        _mlp(3, 3, hidden=(5,), seed=6),
        X,
        Y,
        SOFTMAX_CROSS_ENTROPY,
        s,
        solver,
        0.01,
        batches,
    )
    for t, (w, c, g, P) in enumerate(steps):
        step = traj.step(t)
        assert torch.equal(traj.flat_parameters(t), w), t
        assert torch.equal(step.batch_weights, c), t
        assert torch.equal(step.output_gradients, g), t
        assert (P is None) == (traj.preconditioner(t) is None)
        assert P is None or torch.equal(traj.preconditioner(t), P), t
    assert torch.equal(flatten_parameters(traj.final_parameters().values()), final)
    # The same sum in the same order: the loss curve to the last bit.
    expected = []
    for e in range(2):
        total = 0.0
        for value in losses[8 * e : 8 * e + 8]:
            total += value
        expected.append(total)
    assert result.loss_curve == expected


def _diverging_minibatch_run(solver, lr, batch_size):
    module, X, Y, s = _divergence_problem()
    result, record = _train_recording(
        module,
        X,
        Y,
        SQUARED_ERROR,
        sample_weight=s,
        solver=solver,
        learning_rate_init=lr,
        max_iter=50,
        batch_size=batch_size,
    )
    return module, result, [(w.category, str(w.message), w.filename) for w in record]


@pytest.mark.parametrize(
    "solver, lr, batch_size",
    [(Solver("sgd"), LR_DIVERGE, 3), (Solver("adam"), 5e153, 2)],
    ids=["sgd", "adam"],
)
def test_a_divergence_inside_the_queued_steps_ends_as_reading_every_step(
    monkeypatch, solver, lr, batch_size
):
    # Three or four steps an epoch, all queued before their checks are read;
    # a window of one step reads each step's checks before the next, as
    # main's loop did.
    from sklearn_pathkernel._training import _loop

    module, result, warned = _diverging_minibatch_run(solver, lr, batch_size)
    monkeypatch.setattr(_loop, "WINDOW_BYTES", 1)
    one_module, one, one_warned = _diverging_minibatch_run(solver, lr, batch_size)
    assert result.diverged and one.diverged
    bad_step = int(re.search(r"diverged at step (\d+)", warned[0][1]).group(1))
    per_epoch = -(-8 // batch_size)
    assert bad_step % per_epoch != per_epoch - 1  # steps were queued after it
    assert bad_step > 1
    assert warned == one_warned  # the same warnings, from the same frame
    assert torch.equal(_flat(module), _flat(one_module))
    assert (result.loss_curve, result.n_iter) == (one.loss_curve, one.n_iter)
    traj, one_traj = result.trajectory, one.trajectory
    assert traj.n_steps == one_traj.n_steps == bad_step - 1
    assert torch.equal(traj._checkpoints.matrix(), one_traj._checkpoints.matrix())
    for t in range(traj.n_steps):
        assert all(
            torch.equal(a, b) for a, b in zip(traj.step(t)[1:], one_traj.step(t)[1:])
        )


def test_the_probe_decides_on_the_device_as_reading_the_change_would():
    from sklearn_pathkernel._training._probe import KernelProbe

    X, _, _ = _data(SQUARED_ERROR, n=12, seed=3)
    module = _mlp(3, 2, seed=3)
    probe = KernelProbe(module, _names(module), X, tol=0.05)
    start = {n: p.detach() for n, p in trainable_parameters(module)}
    moved = probe.moved(start)
    assert moved.dtype == torch.bool and moved.shape == () and bool(moved)
    last = probe.last.clone()
    near = {n: p * (1 + 1e-6) for n, p in start.items()}
    assert not bool(probe.moved(near))
    assert torch.equal(probe.last, last)  # not a node: the last node's kernel stays
    far = {n: 3 * p for n, p in start.items()}
    assert bool(probe.moved(far)) and not torch.equal(probe.last, last)
    # A NaN change makes a node, as "not (change <= tol * norm)" did.
    assert bool(probe.moved({n: p * float("nan") for n, p in start.items()}))


class _DeviceWaits(TorchDispatchMode):
    """Operations that make the host wait for a CUDA device: value reads of
    device tensors and blocking copies from the device."""

    def __init__(self):
        super().__init__()
        self.waits = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        source = args[0] if name != "copy_" else args[1]
        on_device = isinstance(source, torch.Tensor) and source.device.type == "cuda"
        positional = args[2] if name == "copy_" and len(args) > 2 else False
        blocking = not kwargs.get("non_blocking", positional)
        to_host = torch.device(kwargs.get("device") or args[0].device).type == "cpu"
        copies = name in ("_to_copy", "copy_") and blocking and to_host
        if on_device and (name == "_local_scalar_dense" or copies):
            self.waits.append(name)
        return func(*args, **kwargs)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("solver", [Solver("sgd", momentum=0.9), Solver("adam")])
def test_on_cuda_steps_do_not_wait_and_the_path_is_the_cpus(monkeypatch, solver):
    from sklearn_pathkernel._training import _loop

    X, Y, s = _data(SOFTMAX_CROSS_ENTROPY, n=32, n_outputs=3, seed=6)
    waits, step = _DeviceWaits(), _loop._GradientDescent._step

    def counted_step(self, *args):
        with waits:
            return step(self, *args)

    results = {}
    for device in ("cpu", "cuda"):
        module = _mlp(3, 3, hidden=(5,), seed=6).to(device)
        if device == "cuda":
            monkeypatch.setattr(_loop._GradientDescent, "_step", counted_step)
        results[device] = _train(
            module,
            X.to(device),
            Y.to(device),
            SOFTMAX_CROSS_ENTROPY,
            sample_weight=s.to(device),
            solver=solver,
            learning_rate_init=0.01,
            max_iter=2,
            batch_size=4,
        )
    assert waits.waits == []
    cpu, gpu = results["cpu"].trajectory, results["cuda"].trajectory
    assert gpu.n_steps == cpu.n_steps == 16
    for t in range(cpu.n_steps):
        assert not gpu.flat_parameters(t).is_pinned()  # no locked host memory kept
        torch.testing.assert_close(gpu.flat_parameters(t), cpu.flat_parameters(t))
        for a, b in zip(gpu.step(t)[1:], cpu.step(t)[1:]):
            torch.testing.assert_close(a, b)
        if solver.diagonal:
            torch.testing.assert_close(gpu.preconditioner(t), cpu.preconditioner(t))
    np.testing.assert_allclose(results["cuda"].loss_curve, results["cpu"].loss_curve)
