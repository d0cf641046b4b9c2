"""The hooks engine's rule for ``nn.MultiheadAttention`` (``_attention.py``)."""

import numpy as np
import pytest
import torch
from _hook_cases import _floats, check_engine, force, metric_of
from _oracle import tangent_kernel_reference
from torch import nn

from sklearn_pathkernel.engines import HookEngine, select_engine
from sklearn_pathkernel.engines._hooks import _attention, _ghost

E = 4  # embedding width of the small attention modules


class _SelfAttention(nn.Module):
    """Self-attention, mean-pooled into a head; options of the layer as given."""

    def __init__(self, n_outputs=2, weights=None, **options):
        super().__init__()
        self.batch_first = options.get("batch_first", False)
        self.attn = nn.MultiheadAttention(E, 2, **options)
        self.head = nn.Linear(E, n_outputs)
        self.weights = weights  # None, or average_attn_weights: use the weights

    def forward(self, x):  # x: (n, L, E)
        h = x if self.batch_first else x.transpose(0, 1)
        need = self.weights is not None
        out, w = self.attn(
            h, h, h, need_weights=need, average_attn_weights=bool(self.weights)
        )
        pooled = out.mean(dim=1 if self.batch_first else 0)
        y = self.head(torch.tanh(pooled))
        if need:  # attention weights used downstream: their signals count
            y = y + (w.flatten(1) ** 2).sum(dim=1, keepdim=True)
        return y


class _CrossAttention(nn.Module):
    """Query, key and value of different widths (kdim, vdim), with masks.

    The key padding mask comes from the data (a row axis); the attention
    mask is causal, bool or additive.
    """

    def __init__(self, additive=False, bias=True):
        super().__init__()
        self.attn = nn.MultiheadAttention(
            E, 2, kdim=3, vdim=2, bias=bias, batch_first=True
        )
        self.head = nn.Linear(E, 2)
        causal = torch.triu(torch.ones(3, 3, dtype=torch.bool), diagonal=1)
        mask = torch.zeros(3, 3).masked_fill(causal, -1e4) if additive else causal
        self.register_buffer("mask", mask)

    def forward(self, x):  # x: (n, 3, 6)
        padding = x[:, :, 0] > 0.8
        padding[:, 0] = False  # every query sees at least its first key
        if self.mask.is_floating_point():  # both masks of one kind
            padding = torch.zeros_like(x[:, :, 0]).masked_fill(padding, -1e4)
        out, _ = self.attn(
            x[:, :, :4],
            x[:, :, 2:5],
            x[:, :, 4:],
            key_padding_mask=padding,
            attn_mask=self.mask.to(x.dtype)
            if self.mask.is_floating_point()
            else self.mask,
            need_weights=False,
        )
        return self.head(torch.tanh(out).sum(dim=1))


class _Shared(nn.Module):
    """One attention layer called twice, its out-projection tied to a Linear."""

    def __init__(self, tie=False):
        super().__init__()
        self.attn = nn.MultiheadAttention(E, 2, batch_first=True)
        self.mix = nn.Linear(E, E)
        if tie:
            self.mix.weight = self.attn.out_proj.weight
        self.head = nn.Linear(E, 2)

    def forward(self, x):
        h, _ = self.attn(x, x, x, need_weights=False)
        h, _ = self.attn(torch.tanh(self.mix(h)), h, x, need_weights=False)
        return self.head(h.mean(dim=1))


class _Encoder(nn.Module):
    def __init__(self, **options):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            8, 2, dim_feedforward=6, dropout=0.0, batch_first=True, **options
        )
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.layer(x).mean(dim=1))


CASES = {
    "self": (lambda: _SelfAttention(), 4),
    "self-batch-first-one-output": (
        lambda: _SelfAttention(n_outputs=1, batch_first=True),
        4,
    ),
    "self-no-bias": (lambda: _SelfAttention(bias=False), 4),
    "weights-averaged": (lambda: _SelfAttention(weights=True), 4),
    "weights-per-head": (lambda: _SelfAttention(weights=False, batch_first=True), 4),
    "cross-bool-mask": (lambda: _CrossAttention(), 6),
    "cross-additive-mask-no-bias": (lambda: _CrossAttention(True, bias=False), 6),
    "shared": (lambda: _Shared(), 4),
    "shared-tied": (lambda: _Shared(tie=True), 4),
    "encoder": (lambda: _Encoder(), 8),
    "encoder-norm-first-gelu": (
        lambda: _Encoder(norm_first=True, activation="gelu"),
        8,
    ),
}


def _setup(case, frozen=()):
    make, width = CASES[case]
    torch.manual_seed(0)
    net = make().double().eval()
    for name, p in net.named_parameters():
        p.requires_grad_(name not in frozen)
    params = {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}
    return net, params, _floats(5, 3, width, seed=1), _floats(4, 3, width, seed=2)


def _check(net, params, X, Y, metric):
    """Traced, full, applied and diagonal kernels against the reference."""
    metric = metric_of(params) if metric else None
    engine = select_engine("hooks", net, list(params), example=X)
    full = tangent_kernel_reference(net, params, X, Y, trace=False, metric=metric)
    diagonal_want = np.diag(tangent_kernel_reference(net, params, X, metric=metric))
    check_engine(engine, params, X, Y, metric, full, diagonal_want)
    return engine


@pytest.mark.parametrize("metric", [False, True], ids=["plain", "metric"])
@pytest.mark.parametrize("form", ["ghost", "instantiated"])
@pytest.mark.parametrize("case", list(CASES))
def test_kernels_match_the_reference(case, form, metric, monkeypatch):
    force(form, monkeypatch)
    net, params, X, Y = _setup(case)
    engine = _check(net, params, X, Y, metric)
    rules = {lay.prefix: lay.rule for lay in engine.plan.layers}
    assert "fallback" not in rules.values()
    assert [p for p, rule in rules.items() if rule == "attention"] in (
        ["attn"],
        ["layer.self_attn"],
    )


