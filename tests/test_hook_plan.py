"""The hooks engine's plan: row axes, refused layers, its size before a state."""

import pytest
import torch
from _hook_cases import _engine, _floats, _setup, _tokens
from torch import nn

from sklearn_pathkernel.engines import HookEngine, select_engine


def test_row_axis_is_found_whatever_its_position():
    net, params, X, _ = _setup("transformer")  # the layer sees (L, n, E)
    bound = _engine(net, params, X)
    layer = next(lay for lay in bound.plan.layers if lay.prefix == "layer.linear1")
    assert layer.calls[0]["args"] == [1] and layer.calls[0]["outputs"] == [1]


@pytest.mark.parametrize(
    "module, message",
    [
        (
            lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4).train()),
            r"BatchNorm1d \('1'\) in training mode: it normalises each batch",
        ),
        (
            lambda: nn.Sequential(
                nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False).eval()
            ),
            r"BatchNorm1d \('1'\) with track_running_stats=False: it normalises",
        ),
        (
            lambda: nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5).train()),
            "Dropout layer '1' is active",
        ),
    ],
)
def test_what_mixes_rows_or_is_random_is_refused(module, message):
    net = module().double()
    params = {n: p.detach() for n, p in net.named_parameters()}
    X = _floats(3, 3, seed=0)
    with pytest.raises(ValueError, match=message):
        select_engine("hooks", net, list(params), example=X)
    if not getattr(net[1], "track_running_stats", True):
        return  # no running statistics: eval() does not help
    bound = select_engine("hooks", net.eval(), list(params), example=X)
    net.train()  # checked again at every state: the mode may change
    with pytest.raises(ValueError, match=message), torch.no_grad():
        bound.state(params, X)


def test_bytes_per_row_needs_an_example_or_a_state():
    net, params, X, _ = _setup("cnn")
    bound = HookEngine(net, list(params))
    with pytest.raises(RuntimeError, match="needs an example row before"):
        bound.bytes_per_row(3, 8)
    with torch.no_grad():
        bound.state(params, X)
    assert bound.bytes_per_row(3, 8) > 0


class _Positional(nn.Module):
    """A positional table computed once for all rows: no row axis."""

    def __init__(self):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(7, 3), nn.Embedding(4, 3)

    def forward(self, x):
        return (self.tokens(x) + self.positions(torch.arange(4))).sum(dim=(1, 2))


def test_an_output_shared_by_all_rows_is_refused():
    net = _Positional()
    with pytest.raises(ValueError, match="layer 'positions' gives an output without"):
        select_engine("hooks", net, ["positions.weight"], example=_tokens(2, 4, 7, 0))
