"""Where the activation pattern changes along a step, against plain references."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sklearn_pathkernel._explain import _kinks
from sklearn_pathkernel._explain._kinks import (
    PatternRecorder,
    patterns,
    piece_rounds,
    probe,
    segment_kinks,
)


def _segment(net, seed, scale=1.0):
    """The network's parameters and a random end point around them."""
    generator = torch.Generator().manual_seed(seed)
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    end = {
        n: p + scale * torch.randn(p.shape, generator=generator, dtype=p.dtype)
        for n, p in start.items()
    }
    return start, end


def _mlp(*widths, activation=nn.ReLU, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), activation()]
    return nn.Sequential(*layers[:-1]).double()


class _Everything(nn.Module):
    """Decisions made by modules, functions, methods and comparisons."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 4)
        self.pool = nn.MaxPool1d(2)
        self.inplace = nn.ReLU(inplace=True)

    def forward(self, x):
        z = self.a(x)
        h = self.inplace(z.clone()) + F.leaky_relu(z, 0.1) + z.clamp(min=0.5)
        h = torch.where(h > 0.2, h, 0.3 * h) + F.hardtanh(h, -0.5, 0.5)
        return self.pool(self.b(h).unsqueeze(1)).squeeze(1)


def test_the_recorder_sees_modules_functions_and_comparisons():
    net = _Everything().double()
    X = torch.randn(5, 3, dtype=torch.float64)
    with PatternRecorder() as recorder:
        net(X)
    assert recorder.names == {
        "relu", "leaky_relu", "clamp", "gt", "hardtanh", "max_pool1d"
    }  # fmt: skip
    z = net.a(X)
    # The in-place relu's pattern is read before the input is overwritten.
    assert torch.equal(recorder.patterns[0], z > 0)
    assert recorder.flat(rows=5).shape[0] == 5


def test_a_smooth_network_makes_no_decision():
    net = _mlp(3, 5, 2, activation=nn.Tanh)
    start, end = _segment(net, 0)
    assert probe(net, start, torch.randn(2, 3, dtype=torch.float64)) == (
        [],
        False,
    )


def test_first_layer_crossings_are_found_to_rounding():
    """A first-layer pre-activation is affine in s: its crossing is known."""
    net = _mlp(3, 12, 2)
    start, end = _segment(net, 1)
    X = torch.randn(6, 3, dtype=torch.float64)
    kinks = segment_kinks(net, start, end, X, batched=True)
    z0 = X @ start["0.weight"].T + start["0.bias"]
    z1 = X @ end["0.weight"].T + end["0.bias"]
    crossing = z0 / (z0 - z1)  # where z0 + s (z1 - z0) = 0
    for row in range(len(X)):
        inside = crossing[row][(crossing[row] > 0) & (crossing[row] < 1)]
        found = kinks[row][kinks[row] < 1]
        np.testing.assert_allclose(found, np.sort(inside.numpy()), atol=1e-14)
    assert (kinks < 1).sum() > 10  # the case has kinks to find


class _Scaled(nn.Module):
    """Parameters outside any layer: one scales the rows (affine, a
    batched forward), the other enters through exp (a per-row copy, vmap)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 12), nn.Linear(12, 2)
        self.scale = nn.Parameter(torch.ones(12))
        self.log_scale = nn.Parameter(torch.zeros(12))

    def forward(self, x):
        h = torch.relu(self.a(x)) * self.scale
        return self.b(h * torch.exp(self.log_scale))


def test_batched_patterns_need_every_parameter_affine():
    net = _Scaled().double()
    start, end = _segment(net, 5)
    X = torch.randn(2, 3, dtype=torch.float64)
    assert probe(net, start, X) == (["relu"], False)
    net.log_scale.requires_grad_(False)  # no longer moves along the path
    del start["log_scale"]
    assert probe(net, start, X) == (["relu"], True)


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Unflatten(1, (1, 5, 5)),
        nn.Conv2d(1, 2, 2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8, 6),
        nn.Hardtanh(-0.5, 0.5),
        nn.Linear(6, 2),
    ).double()


