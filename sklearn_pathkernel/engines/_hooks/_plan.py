"""The layer-hook engine's plan: what a probe forward learns about a module.

A probe forward at two and three copies of an example row records which
modules run and the shapes of their inputs and outputs; the axis whose size
changes is each tensor's row axis. Every module owning trained parameters
gets a rule (``_rules.py``), and each Kronecker layer ghost or
instantiated form by the cost rule of ``_ghost.py`` (docs/design.md,
section 7.6).
"""

import math

import torch
from torch import nn

from ..._model._network import check_rows_independent
from . import _ghost, _metric
from ._rules import kron_shapes, per_row, rule_of

#: How the signals of ``O > 1`` outputs are taken (``_recording.py``):
#: ``"batched"``, one forward and a ``vmap`` of the backward over ``O``
#: seeds; ``"replicated"``, one forward and backward over ``O`` copies of
#: each row (the forward repeated: about 1.5x slower on the CPU).
SIGNALS = "batched"


def own_parameters(module):
    return dict(module.named_parameters(recurse=False))


class _Ghost:
    """One ghost term: a (layer, group) whose uses concatenate positions.

    ``metric_form`` is its form in a metric (``_metric.py``): ``"ghost"``
    for token inputs (the metric scales the signals), else ``"pairwise"`` or
    ``"instantiated"``, by the cost rule.
    """

    def __init__(self, layer, group, h_in, h_out, tokens, positions, metric_form):
        self.key, self.h_in, self.h_out = (id(layer.module), group), h_in, h_out
        self.layer, self.group = layer, group
        self.tokens = tokens  # the input side is one-hot token ids
        self.positions = positions
        self.metric_form = metric_form
        # Token ids that are the rows themselves (one call, rows first):
        # their matches between two blocks are the same at every checkpoint.
        self.from_input = False


class _Layer:
    """A hooked module: its rule, trained parameters and mode."""

    def __init__(self, module, prefix, names, rule):
        self.module, self.prefix, self.rule = module, prefix, rule
        self.names = names  # local name -> canonical full name (trained only)
        self.ghost = False
        self.calls = []  # per call: batch axes of (args, kwargs, outputs)


