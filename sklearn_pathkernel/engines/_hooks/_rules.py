"""The layer-hook engine's rules per layer type.

A rule turns one call of a layer (its kept input ``x`` and output signals
``D``, rows first) into that layer's per-example gradient, in one of two
forms (docs/design.md, section 7.6):

- ``Linear`` at ``P`` positions, ``Conv1d``/``Conv2d`` unfolded to ``P``
  output pixels (per group), ``Embedding`` (its input is one-hot): the
  Kronecker terms ``(A, D)`` of :func:`kron` (ghost form, contracted in
  ``_ghost.py``), or :func:`instantiate`'s ``G_o = sum_p d_{o,p} a_p^T``;
- ``LayerNorm``, ``GroupNorm``, eval-mode ``BatchNorm``: always
  instantiated, ``sum_p d_p * xhat_p`` (weight) and ``sum_p d_p`` (bias).

``MultiheadAttention``: four Kronecker groups (``_attention.py``). Any
other parametrised layer has no rule here: ``_fallback.py``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import _attention

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
RULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, *_NORMS)
_RULE_PARAMETERS = {"weight", "bias"}


def rule_of(layer):
    mod = layer.module
    if isinstance(mod, nn.MultiheadAttention):
        return _attention.rule_of(layer)
    if isinstance(mod, RULES) and set(layer.names) <= _RULE_PARAMETERS:
        if isinstance(mod, nn.Embedding):
            if mod.max_norm is not None or mod.scale_grad_by_freq:
                raise ValueError(
                    f"The hooks engine cannot take the Embedding layer "
                    f"{layer.prefix!r} with max_norm or scale_grad_by_freq: its "
                    "forward rescales weights or gradients across the batch."
                )
            return "embedding"
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            return "conv"
        if isinstance(mod, nn.Linear):
            return "linear"
        return "norm"
    return "fallback"


def per_row(shape, axis):
    if shape is None or axis is None:
        return 0
    return math.prod(shape) // shape[axis]


def kron_shapes(layer, calls, n_outputs):
    """``(h_in, h_out, P, tokens)`` per group of a Kronecker layer, or []."""
    mod, names = layer.module, layer.names
    trains_w, trains_b = "weight" in names, "bias" in names
    if layer.rule == "attention":
        return _attention.kron_shapes(layer, calls)
    if layer.rule == "linear":
        h_in = (mod.in_features if trains_w else 0) + trains_b
        P = sum(
            per_row(c["args"][0], a["args"][0]) // mod.in_features
            for c, a in zip(calls, layer.calls)
        )
        return [(h_in, mod.out_features, P, False)] if h_in else []
    if layer.rule == "conv":
        groups = mod.groups
        k = math.prod(mod.kernel_size) * mod.in_channels // groups
        h_in = (k if trains_w else 0) + trains_b
        P = sum(
            per_row(c["outputs"][0], a["outputs"][0]) // mod.out_channels
            for c, a in zip(calls, layer.calls)
        )
        return [(h_in, mod.out_channels // groups, P, False)] * groups if h_in else []
    if layer.rule == "embedding":
        P = sum(per_row(c["args"][0], a["args"][0]) for c, a in zip(calls, layer.calls))
        return [(mod.num_embeddings, mod.embedding_dim, P, True)]
    return []


def _positions(x, D, features):
    """Inputs (n, P, features) and signals (n, P, O, h) at every position."""
    n, n_outputs = D.shape[0], D.shape[1]
    A = x.reshape(n, -1, features)
    h = D.shape[-1]
    return A, D.reshape(n, n_outputs, -1, h).transpose(1, 2)


def _unfold(layer, x, D):
    """A conv layer's patches (n, P, C_in k) and signals (n, P, O, C_out).

    The patches are made contiguous: the state keeps them (ghost form) and
    every ghost product then views them without a copy.
    """
    mod = layer.module
    n, n_outputs = D.shape[0], D.shape[1]
    A = _patches(layer, x).transpose(1, 2).contiguous()
    D = D.reshape(n, n_outputs, mod.out_channels, -1).permute(0, 3, 1, 2)
    return A, D


def _patches(layer, x):
    """A conv layer's patches, positions last: (n, C_in k, P).

    ``F.unfold``'s layout and order ``(C_in, k_h, k_w)``, from strided views
    of the padded input (one copy whose inner loop runs along the output
    row). On the CPU for 256 rows of 8 x 8 x 8 and a 3 x 3 kernel, on one
    core: 0.8 ms, against 2.9 ms for ``F.unfold`` and 12.7 ms for the same
    copy with positions first (whose inner loop runs along a kernel row).
    """
    mod = layer.module
    mode = "constant" if mod.padding_mode == "zeros" else mod.padding_mode
    x = F.pad(x, mod._reversed_padding_repeated_twice, mode=mode)
    kernel, dilation, stride = mod.kernel_size, mod.dilation, mod.stride
    if isinstance(mod, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, dilation, stride = (1, *kernel), (1, *dilation), (1, *stride)
    (kh, kw), (dh, dw), (sh, sw) = kernel, dilation, stride
    windows = x.unfold(2, (kh - 1) * dh + 1, sh).unfold(3, (kw - 1) * dw + 1, sw)
    windows = windows[..., ::dh, ::dw]  # (n, C, out_h, out_w, kh, kw)
    n, c = x.shape[:2]
    return windows.permute(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, -1)


def _conv_gradients(layer, x, D):
    """A conv layer's ``G_o = sum_p d_{o,p} a_p^T``, per group one ``bmm``.

    ``D`` (n, O, C_out, ...) is multiplied as (n, O C_out, P) against the
    patches (n, P, C_in k) (:func:`_patches`, transposed: no copy), so the
    product comes out in the weight's layout (n, O, C_out, C_in k / groups).
    """
    mod, names = layer.module, layer.names
    n, n_outputs = D.shape[0], D.shape[1]
    D = D.reshape(n, n_outputs, mod.out_channels, -1)
    grads = {}
    if "weight" in names:
        A = _patches(layer, x)
        g = mod.groups
        c_in, c_out = A.shape[1] // g, mod.out_channels // g
        parts = [
            torch.bmm(
                D[:, :, k * c_out : (k + 1) * c_out].reshape(n, n_outputs * c_out, -1),
                A[:, k * c_in : (k + 1) * c_in].transpose(1, 2),
            ).view(n, n_outputs, c_out, c_in)
            for k in range(g)
        ]
        grads[names["weight"]] = parts[0] if g == 1 else torch.cat(parts, dim=2)
    if "bias" in names:
        grads[names["bias"]] = D.sum(dim=3)
    return grads


def _augment(A, trains_weight, trains_bias):
    parts = ([A] if trains_weight else []) + (
        [A.new_ones(*A.shape[:-1], 1)] if trains_bias else []
    )
    return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


def _embedding_signals(layer, x, D, dtype, roots):
    """An embedding's tokens (n, P) and signals (n, P, O, dim).

    With ``roots`` (``sqrt`` of the metric by name) each position's signal
    is scaled by its token's row, ``sqrt(S[token])``: the one-hot input
    meets only that row of the table, so the ghost form stays exact.
    """
    mod = layer.module
    tokens = x.reshape(x.shape[0], -1)
    _, Dp = _positions(x.to(dtype), D, 1)
    if mod.padding_idx is not None:  # no gradient reaches padding rows
        Dp = Dp * (tokens != mod.padding_idx)[:, :, None, None].to(dtype)
    if roots is not None:
        Dp = Dp * roots[layer.names["weight"]][tokens][:, :, None, :]
    return tokens, Dp


def kron(layer, x, D, dtype, roots=None):
    """Ghost terms ``(A, D)`` of one call, one per group.

    ``roots`` (a metric's ``sqrt`` by name) scales an embedding's signals
    (:func:`_embedding_signals`); other layers' terms are the same in a
    metric (``_metric.py`` applies it).
    """
    mod, names = layer.module, layer.names
    trains_w, trains_b = "weight" in names, "bias" in names
    if layer.rule == "embedding":
        return [_embedding_signals(layer, x, D, dtype, roots)]
    if layer.rule == "linear":
        A, Dp = _positions(x, D, mod.in_features)
        return [(_augment(A, trains_w, trains_b), Dp)]
    A, Dp = _unfold(layer, x, D)
    g = mod.groups
    c_in, c_out = A.shape[-1] // g, mod.out_channels // g
    return [
        (
            _augment(A[..., k * c_in : (k + 1) * c_in], trains_w, trains_b),
            Dp[..., k * c_out : (k + 1) * c_out],
        )
        for k in range(g)
    ]


def instantiate(layer, x, D, dtype, roots=None):
    """Per-example gradients of one call, in each parameter's own layout.

    With ``roots`` (a metric's ``sqrt`` by name), ``sqrt(S) * G``: an
    embedding's signals are scaled per token before they are added to the
    table, the rest after.
    """
    if layer.rule == "embedding":
        return _instantiate_embedding(layer, x, D, dtype, roots)
    grads = _instantiate_kron_or_norm(layer, x, D)
    if roots is not None:
        grads = {
            full: g * roots[full].reshape(g.shape[2:]) for full, g in grads.items()
        }
    return grads


def _instantiate_embedding(layer, x, D, dtype, roots):
    """The rows' tables ``(n, O, vocab, dim)``, by ``index_add``."""
    mod, names = layer.module, layer.names
    n, n_outputs = D.shape[0], D.shape[1]
    tokens, Dp = _embedding_signals(layer, x, D, dtype, roots)  # (n, P, O, dim)
    flat = (
        tokens + mod.num_embeddings * torch.arange(n, device=tokens.device)[:, None]
    ).reshape(-1)
    weight = Dp.new_zeros(n * mod.num_embeddings, n_outputs, mod.embedding_dim)
    weight.index_add_(0, flat, Dp.reshape(-1, n_outputs, mod.embedding_dim))
    weight = weight.view(n, mod.num_embeddings, n_outputs, -1)
    return {names["weight"]: weight.transpose(1, 2)}


def _instantiate_kron_or_norm(layer, x, D):
    """Linear, conv and norm gradients of one call (n, O, ...)."""
    mod, names = layer.module, layer.names
    grads = {}
    if layer.rule == "norm":
        return _norm_gradients(layer, x, D)
    if layer.rule == "linear":
        A, Dp = _positions(x, D, mod.in_features)
        if "weight" in names:
            grads[names["weight"]] = torch.einsum("npoh,npa->noha", Dp, A)
        if "bias" in names:
            grads[names["bias"]] = Dp.sum(dim=1)
        return grads
    return _conv_gradients(layer, x, D)


def _norm_gradients(layer, x, D):
    """``sum_p d_p * xhat_p`` (weight) and ``sum_p d_p`` (bias) per row."""
    mod, names = layer.module, layer.names
    n, n_outputs = D.shape[0], D.shape[1]
    if isinstance(mod, nn.LayerNorm):
        shape = mod.normalized_shape
        xhat = F.layer_norm(x, shape, None, None, mod.eps)
        k = len(shape)
        positions = tuple(range(2, D.ndim - k))
    else:
        if isinstance(mod, nn.GroupNorm):
            xhat = F.group_norm(x, mod.num_groups, None, None, mod.eps)
        else:
            xhat = F.batch_norm(
                x, mod.running_mean, mod.running_var, None, None, False, 0.0, mod.eps
            )
        positions = tuple(range(3, D.ndim))
    grads = {}
    if "weight" in names:
        weighted = D * xhat.unsqueeze(1)
        grads[names["weight"]] = (
            weighted.sum(dim=positions) if positions else weighted
        ).reshape(n, n_outputs, -1)
    if "bias" in names:
        grads[names["bias"]] = (D.sum(dim=positions) if positions else D).reshape(
            n, n_outputs, -1
        )
    return grads


def kron_metric(layer, group, metric):
    """A Kronecker term's metric in its ``(h_out, h_in [+ 1])`` layout.

    The weight's rows (a convolution's: this group's output channels) in
    ``F.unfold``'s column order, then the bias as the ones column's.
    """
    mod, names = layer.module, layer.names
    if layer.rule == "attention":
        return _attention.kron_metric(layer, group, metric)
    rows = slice(None)
    if layer.rule == "conv":
        c_out = mod.out_channels // mod.groups
        rows = slice(group * c_out, (group + 1) * c_out)
    parts = []
    if "weight" in names:
        weight = metric[names["weight"]]
        parts.append(weight.reshape(weight.shape[0], -1)[rows])
    if "bias" in names:
        parts.append(metric[names["bias"]][rows, None])
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
