"""The solvers' coefficients and recursions, against their plain definitions."""

import numpy as np
import pytest
import torch

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
}


def _beta(name, t, s):
    """``beta_{t,s}`` exactly as docs/design.md, section 12, lists it."""
    solver = SOLVERS[name]
    if s > t:
        return 0.0
    if name == "sgd":
        return float(s == t)
    mu = solver.momentum
    if name == "momentum":
        return mu ** (t - s)
    if name == "nesterov":
        return 1 + mu if s == t else mu ** (t - s + 1)
    b1 = solver.beta_1
    return (1 - b1) * b1 ** (t - s) / (1 - b1 ** (t + 1))


@pytest.mark.parametrize("name", list(SOLVERS))
def test_backward_sums_match_the_double_sum(name):
    rng = np.random.default_rng(0)
    T = 9
    eps = rng.uniform(0.05, 0.2, T)
    x = rng.normal(size=(T, 3))
    got = dict(backward_sums(SOLVERS[name], eps, lambda t: x[t]))
    for s in range(T):
        expected = sum(eps[t] * _beta(name, t, s) * x[t] for t in range(s, T))
        np.testing.assert_allclose(got[s], expected, rtol=1e-13)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_effective_step_sizes_are_the_total_weight_of_a_gradient(name):
    eps = np.linspace(0.1, 0.05, 12)
    p = effective_step_sizes(SOLVERS[name], eps)
    expected = [
        sum(eps[t] * _beta(name, t, s) for t in range(s, 12)) for s in range(12)
    ]
    np.testing.assert_allclose(p, expected, rtol=1e-13)


def test_heavy_ball_weight_tends_to_eps_over_one_minus_mu():
    # Far from the end of training a gradient moves the parameters by
    # eps (1 + mu + mu^2 + ...) = eps / (1 - mu) in all.
    p = effective_step_sizes(Solver("sgd", momentum=0.9), np.full(400, 0.01))
    assert p[0] == pytest.approx(0.01 / (1 - 0.9), rel=1e-12)
    assert p[-1] == pytest.approx(0.01)


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
