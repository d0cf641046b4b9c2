"""The layer-hook engine's methods against the per-example autograd reference."""

import numpy as np
import pytest
import torch
from _dispatch import Dispatched
from _hook_cases import (
    CASES,
    _basis,
    _check_kernels,
    _EmbeddingBag,
    _engine,
    _floats,
    _reference,
    _setup,
    _tokens,
    force,
    metric_of,
)
from _oracle import jacobian_rows, tangent_kernel_reference
from torch import nn

from sklearn_pathkernel import tangent_kernel
from sklearn_pathkernel._compute import _blocking
from sklearn_pathkernel.engines import select_engine
from sklearn_pathkernel.engines._hooks import _engine as _hooks
from sklearn_pathkernel.engines._hooks import _ghost


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("form", ["ghost", "instantiated"])
def test_sketch_pieces_sum_to_the_kernel(case, form, monkeypatch):
    force(form, monkeypatch)
    monkeypatch.setattr(_hooks, "SKETCH_ROWS", 16)  # several pieces per layer
    net, params, X, Y = _setup(case)
    bound = _engine(net, params, X)
    want = tangent_kernel_reference(net, params, X, Y)
    with torch.no_grad():
        state_x, state_y = bound.state(params, X), bound.state(params, Y)
        shapes = bound.sketch_shapes(state_x["n_outputs"])
        assert all(heights[0] <= 16 for heights in shapes)
        got = 0.0
        for piece, heights in enumerate(shapes):
            factors = _basis(heights)
            s_x = bound.sketch(state_x, X, piece, factors)
            assert s_x.shape == (len(X), np.prod(heights))
            got = got + s_x @ bound.sketch(state_y, Y, piece, factors).T
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["cnn", "embedding", "transformer"])
def test_states_at_different_parameters_pair_their_jacobians(case):
    """J(X; w') J(Y; w)^T, as the exact decomposition needs."""
    net, params, X, Y = _setup(case)
    shifted = {n: p + 0.05 for n, p in params.items()}
    bound = _engine(net, params, X)
    with torch.no_grad():
        got = bound.contract(bound.state(shifted, X), bound.state(params, Y), False)
    want = np.einsum(
        "iad,jbd->ijab", jacobian_rows(net, shifted, X), jacobian_rows(net, params, Y)
    )
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["cnn", "tied", "transformer"])
def test_frozen_and_left_out_parameters_get_no_term(case):
    net, params, X, Y = _setup(case)
    names = sorted(params)
    subset = {n: params[n] for n in names[::2]}  # every other one
    bound = _engine(net, subset, X)
    with torch.no_grad():
        got = bound.contract(bound.state(subset, X), bound.state(subset, Y), True)
    want = tangent_kernel_reference(net, subset, X, Y)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