class Plan:
    """What the probe forward learns about a module and its trained parameters."""

    def __init__(self, module, parameter_names, example):
        trained = set(parameter_names)
        # id(parameter) -> its name in named_parameters()
        canonical = {id(p): name for name, p in module.named_parameters()}
        self.tied = _tied_parameters(module, canonical, trained)
        # Which modules run, with the shapes of their inputs and outputs at
        # two batch sizes: the axis that changes is the row axis.
        records = [_probe(module, example, rows) for rows in (2, 3)]
        layers = _trained_layers(module, canonical, trained, called=records[0])
        outputs = records[0][id(module)][0]["outputs"]
        self.n_outputs = int(math.prod(outputs[0][1:])) if outputs else 1
        self.layers = []
        self.ghosts = []
        inst_sizes = {}  # full name -> numel, of every instantiated parameter
        numbers = activations = metric_numbers = 0
        for mod_id, layer in layers.items():
            counts = self._add_layer(
                layer, records[0][mod_id], records[1][mod_id], inst_sizes
            )
            activations += counts[0]
            numbers += counts[1]
            metric_numbers += counts[2]
        self._count_numbers(numbers, activations, metric_numbers, inst_sizes)

    def _add_layer(self, layer, calls2, calls3, inst_sizes):
        """Row axes of a layer's calls, then its form: ghost terms or instantiated.

        Returns the layer's numbers per row: of its calls' inputs and
        outputs, of its ghost terms, and of their gradients instantiated in
        a metric.
        """
        layer.calls = [_axes(a, b, layer) for a, b in zip(calls2, calls3)]
        if any(None in axes["outputs"] for axes in layer.calls):
            # Its output serves every row at once (a positional table):
            # the row-summed gradient would mix the rows' signals.
            raise ValueError(
                f"The layer {layer.prefix!r} gives an output without a row "
                "axis (shared by all rows), so the hooks engine cannot "
                "separate the rows' gradients; use engine='jacobian', or "
                "apply the layer to inputs with a row axis."
            )
        activations = sum(_row_numbers(c, axes) for c, axes in zip(calls2, layer.calls))
        self.layers.append(layer)
        numbers = metric_numbers = 0
        terms = kron_shapes(layer, calls2, self.n_outputs)
        tied = any(full in self.tied for full in layer.names.values())
        if terms and not tied and _ghost.ghost_is_cheaper(terms, self.n_outputs):
            layer.ghost = True
            for group, (h_in, h_out, P, tokens) in enumerate(terms):
                form = _metric_form(h_in, h_out, P, tokens, self.n_outputs)
                term = _Ghost(layer, group, h_in, h_out, tokens, P, form)
                term.from_input = tokens and _is_input(calls2, layer.calls)
                self.ghosts.append(term)
                # Token inputs are kept as ids: one number a position.
                numbers += P * ((1 if tokens else h_in) + self.n_outputs * h_out)
                if form == "instantiated":
                    metric_numbers += self.n_outputs * h_in * h_out
        else:
            for local, full in layer.names.items():
                inst_sizes[full] = parameter_at(layer.module, local).numel()
        return activations, numbers, metric_numbers

    def _count_numbers(self, numbers, activations, metric_numbers, inst_sizes):
        """The instantiated columns' layout and the numbers a row's state takes."""
        # With several outputs the signals of all O are alive at once (and,
        # replicated, the forward activations are O times as many) while a
        # state is built: counted alike for every strategy, so the tile
        # grid does not depend on it.
        self.signals = SIGNALS if self.n_outputs > 1 else "batched"
        if self.n_outputs > 1:
            numbers += (self.n_outputs - 1) * activations
        self.inst_names = sorted(inst_sizes)
        self.inst_offsets = {}
        offset = 0
        for full in self.inst_names:
            self.inst_offsets[full] = (offset, offset + inst_sizes[full])
            offset += inst_sizes[full]
        self.n_instantiated = offset
        self.numbers_per_row = numbers + activations + self.n_outputs * offset
        # In a metric, instantiated ghost terms hold their gradients as well.
        self.metric_numbers_per_row = self.numbers_per_row + metric_numbers


def _tied_parameters(module, canonical, trained):
    """The trained parameters that more than one module owns (tied weights)."""
    uses = {}  # canonical name -> owning modules
    for _, mod in module.named_modules(remove_duplicate=False):
        for p in own_parameters(mod).values():
            full = canonical[id(p)]
            if full in trained:
                uses.setdefault(full, set()).add(id(mod))
    return {full for full, owners in uses.items() if len(owners) > 1}


def _trained_layers(module, canonical, trained, called):
    """The hooked layers by module id, each with its trained parameters and rule.

    A module owning trained parameters is hooked itself if the probe saw it
    called (``called``, by module id), else through its nearest called
    ancestor (attention's ``out_proj``, applied functionally by its caller),
    its parameters then named relative to that ancestor.
    """
    prefixes = {id(m): name for name, m in module.named_modules()}
    modules = {id(m): m for m in module.modules()}
    parents = {}
    for m in module.modules():
        for child in m.children():
            parents.setdefault(id(child), id(m))
    layers = {}
    for mod_id, mod in modules.items():
        names = {
            local: canonical[id(p)]
            for local, p in own_parameters(mod).items()
            if canonical[id(p)] in trained
        }
        if not names:
            continue
        owner = mod_id
        while owner not in called and owner in parents:
            owner = parents[owner]  # out_proj inside attention: its caller
        if owner not in called:
            raise ValueError(
                f"The hooks engine found no call of the layer owning "
                f"{sorted(names.values())}: its parameters cannot be reached."
            )
        if owner != mod_id:
            rel = prefixes[mod_id][len(prefixes[owner]) :].lstrip(".")
            names = {f"{rel}.{k}": v for k, v in names.items()}
        layer = layers.get(owner)
        if layer is None:
            layer = layers[owner] = _Layer(modules[owner], prefixes[owner], {}, None)
        layer.names.update(names)
    for layer in layers.values():
        layer.rule = rule_of(layer)
    return layers


