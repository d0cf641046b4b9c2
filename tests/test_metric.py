"""The hooks engine in a diagonal metric (Adam's path) against the reference."""

import numpy as np
import pytest
import torch
from _hook_cases import (
    CASES,
    _basis,
    _check_kernels,
    _engine,
    _floats,
    _setup,
    force,
    metric_of,
)
from _oracle import jacobian_rows, tangent_kernel_reference

from sklearn_pathkernel._kernels._path import weighted_kernel_sum
from sklearn_pathkernel.engines import select_engine
from sklearn_pathkernel.engines._hooks import _engine as _hooks
from sklearn_pathkernel.engines._hooks import _ghost, _metric
from sklearn_pathkernel.engines._hooks._metric import pairwise_is_cheaper


def _force_metric(form, monkeypatch):
    """Each ghost term's form in a metric by the cost rule, or forced."""
    if form != "cost":
        forced = form == "pairwise"
        monkeypatch.setattr(_metric, "pairwise_is_cheaper", lambda *args: forced)


# (plan form, metric form): the cost rules; every ghost term (P > 1 included)
# pairwise or instantiated; no ghost term at all (every gradient scaled).
FORMS = [
    ("cost", "cost"),
    ("ghost", "pairwise"),
    ("ghost", "instantiated"),
    ("instantiated", "cost"),
]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("forms", FORMS, ids="-".join)
def test_kernels_in_a_metric_match_the_reference(case, forms, monkeypatch):
    force(forms[0], monkeypatch)
    _force_metric(forms[1], monkeypatch)
    _check_kernels(case, metric=True)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("form", ["pairwise", "instantiated"])
def test_sketch_pieces_sum_to_the_kernel_in_a_metric(case, form, monkeypatch):
    force("ghost", monkeypatch)
    _force_metric(form, monkeypatch)
    monkeypatch.setattr(_hooks, "SKETCH_ROWS", 16)  # several pieces per layer
    net, params, X, Y = _setup(case)
    metric = metric_of(params)
    bound = _engine(net, params, X)
    want = tangent_kernel_reference(net, params, X, Y, metric=metric)
    with torch.no_grad():
        state_x = bound.state(params, X, metric=metric)
        state_y = bound.state(params, Y, metric=metric)
        got = 0.0
        for piece, heights in enumerate(bound.sketch_shapes(state_x["n_outputs"])):
            factors = _basis(heights)
            s_x = bound.sketch(state_x, X, piece, factors)
            got = got + s_x @ bound.sketch(state_y, Y, piece, factors).T
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("form", ["pairwise", "instantiated"])
def test_gaussian_sketches_are_unbiased_in_a_metric(form, monkeypatch):
    """The mean of many Gaussian sketches tends to the kernel in the metric."""
    force("ghost", monkeypatch)
    _force_metric(form, monkeypatch)
    net, params, X, Y = _setup("cnn")
    metric = metric_of(params)
    bound = _engine(net, params, X)
    want = tangent_kernel_reference(net, params, X, Y, metric=metric)
    gen = torch.Generator().manual_seed(0)
    m = 20000
    with torch.no_grad():
        state_x = bound.state(params, X, metric=metric)
        state_y = bound.state(params, Y, metric=metric)
        got = 0.0
        for piece, heights in enumerate(bound.sketch_shapes(state_x["n_outputs"])):
            factors = tuple(
                torch.randn(h, m, generator=gen, dtype=torch.float64) for h in heights
            )
            s_x = bound.sketch(state_x, X, piece, factors)
            got = got + s_x @ bound.sketch(state_y, Y, piece, factors).T / m
    # 20000 draws of products of Gaussians: a few percent of the scale.
    error = np.abs(got.numpy() - want).max() / np.abs(want).max()
    assert error < 0.1


