"""Tests for the per-row losses and their closed-form derivatives."""

import math

import numpy as np
import pytest
import torch

from sklearn_pathkernel._training._losses import (
    BINARY_LOGISTIC,
    POISSON,
    SOFTMAX_CROSS_ENTROPY,
    SQUARED_ERROR,
)


def _random_problem(loss, n_outputs, seed):
    gen = torch.Generator().manual_seed(seed)
    f = 3.0 * torch.randn(7, n_outputs, generator=gen, dtype=torch.float64)
    if loss is SQUARED_ERROR:
        y = torch.randn(7, n_outputs, generator=gen, dtype=torch.float64)
    elif loss is BINARY_LOGISTIC:
        y = torch.randint(0, 2, (7, n_outputs), generator=gen).to(torch.float64)
    elif loss is POISSON:
        f = f / 3.0  # log-means of moderate counts
        y = torch.randint(0, 6, (7, n_outputs), generator=gen).to(torch.float64)
    else:
        labels = torch.randint(0, n_outputs, (7,), generator=gen)
        y = torch.nn.functional.one_hot(labels, n_outputs).to(torch.float64)
    return f, y


@pytest.mark.parametrize(
    "loss, n_outputs",
    [
        (SQUARED_ERROR, 1),
        (SQUARED_ERROR, 3),
        (BINARY_LOGISTIC, 1),
        (BINARY_LOGISTIC, 3),  # multilabel: one logit per label
        (SOFTMAX_CROSS_ENTROPY, 2),
        (SOFTMAX_CROSS_ENTROPY, 4),
        (POISSON, 1),
        (POISSON, 2),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_matches_autograd(loss, n_outputs, seed):
    f, y = _random_problem(loss, n_outputs, seed)
    f_req = f.clone().requires_grad_(True)
    values = loss.value(f_req, y)
    assert values.shape == (f.shape[0],)
    (expected,) = torch.autograd.grad(values.sum(), f_req)

    got = loss.gradient(f, y)
    assert got.shape == f.shape
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("logit", [1e4, -1e4])
@pytest.mark.parametrize("label", [0.0, 1.0])
def test_logistic_value_finite_for_huge_logits(logit, label):
    f = torch.tensor([[logit]], dtype=torch.float64)
    y = torch.tensor([[label]], dtype=torch.float64)
    value = BINARY_LOGISTIC.value(f, y)
    gradient = BINARY_LOGISTIC.gradient(f, y)
    assert torch.isfinite(value).all()
    assert torch.isfinite(gradient).all()
    # The exact loss is softplus(f) - y f: |f| when the label disagrees, 0 otherwise.
    wrong = (logit > 0) != (label == 1.0)
    assert value.item() == pytest.approx(abs(logit) if wrong else 0.0, abs=1e-12)
    assert gradient.item() == pytest.approx((1.0 if logit > 0 else 0.0) - label)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logistic_value_finite_for_huge_logits_any_dtype(dtype):
    f = torch.tensor([[1e4], [-1e4], [1e4], [-1e4]], dtype=dtype)
    y = torch.tensor([[0.0], [1.0], [1.0], [0.0]], dtype=dtype)
    value = BINARY_LOGISTIC.value(f, y)
    torch.testing.assert_close(
        value, torch.tensor([1e4, 1e4, 0.0, 0.0], dtype=dtype), rtol=1e-6, atol=1e-6
    )


def test_squared_error_known_values():
    f = torch.tensor([[3.0], [1.0], [-2.0]], dtype=torch.float64)
    y = torch.tensor([[1.0], [1.0], [0.5]], dtype=torch.float64)
    torch.testing.assert_close(
        SQUARED_ERROR.value(f, y),
        torch.tensor([2.0, 0.0, 3.125], dtype=torch.float64),
    )
    torch.testing.assert_close(
        SQUARED_ERROR.gradient(f, y),
        torch.tensor([[2.0], [0.0], [-2.5]], dtype=torch.float64),
    )


def test_squared_error_sums_over_outputs():
    f = torch.tensor([[3.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    # 0.5 * (2^2 + 2^2) = 4
    assert SQUARED_ERROR.value(f, y).item() == pytest.approx(4.0)


def test_logistic_known_values():
    f = torch.tensor([[0.0], [0.0], [2.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [1.0], [1.0]], dtype=torch.float64)
    expected = torch.tensor(
        [math.log(2.0), math.log(2.0), math.log1p(math.exp(-2.0))], dtype=torch.float64
    )
    torch.testing.assert_close(BINARY_LOGISTIC.value(f, y), expected)
    torch.testing.assert_close(
        BINARY_LOGISTIC.gradient(f, y),
        torch.tensor(
            [[0.5], [-0.5], [1.0 / (1.0 + math.exp(-2.0)) - 1.0]], dtype=torch.float64
        ),
    )


def test_softmax_known_values():
    # Equal logits over K classes: loss log K, gradient 1/K - y.
    f = torch.zeros(2, 4, dtype=torch.float64)
    y = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(
        SOFTMAX_CROSS_ENTROPY.value(f, y),
        torch.full((2,), math.log(4.0), dtype=torch.float64),
    )
    torch.testing.assert_close(SOFTMAX_CROSS_ENTROPY.gradient(f, y), 0.25 - y)
    # Cross-entropy of logits (log 1, log 3) against class 1 is -log(3/4).
    f = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    y = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    assert SOFTMAX_CROSS_ENTROPY.value(f, y).item() == pytest.approx(-math.log(0.75))
    torch.testing.assert_close(
        SOFTMAX_CROSS_ENTROPY.gradient(f, y),
        torch.tensor([[0.25, -0.25]], dtype=torch.float64),
    )


def test_softmax_finite_for_huge_logits():
    f = torch.tensor([[1e4, -1e4, 0.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    assert SOFTMAX_CROSS_ENTROPY.value(f, y).item() == pytest.approx(2e4)
    torch.testing.assert_close(
        SOFTMAX_CROSS_ENTROPY.gradient(f, y),
        torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64),
    )


@pytest.mark.parametrize(
    "loss, name",
    [
        (SQUARED_ERROR, "squared_error"),
        (BINARY_LOGISTIC, "log_loss"),
        (SOFTMAX_CROSS_ENTROPY, "log_loss"),
        (POISSON, "poisson"),
    ],
)
def test_loss_names(loss, name):
    assert loss.name == name


def test_poisson_is_mlps_half_deviance_on_the_log_mean():
    from sklearn.neural_network._base import poisson_loss

    f = torch.tensor([[0.0, -1.0], [2.0, 0.5], [-3.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 2.0], [5.0, 0.0], [1.0, 3.0]], dtype=torch.float64)
    # MLPRegressor's loss on its output exp(f): the rows' mean, summed over
    # outputs; the per-row value is exp(f) - y f plus MLP's constant.
    mlp = poisson_loss(y.numpy(), np.exp(f.numpy()))
    assert POISSON.value(f, y).mean().item() == pytest.approx(mlp, rel=1e-14)
    constant = (torch.xlogy(y, y) - y).sum(dim=1)
    torch.testing.assert_close(
        POISSON.value(f, y), (torch.exp(f) - y * f).sum(dim=1) + constant
    )
    torch.testing.assert_close(POISSON.gradient(f, y), torch.exp(f) - y)
    # Zero where the mean is the count, zero counts included (0 log 0 = 0).
    counts = torch.tensor([[5.0], [1.0], [2.0]], dtype=torch.float64)
    torch.testing.assert_close(
        POISSON.value(torch.log(counts), counts), torch.zeros(3, dtype=torch.float64)
    )
    zero = POISSON.value(torch.tensor([[-50.0]], dtype=torch.float64), y[:1, :1])
    assert 0.0 <= zero.item() < 1e-20
