"""The solvers' coefficients and recursions, against their plain definitions."""

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.neural_network._stochastic_optimizers import SGDOptimizer

from sklearn_pathkernel._training._solvers import (
    Solver,
    backward_sums,
    effective_step_sizes,
)

SOLVERS = {
    "sgd": Solver("sgd"),
    "momentum": Solver("sgd", momentum=0.8),
    "nesterov": Solver("sgd", momentum=0.7, nesterov=True),
    "adam": Solver("adam", beta_1=0.85),
    "adamw": Solver("adamw", beta_1=0.9, weight_decay=0.01),
    # scikit-learn's velocity form: eps_s inside the sum.
    "momentum-velocity": Solver("sgd", momentum=0.8, momentum_form="velocity"),
    "nesterov-velocity": Solver(
        "sgd", momentum=0.7, nesterov=True, momentum_form="velocity"
    ),
}


def _beta(name, t, s):
    """``beta_{t,s}`` exactly as docs/design.md, section 12, lists it."""
    solver = SOLVERS[name]
    if s > t:
        return 0.0
    if name == "sgd":
        return float(s == t)
    mu = solver.momentum
    if not solver.nesterov and solver.momentum:
        return mu ** (t - s)
    if solver.nesterov:
        return 1 + mu if s == t else mu ** (t - s + 1)
    b1 = solver.beta_1
    return (1 - b1) * b1 ** (t - s) / (1 - b1 ** (t + 1))


def _e(name, eps, t, s):
    """The step size of ``G_s`` in step ``t``: ``eps_s`` inside, else ``eps_t``."""
    return eps[s] if "velocity" in name else eps[t]


@pytest.mark.parametrize("name", list(SOLVERS))
def test_backward_sums_match_the_double_sum(name):
    rng = np.random.default_rng(0)
    T = 9
    eps = rng.uniform(0.05, 0.2, T)
    x = rng.normal(size=(T, 3))
    got = dict(backward_sums(SOLVERS[name], eps, lambda t: x[t]))
    for s in range(T):
        expected = sum(
            _e(name, eps, t, s) * _beta(name, t, s) * x[t] for t in range(s, T)
        )
        np.testing.assert_allclose(got[s], expected, rtol=1e-13)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_effective_step_sizes_are_the_total_weight_of_a_gradient(name):
    eps = np.linspace(0.1, 0.05, 12)
    p = effective_step_sizes(SOLVERS[name], eps)
    expected = [
        sum(_e(name, eps, t, s) * _beta(name, t, s) for t in range(s, 12))
        for s in range(12)
    ]
    np.testing.assert_allclose(p, expected, rtol=1e-13)


def test_heavy_ball_weight_tends_to_eps_over_one_minus_mu():
    # Far from the end of training a gradient moves the parameters by
    # eps (1 + mu + mu^2 + ...) = eps / (1 - mu) in all.
    p = effective_step_sizes(Solver("sgd", momentum=0.9), np.full(400, 0.01))
    assert p[0] == pytest.approx(0.01 / (1 - 0.9), rel=1e-12)
    assert p[-1] == pytest.approx(0.01)


def test_velocity_weights_under_a_schedule_keep_eps_s():
    # A gradient taken at rate eps_s moves the parameters by eps_s / (1 - mu)
    # in all, whatever the later rates (the velocity is in parameter units).
    eps = 0.1 / np.arange(1, 401) ** 0.5
    p = effective_step_sizes(SOLVERS["momentum-velocity"], eps)
    assert p[0] == pytest.approx(0.1 / (1 - 0.8), rel=1e-12)


