"""The layer-hook engine's rule for ``nn.MultiheadAttention``.

Attention is three input projections and an output projection, each a
``Linear`` at positions, around a parameter-free core (scaled dot products,
softmax, weighted values). Its out-projection is applied functionally, so
no hook sees it; the rule recomputes the layer explicitly from its kept
inputs: the out-projection's inputs ``A`` are the heads' merged context,
its signals ``D`` the layer's output signals; the in-projections' inputs
are the query, key and value, their signals come from the core's backward,
written out here for every output at once (one batched product per step,
no per-row loop). Four Kronecker groups, ``q``, ``k``, ``v`` and ``out``
(those with a trained weight or bias), then take 7.6's ghost or
instantiated form by the cost rule of ``_ghost.py`` (docs/design.md,
section 7.6).

A layer with ``add_bias_kv`` or ``add_zero_attn`` goes to the per-layer
fallback (exact, at its price); a per-head ``(N * num_heads, L, S)``
``attn_mask`` is refused; ``kdim``/``vdim`` (separate projection weights),
``bias=False``, ``batch_first`` either way, ``key_padding_mask``, a 2-D
``attn_mask`` (bool or additive) and returned attention weights used
downstream are handled. Dropout is off (the plan refuses an active one).
"""

import math

import torch
import torch.nn.functional as F

from . import _ghost

#: ``MultiheadAttention.forward``'s arguments, in their positional order.
_ARGUMENTS = (
    "query",
    "key",
    "value",
    "key_padding_mask",
    "need_weights",
    "attn_mask",
    "average_attn_weights",
    "is_causal",
)
_DEFAULTS = {"need_weights": True, "average_attn_weights": True}
_INPUTS = ("query", "key", "value")


def rule_of(layer):
    """``"attention"``; ``"fallback"`` for the options this rule leaves out.

    ``add_bias_kv`` and ``add_zero_attn`` append key and value positions
    of their own: such a layer goes through ``_fallback.py``, exact at the
    fallback's price.
    """
    mod = layer.module
    if mod.bias_k is not None or mod.add_zero_attn:
        return "fallback"
    return "attention"


def _bind(args, kwargs):
    """``MultiheadAttention.forward``'s arguments by name (values or shapes)."""
    bound = dict(_DEFAULTS)
    bound.update(zip(_ARGUMENTS, args))
    bound.update(kwargs)
    return bound


class _Group:
    """One Kronecker group: a projection's weight rows and bias entries."""

    def __init__(self, which, weight, rows, bias, h_in):
        self.which = which  # "query", "key", "value" or "out"
        self.weight, self.bias = weight, bias  # local names (None: frozen)
        self.rows = rows  # its rows of the weight and entries of the bias
        self.h_in = h_in  # input features of the projection


def _groups(layer, trained_only=True):
    """The projections, those with a trained weight or bias when ``trained_only``."""
    mod, names = layer.module, layer.names
    E = mod.embed_dim
    packed = mod._qkv_same_embed_dim
    dims = {"query": E, "key": mod.kdim, "value": mod.vdim}
    groups = []
    for j, which in enumerate(_INPUTS):
        weight = "in_proj_weight" if packed else f"{which[0]}_proj_weight"
        rows = slice(j * E, (j + 1) * E)
        bias = "in_proj_bias" if mod.in_proj_bias is not None else None
        groups.append(_Group(which, weight, rows, bias, dims[which]))
    bias = "out_proj.bias" if mod.out_proj.bias is not None else None
    groups.append(_Group("out", "out_proj.weight", slice(0, E), bias, E))
    if not trained_only or names is None:
        return groups
    for g in groups:
        g.weight = g.weight if g.weight in names else None
        g.bias = g.bias if g.bias in names else None
    return [g for g in groups if g.weight or g.bias]


def _local(mod, local):
    owner, *rest = local.split(".")
    value = getattr(mod, owner)
    return getattr(value, rest[0]) if rest else value


def _projections(mod, names, leaves):
    """Each projection's ``(weight, bias)`` at the checkpoint, by ``which``.

    Trained parameters come from ``leaves`` (by full name, ``names`` maps
    local to full), the others are the module's own; packed in-projection
    parameters are cut into their query, key and value rows.
    """

    def value(local):
        full = names.get(local)
        return leaves[full].detach() if full in leaves else _local(mod, local)

    result = {}
    for group in _groups(_Whole(mod), trained_only=False):
        weight = value(group.weight)
        if group.weight == "in_proj_weight":
            weight = weight[group.rows]
        bias = value(group.bias)[group.rows] if group.bias is not None else None
        result[group.which] = (weight, bias)
    return result