@pytest.mark.parametrize("case", ["cnn", "embedding", "transformer"])
def test_states_at_different_parameters_pair_in_a_metric(case):
    net, params, X, Y = _setup(case)
    shifted = {n: p + 0.05 for n, p in params.items()}
    metric = metric_of(params)
    bound = _engine(net, params, X)
    with torch.no_grad():
        got = bound.contract(
            bound.state(shifted, X, metric=metric),
            bound.state(params, Y, metric=metric),
            False,
        )
    scale = np.concatenate([metric[n].numpy().reshape(-1) for n in params])
    want = np.einsum(
        "iad,jbd->ijab",
        jacobian_rows(net, shifted, X),
        jacobian_rows(net, params, Y) * scale,
    )
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["cnn", "tied", "transformer"])
def test_frozen_and_left_out_parameters_in_a_metric(case):
    net, params, X, Y = _setup(case)
    subset = {n: params[n] for n in sorted(params)[::2]}
    metric = metric_of(subset)
    bound = _engine(net, subset, X)
    with torch.no_grad():
        got = bound.contract(
            bound.state(subset, X, metric=metric),
            bound.state(subset, Y, metric=metric),
            True,
        )
    want = tangent_kernel_reference(net, subset, X, Y, metric=metric)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


def test_the_blocked_kernel_takes_the_metric_through_the_hooks_engine():
    net, params, X, _ = _setup("cnn")
    X = torch.cat([X, _floats(7, 1, 4, 4, seed=5)])
    metric = metric_of(params)
    points = [(0.5, lambda: params, lambda: metric)]
    K = weighted_kernel_sum(
        net, points, X, parameter_names=list(params), engine="hooks", trace=False
    )
    want = 0.5 * tangent_kernel_reference(net, params, X, trace=False, metric=metric)
    np.testing.assert_allclose(K, want, rtol=1e-10, atol=1e-12)


def test_auto_picks_the_hooks_engine_for_a_metric():
    net, params, X, _ = _setup("cnn")
    bound = select_engine("auto", net, list(params), example=X, metric=True)
    assert bound.name == "hooks" and bound.supports_metric


def test_bytes_per_row_in_a_metric_counts_the_instantiated_terms(monkeypatch):
    force("ghost", monkeypatch)
    _force_metric("instantiated", monkeypatch)
    net, params, X, _ = _setup("cnn")
    plain = select_engine("hooks", net, list(params), example=X)
    bound = select_engine("hooks", net, list(params), example=X, metric=True)
    with torch.no_grad():
        state = bound.state(params, X, metric=metric_of(params))
    held = state["inst"].numel() + sum(t.numel() for t in state["ghost"])
    assert bound.bytes_per_row(3, 8) >= 8 * held / len(X)
    assert bound.bytes_per_row(3, 8) > plain.bytes_per_row(3, 8)


def test_the_pairwise_form_wins_at_one_position_with_several_outputs():
    assert pairwise_is_cheaper(h_in=257, h_out=32, P=1, n_outputs=10)
    assert not pairwise_is_cheaper(h_in=10, h_out=8, P=1, n_outputs=1)
    assert not pairwise_is_cheaper(h_in=10, h_out=8, P=16, n_outputs=10)


def test_results_in_a_metric_are_bit_identical_across_budgets(monkeypatch):
    monkeypatch.setattr(_ghost, "GHOST_SCRATCH", 2**12)  # many sub-blocks
    force("ghost", monkeypatch)
    _force_metric("pairwise", monkeypatch)
    net, params, _, _ = _setup("sequence")
    X = _floats(40, 5, 3, seed=4)
    points = [(1.0, lambda: params, lambda: metric_of(params))]

    def kernel(**options):
        return weighted_kernel_sum(
            net, points, X, parameter_names=list(params), trace=False, **options
        )

    # Sub-blocks depend on shapes alone (n_jobs cannot change them: the
    # plain kernel's test covers the workers).
    assert np.array_equal(kernel(working_memory=0.01), kernel(working_memory=1024))