@pytest.mark.parametrize("name", ["momentum", "nesterov"])
def test_constant_rate_velocity_form_is_the_same_bits(name):
    eps = np.full(15, 0.05)
    x = np.random.default_rng(1).normal(size=(15, 4))
    velocity = dataclasses.replace(SOLVERS[name], momentum_form="velocity")
    for (s, a), (r, b) in zip(
        backward_sums(SOLVERS[name], eps, lambda t: x[t]),
        backward_sums(velocity, eps, lambda t: x[t]),
    ):
        assert s == r and np.array_equal(a, b)
    assert np.array_equal(
        effective_step_sizes(SOLVERS[name], eps), effective_step_sizes(velocity, eps)
    )


def test_an_unknown_momentum_form_is_refused():
    with pytest.raises(ValueError, match="momentum_form must be one of"):
        Solver("sgd", momentum_form="sklearn")


@pytest.mark.parametrize("name", ["momentum-velocity", "nesterov-velocity"])
def test_velocity_steps_under_a_schedule_are_scikit_learns(name):
    # torch.optim.SGD with its buffers rescaled by Solver.set_step_size takes
    # scikit-learn's SGDOptimizer steps, and the written form (eps_s inside)
    # reproduces them, for a falling and a jumping step size.
    solver = SOLVERS[name]
    eps = [0.1, 0.1, 0.05, 0.05, 0.02, 0.004, 0.03]
    torch.manual_seed(0)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    reference = [w.detach().numpy().copy()]
    sk = SGDOptimizer(
        reference, 0.1, momentum=solver.momentum, nesterov=solver.nesterov
    )
    optimizer = solver.optimizer([w], eps[0])
    history, gradients = [w.detach().clone()], []
    for t, rate in enumerate(eps):
        g = torch.randn(5, dtype=torch.float64)
        gradients.append(g)
        solver.set_step_size(optimizer, rate)
        w.grad = g.clone()
        optimizer.step()
        history.append(w.detach().clone())
        sk.learning_rate = rate
        sk.update_params(reference, [g.numpy().copy()])
        np.testing.assert_allclose(w.detach().numpy(), reference[0], rtol=1e-13)
    for t in range(len(eps)):
        step = -sum(eps[s] * _beta(name, t, s) * gradients[s] for s in range(t + 1))
        torch.testing.assert_close(
            history[t + 1] - history[t], step, rtol=1e-12, atol=1e-15
        )


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "adamw"])
def test_a_recorded_step_is_the_one_torch_takes(name):
    # With the preconditioner read back from the optimiser, the update rule's
    # form reproduces torch.optim's steps from the gradients alone.
    solver = SOLVERS[name]
    torch.manual_seed(0)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    optimizer = solver.optimizer([w], 0.1)
    history, gradients, preconditioners = [w.detach().clone()], [], []
    for t in range(6):
        g = torch.randn(5, dtype=torch.float64)
        w.grad = g.clone()
        gradients.append(g + solver.alpha * history[-1])
        optimizer.step()
        P = solver.preconditioner(optimizer, [w])
        preconditioners.append(torch.ones(5, dtype=torch.float64) if P is None else P)
        history.append(w.detach().clone())
    for t in range(6):
        step = (
            -0.1
            * preconditioners[t]
            * sum(_beta(name, t, s) * gradients[s] for s in range(t + 1))
            - 0.1 * solver.weight_decay * history[t]
        )
        torch.testing.assert_close(
            history[t + 1] - history[t], step, rtol=1e-12, atol=1e-15
        )


def test_sgd_has_no_preconditioner():
    w = torch.zeros(2, requires_grad=True)
    optimizer = Solver("sgd").optimizer([w], 0.1)
    assert Solver("sgd").preconditioner(optimizer, [w]) is None


def test_a_solver_saved_without_the_form_keeps_the_buffer_meaning():
    # Persistence rebuilds a Solver from its saved fields; older files lack
    # momentum_form and were trained with torch's buffer.
    saved = dataclasses.asdict(Solver("sgd", momentum=0.9, momentum_form="velocity"))
    del saved["momentum_form"]
    assert Solver(**saved).momentum_form == "buffer"
    assert not Solver(**saved).steps_inside