class _Whole:
    """A stand-in layer: the module with every parameter counted as trained."""

    def __init__(self, mod):
        self.module = mod
        self.names = None


def kron_shapes(layer, calls):
    """``(h_in, h_out, P, False)`` per group, checking each call's options."""
    mod = layer.module
    groups = _groups(layer)
    positions = dict.fromkeys(("query", "key", "value", "out"), 0)
    for call, axes in zip(calls, layer.calls):
        shapes = _bind(call["args"], call["kwargs"])
        row_axes = _bind(axes["args"], axes["kwargs"])
        _check_call(layer, shapes, row_axes)
        for which in _INPUTS:
            shape, axis = shapes[which], row_axes[which]
            positions[which] += math.prod(shape) // shape[axis] // shape[-1]
    positions["out"] = positions["query"]
    return [
        (
            (g.h_in if g.weight else 0) + bool(g.bias),
            mod.embed_dim,
            positions[g.which],
            False,
        )
        for g in groups
    ]


def _check_call(layer, shapes, row_axes):
    """Refuse inputs without a row axis and per-head masks, naming them."""
    for which in _INPUTS:
        if row_axes[which] is None or len(shapes[which]) != 3:
            raise ValueError(
                f"The hooks engine needs batched {which} inputs (with a row "
                f"axis) for the MultiheadAttention layer {layer.prefix!r}; "
                f"got shape {shapes[which]}."
            )
    mask = shapes.get("attn_mask")
    if mask is not None and len(mask) != 2:
        raise ValueError(
            f"The hooks engine takes a 2-D attn_mask (L, S) for the "
            f"MultiheadAttention layer {layer.prefix!r}, not one of shape "
            f"{mask} (per row and head): use engine='jacobian'."
        )