@pytest.mark.parametrize(
    "case, batched",
    [("mlp", True), ("mlp", False), ("cnn", True), ("scaled", False)],
)
def test_kinks_agree_with_brute_force_sampling(case, batched):
    """Every change on a fine grid has one kink in its interval, and every
    kink is where the grid sees a change (deeper units included)."""
    X = torch.randn(4, 25 if case == "cnn" else 3, dtype=torch.float64)
    net = {"mlp": lambda: _mlp(3, 6, 6, 6, 2), "cnn": _cnn, "scaled": _Scaled}[case]()
    start, end = _segment(net.double(), 2, scale=0.5)
    assert probe(net, start, X)[1] is (case != "scaled")
    kinks = segment_kinks(net, start, end, X, batched=batched)
    fine = torch.linspace(0, 1, 2001, dtype=torch.float64)
    delta = {n: end[n] - start[n] for n in start}
    sampled = patterns(
        net, start, delta, fine.repeat_interleave(len(X)), X.repeat(len(fine), 1),
        batched=False,
    ).reshape(len(fine), len(X), -1)  # fmt: skip
    changes = (sampled[1:] != sampled[:-1]).any(2)
    for row in range(len(X)):
        found = kinks[row][kinks[row] < 1]
        interval = torch.searchsorted(fine, found) - 1
        assert torch.equal(interval, changes[:, row].nonzero().flatten()), row
    assert (kinks < 1).sum() >= 4


def test_both_ways_of_evaluating_patterns_find_the_same_kinks():
    net = _cnn()
    start, end = _segment(net, 3, scale=0.5)
    X = torch.randn(3, 25, dtype=torch.float64)
    batched = segment_kinks(net, start, end, X, batched=True)
    rowwise = segment_kinks(net, start, end, X, batched=False)
    assert batched.shape == rowwise.shape
    np.testing.assert_allclose(batched, rowwise, atol=1e-12)


def test_the_probe_refuses_a_forward_that_cannot_run_row_by_row():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return h * 2 if float(h.sum()) > 1e9 else h  # data-dependent

    net = Branchy().double()
    start, end = _segment(net, 4)
    with pytest.raises(RuntimeError):
        probe(net, start, torch.randn(2, 2, dtype=torch.float64))


@pytest.mark.parametrize("n_nodes", [1, 2, 3])
def test_piece_rounds_integrate_polynomials_of_degree_2n_minus_1(n_nodes):
    nodes, weights = np.polynomial.legendre.leggauss(n_nodes)
    nodes, weights = list((nodes + 1) / 2), list(weights / 2)
    kinks = torch.tensor([[0.2, 0.7, 1.0], [0.5, 1.0, 1.0], [1.0, 1.0, 1.0]])
    rounds = piece_rounds(kinks.double(), nodes, weights)
    for power in range(2 * n_nodes):
        total = torch.zeros(3, dtype=torch.float64)
        for rows, s, w in rounds:
            total.index_add_(0, rows, w * s**power)
        np.testing.assert_allclose(total, 1 / (power + 1), rtol=1e-14)
    # Pieces: 3, 2 and 1 per row; padding makes no round.
    assert sum(len(rows) for rows, _, _ in rounds) == 6 * n_nodes


def test_the_search_warns_when_a_bracket_holds_too_many_kinks(monkeypatch):
    """Two first-layer units crossing within one bracket, one kink allowed."""
    monkeypatch.setattr(_kinks, "MAX_KINKS_PER_BRACKET", 1)
    net = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    end = {n: p.clone() for n, p in start.items()}
    start["0.weight"] = torch.ones(2, 1, dtype=torch.float64)
    end["0.weight"] = start["0.weight"].clone()
    start["0.bias"] = torch.tensor([0.01, 0.02], dtype=torch.float64)
    end["0.bias"] = start["0.bias"] - 1.0  # crossings at s = 0.01, 0.02
    with pytest.warns(UserWarning, match="kink search stopped after 1"):
        kinks = segment_kinks(net, start, end, torch.zeros(1, 1).double())
    np.testing.assert_allclose(kinks, [[0.01]], atol=1e-15)


def test_chain_layers_counts_the_parameterised_layers_of_a_chain():
    from sklearn_pathkernel._explain._kinks import chain_layers
    from sklearn_pathkernel._model._network import InputAdapter

    assert chain_layers(_mlp(3, 4, 4, 2)) == 3
    assert chain_layers(InputAdapter(_cnn()[1:], input_shape=(1, 5, 5))) == 3
    nested = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Linear(2, 1))
    assert chain_layers(nested) == 2
    nested[0][0].requires_grad_(False)  # a frozen layer does not move
    assert chain_layers(nested) == 1
    assert chain_layers(_mlp(3, 4, 2, activation=nn.Tanh)) is None
    assert chain_layers(_Everything()) is None  # its own forward

    class Custom(nn.ReLU):
        def forward(self, x):
            return torch.tanh(x)

    assert chain_layers(nn.Sequential(nn.Linear(2, 2), Custom())) is None
