"""Tests for the quadrature rules' nodes and weights."""

import numpy as np
import pytest

from sklearn_pathkernel._training._quadrature import (
    RULES,
    check_rule,
    node_count,
    node_weights,
    select_nodes,
)

DEGREE = {"left": 0, "trapezoid": 1, "adaptive": 1, "simpson": 2}


def _every_step_sum(values, eps):
    """``sum_t eps_t v_t``: the every-step kernel's form, on numbers."""
    return float(np.dot(eps, values[: len(eps)]))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("n_nodes", [2, 3, 4, 5, 8, 21])
def test_weights_sum_polynomials_of_the_rules_degree_exactly(rule, n_nodes):
    T = 60
    eps = np.random.RandomState(0).uniform(0.05, 0.2, T)  # any step sizes
    steps = select_nodes(np.arange(T), T, n_nodes, rule)
    weights = node_weights(steps, eps, rule)
    t = np.arange(T + 1, dtype=float)
    exact = min(DEGREE[rule], len(steps) - 1)  # two nodes: one trapezoid panel
    for degree in range(exact + 1):
        want = _every_step_sum((t / T) ** degree, eps)
        got = float(weights @ (steps / T) ** degree)
        assert got == pytest.approx(want, rel=1e-12), degree
    if len(steps) > 4 and rule != "left":  # and not one degree more
        cubic = (t / T) ** (DEGREE[rule] + 1) * (1 - t / T)
        assert abs(weights @ cubic[steps] - _every_step_sum(cubic, eps)) > 1e-6


def test_trapezoid_is_the_euler_maclaurin_form_of_the_left_sum():
    # Constant eps, panels of h steps: eps h inside, eps (h +- 1) / 2 at the ends.
    eps, h = 0.1, 10
    steps = np.arange(0, 201, h)
    weights = node_weights(steps, np.full(200, eps), "trapezoid")
    np.testing.assert_allclose(weights[1:-1], eps * h, rtol=1e-12)
    assert weights[0] == pytest.approx(eps * (h + 1) / 2, rel=1e-12)
    assert weights[-1] == pytest.approx(eps * (h - 1) / 2, rel=1e-12)


def test_simpson_weights_on_an_even_grid():
    # Euler-Maclaurin for the left sum over a panel [a, b] of 2h steps:
    # integral + (f(a) - f(b)) / 2 + (f'(b) - f'(a)) / 12, with the integral by
    # Simpson, h/3 (1, 4, 1), and f'(b) - f'(a) of the quadratic through the
    # three nodes, 2 (f_0 - 2 f_1 + f_2) / h (eps = 1, step units).
    eps, h = 1.0, 4
    steps = np.arange(0, 17, h)
    weights = node_weights(steps, np.full(16, eps), "simpson")
    simpson = h / 3 * np.array([1, 4, 2, 4, 1.0])
    correction = np.array([0.5, 0, 0, 0, -0.5]) + np.array([1, -2, 2, -2, 1]) / (6 * h)
    np.testing.assert_allclose(weights, simpson + correction, rtol=1e-12)


@pytest.mark.parametrize("rule", RULES)
def test_every_step_a_node_gives_every_step_its_own_step_size(rule):
    eps = np.array([0.1, 0.2, 0.05, 0.4, 0.3, 0.25, 0.15])
    steps = select_nodes(np.arange(7), 7, 100, rule)
    weights = node_weights(steps, eps, rule)
    np.testing.assert_allclose(weights[:7], eps, rtol=1e-12, atol=1e-15)
    assert (weights[7:] == 0).all()  # w_T, for the closed rules, weighs nothing
    assert steps[-1] == (6 if rule == "left" else 7)


@pytest.mark.parametrize("rule", RULES)
def test_weights_are_non_negative_so_the_kernel_stays_psd(rule):
    # Short paths and subsampled ones give uneven panels of a step or two,
    # where Simpson's own weights would go negative: those fall back.
    for record_every in (1, 3, 10):
        for T in range(1, 120):
            kept = np.arange(0, T, record_every)
            eps = np.full(T, 0.1)
            for n in [2, 3, 4, 5, 6, 7, 8, 13, node_count(0.1, T)]:
                weights = node_weights(select_nodes(kept, T, n, rule), eps, rule)
                assert (weights >= 0).all(), (record_every, T, n)
                assert weights.sum() == pytest.approx(0.1 * T, rel=1e-12)


def test_nodes_snap_to_the_kept_checkpoints_and_keep_both_ends():
    kept = np.arange(0, 100, 3)  # record_every=3
    steps = select_nodes(kept, 100, 8, "simpson")
    assert steps[0] == 0 and steps[-1] == 100
    assert set(steps[:-1]) <= set(kept) and len(steps) == 8
    left = select_nodes(kept, 100, 8, "left")
    assert left[0] == 0 and set(left) <= set(kept) and 100 not in left


def test_node_count():
    assert node_count(None, 200) == 201
    assert node_count(0.1, 200) == 20
    assert node_count(0.1, 5) == 2  # at least two
    assert node_count(7, 200) == 7


@pytest.mark.parametrize(
    "quadrature, kernel_nodes, match",
    [
        ("midpoint", None, "quadrature must be one of 'left'"),
        ("simpson", 1, "kernel_nodes must be a count of at least 2"),
        ("simpson", 1.5, "kernel_nodes must be a count of at least 2"),
        ("simpson", 0.0, "kernel_nodes must be a count of at least 2"),
        ("simpson", "all", "kernel_nodes must be a count of at least 2"),
    ],
)
def test_bad_options_are_refused(quadrature, kernel_nodes, match):
    with pytest.raises(ValueError, match=match):
        check_rule(quadrature, kernel_nodes)