@pytest.mark.parametrize(
    "case, frozen",
    [
        ("self", ["attn.in_proj_weight"]),
        ("self", ["attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.bias"]),
        ("cross-bool-mask", ["attn.q_proj_weight", "attn.in_proj_bias"]),
        ("encoder", ["layer.self_attn.out_proj.weight"]),
    ],
)
@pytest.mark.parametrize("metric", [False, True], ids=["plain", "metric"])
def test_frozen_projections_are_left_out(case, frozen, metric, monkeypatch):
    force("ghost", monkeypatch)  # bias-only groups in ghost form too
    net, params, X, Y = _setup(case, frozen)
    assert not set(frozen) & set(params)
    _check(net, params, X, Y, metric)


@pytest.mark.parametrize("case", ["cross-bool-mask", "weights-per-head"])
def test_rows_in_chunks_give_the_same_kernels(case, monkeypatch):
    monkeypatch.setattr(_ghost, "GHOST_SCRATCH", 1)  # one row at a time
    net, params, X, Y = _setup(case)
    _check(net, params, X, Y, metric=False)


@pytest.mark.parametrize("length, ghost", [(2, True), (12, False)])
def test_the_cost_rule_picks_the_form(length, ghost):
    torch.manual_seed(0)
    net = _SelfAttention(n_outputs=1, batch_first=True)
    net.attn = nn.MultiheadAttention(32, 4, batch_first=True)
    net.head = nn.Linear(32, 1)
    params = {n: p.detach() for n, p in net.named_parameters()}
    example = torch.randn(1, length, 32)
    engine = select_engine("hooks", net, list(params), example=example)
    attention = engine.plan.layers[0]
    assert attention.rule == "attention" and attention.ghost == ghost
    # q, k, v and out: h_in 33 (with the bias), h_out 32, at every position.
    shapes = [(t.h_in, t.h_out, t.positions) for t in engine.plan.ghosts[:4]]
    assert shapes == ([(33, 32, length)] * 4 if ghost else [])


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("case", ["self-no-bias", "cross-bool-mask", "weights"])
def test_the_forward_written_out_is_the_modules(case, batch_first):
    torch.manual_seed(0)
    if case == "cross-bool-mask":
        mod = nn.MultiheadAttention(E, 2, kdim=3, vdim=2, batch_first=batch_first)
        q, k, v = (
            _floats(5, 3, 4, seed=1),
            _floats(5, 2, 3, seed=2),
            _floats(5, 2, 2, seed=3),
        )
        padding = torch.tensor([[False, True]] * 4 + [[False, False]])
        mask = torch.tensor([[False, True], [False, False], [True, False]])
    else:
        mod = nn.MultiheadAttention(
            E, 2, bias=case != "self-no-bias", batch_first=batch_first
        )
        q = k = v = _floats(5, 3, 4, seed=1)
        padding = mask = None
    mod = mod.double().eval()
    rows = (lambda t: t) if batch_first else (lambda t: t.transpose(0, 1))
    with torch.no_grad():
        out, weights = mod(
            rows(q),
            rows(k),
            rows(v),
            key_padding_mask=padding,
            attn_mask=mask,
            average_attn_weights=False,
        )
        got, probabilities, context, *_ = _attention._forward(
            mod, _attention._projections(mod, {}, {}), q, k, v, padding, mask
        )
    np.testing.assert_allclose(rows(got).numpy(), out.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(probabilities.numpy(), weights.numpy(), atol=1e-14)
    assert context.shape == (5, 3, E)


@pytest.mark.parametrize("option", ["add_bias_kv", "add_zero_attn"])
def test_options_without_the_rule_go_to_the_exact_fallback(option):
    torch.manual_seed(0)
    net = _SelfAttention(**{option: True}).double().eval()
    params = {n: p.detach() for n, p in net.named_parameters()}
    X, Y = _floats(5, 3, E, seed=1), _floats(4, 3, E, seed=2)
    engine = _check(net, params, X, Y, metric=False)
    assert [lay.rule for lay in engine.plan.layers] == ["fallback", "linear"]


def test_a_per_head_attention_mask_is_refused():
    class PerHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(E, 2, batch_first=True)

        def forward(self, x):
            mask = torch.zeros(2 * len(x), 3, 3, dtype=x.dtype)
            return self.attn(x, x, x, attn_mask=mask)[0].sum(dim=(1, 2))

    net = PerHead().double().eval()
    params = {n: p.detach() for n, p in net.named_parameters()}
    with pytest.raises(ValueError, match="takes a 2-D attn_mask"):
        select_engine("hooks", net, list(params), example=_floats(2, 3, E, seed=0))


def test_the_encoder_layer_is_covered_and_hooked_in_every_layer():
    for norm_first in (False, True):
        for activation in ("relu", "gelu"):
            net = _Encoder(norm_first=norm_first, activation=activation).eval()
            assert HookEngine.covers(net)
            params = {n: p.detach() for n, p in net.named_parameters()}
            engine = select_engine(
                "auto", net, list(params), example=torch.randn(2, 3, 8)
            )
            assert engine.name == "hooks"
            rules = {lay.prefix: lay.rule for lay in engine.plan.layers}
            assert rules == {
                "layer.self_attn": "attention",
                "layer.linear1": "linear",
                "layer.linear2": "linear",
                "layer.norm1": "norm",
                "layer.norm2": "norm",
                "head": "linear",
            }
