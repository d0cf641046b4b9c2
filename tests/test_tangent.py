"""Jacobian engines against the per-example autograd reference."""

import numpy as np
import pytest
import torch
from _oracle import jacobian_rows, tangent_kernel_reference

from sklearn_pathkernel._network import make_mlp
from sklearn_pathkernel._tangent import ENGINES, JacobianEngine, select_engine


def _mlp(n_features, n_outputs, activation="tanh", bias=True, seed=0):
    net = make_mlp(
        n_features,
        n_outputs,
        (7, 5),
        activation,
        generator=torch.Generator().manual_seed(seed),
    ).double()
    if not bias:
        for layer in net:
            if isinstance(layer, torch.nn.Linear):
                layer.bias = None
    return net


def _params(net):
    return {n: p.detach() for n, p in net.named_parameters()}


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("n_outputs", [1, 2, 10])
@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_engine_matches_reference(engine, n_outputs, activation, bias):
    net = _mlp(3, n_outputs, activation, bias)
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    Y = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    bound = select_engine(engine, net)
    params = _params(net)
    for trace in (True, False):
        got = bound.contract(bound.state(params, X), bound.state(params, Y), trace)
        want = tangent_kernel_reference(net, params, X, Y, trace=trace)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-12)


def test_jacobian_state_is_the_jacobian():
    net = _mlp(3, 2)
    X = torch.randn(
        5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    state = JacobianEngine(net).state(_params(net), X)
    np.testing.assert_allclose(state.numpy(), jacobian_rows(net, _params(net), X))


def test_jacobian_is_taken_wrt_given_parameters_only():
    net = _mlp(3, 1)
    subset = {"0.weight": net[0].weight.detach()}
    X = torch.randn(
        4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    state = JacobianEngine(net).state(subset, X)
    assert state.shape == (4, 1, net[0].weight.numel())


def test_auto_picks_a_supporting_engine():
    assert select_engine("auto", _mlp(2, 1)).name in ENGINES


def test_unknown_engine_is_rejected():
    with pytest.raises(
        ValueError, match="The 'engine' parameter must be 'auto' or one of"
    ):
        select_engine("magic", _mlp(2, 1))