def test_a_frozen_parameter_is_left_out_of_the_functional_kernel():
    net, params, X, _ = _setup("cnn")
    net[0].weight.requires_grad_(False)
    trained = {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}
    K = tangent_kernel(net, trained, X)
    np.testing.assert_allclose(
        K, tangent_kernel_reference(net, trained, X), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("case", ["cnn", "conv1d", "embedding", "transformer"])
def test_auto_picks_the_hooks_engine(case):
    net, params, X, _ = _setup(case)
    assert select_engine("auto", net, list(params)).name == "hooks"


@pytest.mark.parametrize("case", ["cnn", "embedding", "sequence"])
def test_functional_kernels_take_images_sequences_and_tokens(case):
    net, params, X, Y = _setup(case)
    for trace in (True, False):
        K = tangent_kernel(net, None, X, Y, trace=trace)
        want = tangent_kernel_reference(net, params, X, Y, trace=trace)
        np.testing.assert_allclose(K, want, rtol=1e-10, atol=1e-12)


def test_results_are_bit_identical_across_budgets_and_jobs(monkeypatch):
    monkeypatch.setattr(_ghost, "GHOST_SCRATCH", 2**10)  # many sub-blocks
    net, _, _, _ = _setup("sequence")
    X = _floats(40, 5, 3, seed=4)
    reference = tangent_kernel(net, None, X, trace=False, working_memory=1024)
    for options in ({"working_memory": 0.01}, {"n_jobs": 2, "working_memory": 0.01}):
        K = tangent_kernel(net, None, X, trace=False, **options)
        assert np.array_equal(K, reference), options
    assert np.array_equal(reference, reference.transpose(1, 0, 3, 2))


def test_bytes_per_row_counts_the_state():
    net, params, X, _ = _setup("cnn")
    bound = _engine(net, params, X)
    with torch.no_grad():
        state = bound.state(params, X)
    held = state["inst"].numel() + sum(a.numel() + d.numel() for a, d in state["ghost"])
    assert bound.bytes_per_row(3, 8) >= 8 * held / len(X)


def _small_cnn(n_features, n_outputs):
    """A CNN on flat 4x4 rows, so the estimators train it as they are."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 4, 4)),
        nn.Conv2d(1, 3, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(48, n_outputs),
    )


@pytest.fixture(scope="module")
def trained_cnn():
    from sklearn_pathkernel import PathKernelClassifier

    gen = np.random.default_rng(0)
    X = gen.normal(size=(24, 16))
    y = (X[:, :8].sum(axis=1) > 0).astype(int) + (X[:, 0] > 1)
    est = PathKernelClassifier(
        module=_small_cnn, max_iter=4, dtype="float64", random_state=0
    ).fit(X, y)
    return est, X


def test_estimator_kernels_and_decomposition_go_through_the_hooks_engine(trained_cnn):
    from sklearn_pathkernel import path_kernel
    from sklearn_pathkernel._explain._decompose import decompose_path
    from sklearn_pathkernel._kernels._path import path_kernel_diagonal

    est, X = trained_cnn
    module, trajectory = est.module_, est.trajectory_
    assert select_engine("auto", module, trajectory.parameter_names).name == "hooks"
    for trace in (True, False):
        np.testing.assert_allclose(
            path_kernel(module, trajectory, X, trace=trace),
            path_kernel(module, trajectory, X, trace=trace, engine="jacobian"),
            rtol=1e-10,
            atol=1e-12,
        )
    np.testing.assert_allclose(
        path_kernel_diagonal(module, trajectory, X),
        np.diag(path_kernel(module, trajectory, X, engine="jacobian")),
        rtol=1e-10,
    )
    X_t = torch.as_tensor(X)
    for exact in (False, True):
        got = decompose_path(module, trajectory, X_t, X_t[:5], exact=exact)
        want = decompose_path(
            module, trajectory, X_t, X_t[:5], exact=exact, engine="jacobian"
        )
        np.testing.assert_allclose(
            got.contributions, want.contributions, rtol=1e-9, atol=1e-12
        )
        np.testing.assert_allclose(got.bias, want.bias, rtol=1e-9, atol=1e-12)


def test_random_features_through_the_hooks_engine(trained_cnn):
    from sklearn_pathkernel import path_kernel
    from sklearn_pathkernel._kernels._features import path_features

    est, X = trained_cnn
    module, trajectory = est.module_, est.trajectory_
    K = path_kernel(module, trajectory, X)
    phi, diagonal = path_features(
        module, trajectory, X, n_components=4000, seed=0, engine="hooks"
    )
    np.testing.assert_allclose(diagonal, np.diag(K), rtol=1e-10)
    # An unbiased estimate: 4000 components leave about 5% relative noise.
    error = np.abs(phi @ phi.T - K).max() / np.abs(K).max()
    assert error < 0.2


# ------------------------------------------------ the device grid (issue 21)


def _one_checkpoint(bound, params, X, trace, metric=None, static=None):
    """A checkpoint's work on one tile of the symmetric kernel: state, contraction."""
    with torch.no_grad():
        state = bound.state(params, X, metric=metric)
        return bound.contract(state, state, trace, static)


def _counted(monkeypatch, case, n, trace, metric, old_route):
    """Operations of one checkpoint on ``n`` rows under the device policy.

    ``old_route`` restores the route the device policy took before the
    engine knew it (the CPU's ``GHOST_SCRATCH`` sub-blocks and token search).
    Meta rows, except for token ids (their matches need values).
    """
    if case == "embedding":  # a vocabulary where few tokens match
        torch.manual_seed(0)
        net = _EmbeddingBag(vocabulary=1000).double().eval()
        params = {k: p.detach() for k, p in net.named_parameters()}
        rows = _tokens(n, 6, 1000, 5)
    else:
        net, params, _, _ = _setup(case)
        rows = CASES[case][1](n, 5)
    bound = _engine(net, params, rows[:1])
    device = "cpu" if case == "embedding" else "meta"
    X = rows.to(device)
    metric = {k: m.to(device) for k, m in metric_of(params).items()} if metric else None
    params = {k: p.to(device) for k, p in params.items()}
    with monkeypatch.context() as patch, _blocking.device_policy(2**37):
        if old_route:
            patch.setattr(_ghost, "on_device", lambda tensor: False)
        static = None if old_route else bound.static(X, X)
        with Dispatched() as counted:
            _one_checkpoint(bound, params, X, trace, metric, static)
    return counted


@pytest.mark.parametrize(
    "case, trace, metric, n, fewer",
    [
        ("residual-layernorm", False, False, 64, 4),  # the full O x O kernel
        ("residual-layernorm", True, True, 64, 2),  # Adam's metric, pairwise
        ("embedding", True, False, 256, 1.3),  # matches from the static
    ],
)
def test_device_policy_dispatches_fewer_operations_per_checkpoint(
    case, trace, metric, n, fewer, monkeypatch
):
    # The CPU's sub-blocks scaled down with the rows (2^21 numbers against
    # 8192-row tiles in benchmarks/bench_hooks_counts.py: 30-1000x there).
    monkeypatch.setattr(_ghost, "GHOST_SCRATCH", 2**10)
    force("ghost", monkeypatch)  # every Kronecker layer in ghost form
    old = _counted(monkeypatch, case, n, trace, metric, old_route=True)
    new = _counted(monkeypatch, case, n, trace, metric, old_route=False)
    assert new.launches * fewer <= old.launches, (old.launches, new.launches)
    assert new.synchronising == [] and old.total > new.total
    # The token search (its count is read on the host) left the checkpoint.
    searched = {"repeat_interleave", "searchsorted"}
    assert not searched & set(new.ops)
    assert (case == "embedding") == bool(searched & set(old.ops))


@pytest.mark.parametrize(
    "case, metric",
    [
        ("cnn", False),
        ("residual-layernorm", False),
        ("residual-layernorm", True),
        ("embedding", False),
        ("embedding", True),
    ],
)
def test_device_policy_kernels_equal_the_reference(case, metric, monkeypatch):
    force("ghost", monkeypatch)
    with _blocking.device_policy(2**34):
        _check_kernels(case, metric)  # no static: tokens over every position pair
        net, params, X, Y = _setup(case)
        bound = _engine(net, params, X)
        static = bound.static(X, Y)
        assert (static is not None) == (case == "embedding")
        with torch.no_grad():
            got = bound.contract(bound.state(params, X), bound.state(params, Y), False)
            found = bound.contract(
                bound.state(params, X), bound.state(params, Y), False, static
            )
    want, _ = _reference(case, False)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(found.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sparse", [1, 10**6], ids=["sparse", "dense"])
def test_token_matches_from_the_static_keep_the_cpu_bits(sparse, monkeypatch):
    force("ghost", monkeypatch)
    monkeypatch.setattr(_ghost, "SPARSE_TOKENS", sparse)
    net, params, X, Y = _setup("embedding")
    bound = _engine(net, params, X)
    static = bound.static(X, Y)
    assert bool(static.matches[0]) == (sparse == 1)
    assert static[:, [0, 1]] is None  # a slice: the contraction finds them
    with torch.no_grad():
        state_x, state_y = bound.state(params, X), bound.state(params, Y)
        for trace in (True, False):
            assert torch.equal(
                bound.contract(state_x, state_y, trace, static),
                bound.contract(state_x, state_y, trace),
            )