def _additive(mask, dtype):
    """A bool mask (True: not allowed) as ``-inf``, a float mask as it is."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            mask, float("-inf")
        )
    return mask.to(dtype)


def _forward(
    mod, projections, query, key, value, key_padding_mask=None, attn_mask=None
):
    """The layer's forward written out, rows first: ``(n, L, E)`` inputs.

    ``projections`` holds each projection's ``(weight, bias)``
    (:func:`_projections`). Returns the output ``(n, L, E)``, the attention
    probabilities ``(n, H, L, S)``, the merged context ``(n, L, E)`` (the
    out-projection's input) and the heads' ``q``, ``k``, ``v``
    ``(n, H, L or S, E / H)``.
    """
    E, H = mod.embed_dim, mod.num_heads
    n, L = query.shape[0], query.shape[1]
    q, k, v = (
        F.linear(x, *projections[which]).view(n, -1, H, E // H).transpose(1, 2)
        for which, x in zip(_INPUTS, (query, key, value))
    )
    scores = (q * (E // H) ** -0.5) @ k.transpose(-2, -1)  # (n, H, L, S)
    mask = _additive(attn_mask, scores.dtype)
    if mask is not None:
        scores = scores + mask
    mask = _additive(key_padding_mask, scores.dtype)
    if mask is not None:
        scores = scores + mask[:, None, None, :]
    probabilities = torch.softmax(scores, dim=-1)
    context = (probabilities @ v).transpose(1, 2).reshape(n, L, E)
    out = F.linear(context, *projections["out"])
    return out, probabilities, context, q, k, v


def _terms(layer, args, kwargs, Ds, axes, leaves):
    """Per trained group (in :func:`_groups`' order): ``(group, A, D)``.

    ``A`` is the projection's input ``(n, P, h_in)`` (no ones column) and
    ``D`` its output signals ``(n, P, O, E)``: the layer's output signals
    for the out-projection; for the in-projections, the core's backward of
    those (:func:`_core_signals`) for all ``O`` outputs at once.
    """
    mod = layer.module
    bound = _bind(args, kwargs)
    row_axes = _bind(axes["args"], axes["kwargs"])
    dtype = Ds[0].dtype
    inputs = [bound[w].movedim(row_axes[w], 0).to(dtype) for w in _INPUTS]
    padding = bound.get("key_padding_mask")
    if padding is not None:
        padding = padding.movedim(row_axes["key_padding_mask"], 0)
    D_out = Ds[0].movedim(axes["outputs"][0] + 1, 0)  # (n, O, L, E)
    dW = Ds[1].movedim(axes["outputs"][1] + 1, 0) if len(Ds) > 1 else None
    projections = _projections(mod, layer.names, leaves)
    n, n_outputs, L = D_out.shape[:3]
    S = inputs[1].shape[1]
    # The core's temporaries are (rows, O, H, L, S): rows in chunks of a
    # fixed size keep them within the ghost scratch (on a device, the
    # rows' share that bytes_per_row reserves: one chunk for a tile).
    scratch = _ghost.scratch_numbers(D_out, n * _ghost.ROW_SCRATCH)
    step = max(1, scratch // (n_outputs * mod.num_heads * L * S))
    parts = []
    with torch.no_grad():
        for i0 in range(0, n, step):
            rows = slice(i0, i0 + step)
            parts.append(
                _core_signals(
                    mod,
                    projections,
                    [x[rows] for x in inputs],
                    None if padding is None else padding[rows],
                    bound.get("attn_mask"),
                    D_out[rows],
                    None if dW is None else dW[rows],
                )
            )
    context, *signals = (torch.cat(p) if len(p) > 1 else p[0] for p in zip(*parts))
    signals = dict(zip(_INPUTS, signals), out=D_out.transpose(1, 2))
    sources = dict(zip(_INPUTS, inputs), out=context)
    return [(g, sources[g.which], signals[g.which]) for g in _groups(layer)]


def _core_signals(mod, projections, inputs, padding, attn_mask, D_out, dW):
    """The merged context and the q, k, v signals ``(n, P, O, E)`` of some rows.

    The backward of scaled dot-product softmax attention, written out for
    every output at once: ``D_out`` (n, O, L, E) are the layer's output
    signals, ``dW`` those of its returned attention weights (or None).
    """
    E, H = mod.embed_dim, mod.num_heads
    _, P, context, q, k, v = _forward(mod, projections, *inputs, padding, attn_mask)
    n, n_outputs, L = D_out.shape[:3]
    d_context = (D_out @ projections["out"][0]).view(n, n_outputs, L, H, -1)
    d_context = d_context.transpose(2, 3)  # (n, O, H, L, hd)
    P = P.unsqueeze(1)
    dv = P.transpose(-2, -1) @ d_context  # (n, O, H, S, hd)
    dP = d_context @ v.unsqueeze(1).transpose(-2, -1)  # (n, O, H, L, S)
    if dW is not None:  # averaged over heads (n, O, L, S), or per head
        dP = dP + (dW.unsqueeze(2) / H if dW.ndim == 4 else dW)
    d_scores = P * (dP - (dP * P).sum(dim=-1, keepdim=True))
    scale = (E // H) ** -0.5
    dq = d_scores @ k.unsqueeze(1) * scale  # (n, O, H, L, hd)
    dk = d_scores.transpose(-2, -1) @ q.unsqueeze(1) * scale  # (n, O, H, S, hd)
    # (n, O, H, P, hd) -> (n, P, O, E)
    return (context,) + tuple(
        d.permute(0, 3, 1, 2, 4).reshape(n, d.shape[3], n_outputs, E)
        for d in (dq, dk, dv)
    )


def kron(layer, args, kwargs, Ds, axes, leaves):
    """Ghost terms ``(A, D)`` of one call, one per trained group.

    ``A`` gets a ones column for a trained bias (alone, for a frozen
    weight), as the rules of ``_rules.py`` do.
    """
    terms = []
    for group, A, D in _terms(layer, args, kwargs, Ds, axes, leaves):
        parts = [A] if group.weight else []
        if group.bias:
            parts.append(A.new_ones(*A.shape[:-1], 1))
        terms.append((torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0], D))
    return terms


def instantiate(layer, args, kwargs, Ds, axes, leaves, roots=None):
    """Per-example gradients ``(n, O, *shape)`` of one call, by full name.

    A packed in-projection's are its query, key and value rows stacked;
    with ``roots`` (a metric's ``sqrt`` by name), ``sqrt(S) * G``.
    """
    parts = {}
    for group, A, D in _terms(layer, args, kwargs, Ds, axes, leaves):
        if group.weight:
            full = layer.names[group.weight]
            parts.setdefault(full, []).append(torch.einsum("npoh,npa->noha", D, A))
        if group.bias:
            parts.setdefault(layer.names[group.bias], []).append(D.sum(dim=1))
    grads = {
        full: torch.cat(p, dim=2) if len(p) > 1 else p[0] for full, p in parts.items()
    }
    if roots is not None:
        grads = {
            full: g * roots[full].reshape(g.shape[2:]) for full, g in grads.items()
        }
    return grads


def kron_metric(layer, index, metric):
    """Group ``index``'s metric in its ``(E, h_in [+ 1])`` layout."""
    group = _groups(layer)[index]
    parts = []
    if group.weight:
        weight = metric[layer.names[group.weight]]
        parts.append(weight[group.rows] if group.weight == "in_proj_weight" else weight)
    if group.bias:
        parts.append(metric[layer.names[group.bias]][group.rows, None])
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