def _metric_form(h_in, h_out, P, tokens, n_outputs):
    """A ghost term's form in a metric (``_metric.pairwise_is_cheaper``)."""
    if tokens:
        return "ghost"
    if _metric.pairwise_is_cheaper(h_in, h_out, P, n_outputs):
        return "pairwise"
    return "instantiated"


def parameter_at(module, local):
    owner = module
    *path, leaf = local.split(".")
    for part in path:
        owner = getattr(owner, part)
    return getattr(owner, leaf)


def check_rows_deterministic(module):
    """Refuse layers whose outputs mix rows (batch statistics) or are random."""
    check_rows_independent(module)  # BatchNorm on batch statistics
    for prefix, sub in module.named_modules():
        random = (isinstance(sub, nn.modules.dropout._DropoutNd) and sub.p > 0) or (
            isinstance(sub, nn.MultiheadAttention) and sub.dropout > 0
        )
        if random and sub.training:
            raise ValueError(
                f"The Dropout layer {prefix!r} is active (training mode): the "
                "kernel would depend on random masks. Put the module in eval() "
                "mode: kernels are taken with dropout off."
            )


def _probe(module, example, rows):
    """Per module id, per call: shapes of tensor args, kwargs and outputs."""
    X = example[:1].expand(rows, *example.shape[1:]).clone()
    record = {}

    def hook(mod, args, kwargs, output):
        record.setdefault(id(mod), []).append(
            {
                "args": [_shape(a) for a in args],
                "input": bool(args) and args[0] is X,
                "kwargs": {k: _shape(v) for k, v in kwargs.items()},
                "outputs": [tuple(t.shape) for t in output_tensors(output)],
            }
        )

    handles = [
        m.register_forward_hook(hook, with_kwargs=True) for m in module.modules()
    ]
    try:
        with torch.no_grad():
            module(X)
    finally:
        for h in handles:
            h.remove()
    return record


def _is_input(calls, axes):
    """Whether a layer's one call takes the module's input itself, rows first."""
    return len(calls) == 1 and calls[0]["input"] and axes[0]["args"][0] == 0


def _shape(value):
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def output_tensors(output):
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for t in output if isinstance(t, torch.Tensor)]
    return []


def _axis(shape2, shape3, layer, what):
    """The row axis of a tensor seen at 2 and 3 rows (None: shared by all rows)."""
    if shape2 is None:
        return None
    changed = [k for k, (a, b) in enumerate(zip(shape2, shape3)) if a != b]
    if len(changed) > 1 or len(shape2) != len(shape3):
        raise ValueError(
            f"The hooks engine cannot find the row axis of {what} of layer "
            f"{layer.prefix!r}: shapes {shape2} and {shape3} for 2 and 3 rows."
        )
    return changed[0] if changed else None


def _axes(call2, call3, layer):
    return {
        "args": [
            _axis(a, b, layer, f"argument {k}")
            for k, (a, b) in enumerate(zip(call2["args"], call3["args"]))
        ],
        "kwargs": {
            k: _axis(v, call3["kwargs"][k], layer, f"argument {k!r}")
            for k, v in call2["kwargs"].items()
        },
        "outputs": [
            _axis(a, b, layer, "the output")
            for a, b in zip(call2["outputs"], call3["outputs"])
        ],
    }


def _row_numbers(call, axes):
    """Numbers per row of a call's inputs and outputs (kept while building)."""
    return sum(per_row(s, a) for s, a in zip(call["args"], axes["args"])) + sum(
        per_row(s, a) for s, a in zip(call["outputs"], axes["outputs"])
    )
