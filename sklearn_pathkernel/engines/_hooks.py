"""The layer-hook engine: per-layer rules on any module graph.

Forward hooks keep each parametrised layer's input ``A`` (and its output
``Z``); one backward pass, over ``O`` copies of every row seeded with the
``O`` unit vectors, gives every layer's output gradient ``D = df_o/dZ`` for
all outputs at once (rows are independent, so the gradient of the
row-summed output with respect to ``Z`` holds every row's signals). A rule
per layer type turns ``A`` and ``D`` into that layer's share of the tangent
kernel; no per-example Jacobian of the whole network ever exists. Rules
(docs/design.md, section 7.6):

- ``Linear`` at ``P`` positions, ``Conv1d``/``Conv2d`` unfolded to ``P``
  output pixels (per group), ``Embedding`` (its input is one-hot): the
  per-example gradient is ``G_o = sum_p d_{o,p} a_p^T`` and each layer is kept
  either in *ghost* form, ``(A, D)``, contracted as
  ``sum_{p,q} (a_p . a'_q) (sum_o d_{o,p} . d'_{o,q})``, or *instantiated*,
  ``G`` itself. For a Gram between a block of ``n`` rows and one of ``m``
  rows, ghost costs ``2 n m P Q (h_in + O h_out)`` FLOPs and instantiated
  ``2 n m O h_in h_out`` plus ``2 (n + m) P O h_in h_out`` to build ``G``;
  with ``P = Q`` and ``n = m = T`` (a full tile, 512 rows) the engine keeps
  ghost form when ``P^2 (h_in + O h_out) < O h_in h_out (1 + 2 P / T)``.
  For ``P = 1`` this is always ghost: the structured engine's rule. An
  embedding's ghost term sums over matching token pairs only, when few.
- ``LayerNorm``, ``GroupNorm``, eval-mode ``BatchNorm``: instantiated, the
  gradients are ``sum_p d_p * xhat_p`` (weight) and ``sum_p d_p`` (bias).
- Any other parametrised layer (``MultiheadAttention``, whose ``out_proj``
  is applied functionally, included): a per-layer ``torch.func`` fallback,
  per-example vector-Jacobian products of that layer alone on its kept
  inputs with the kept ``D`` as cotangents; only that layer pays.
- A parameter used several times sums its uses: a module called again
  concatenates positions (ghost form then holds the cross terms), a
  parameter tied between modules is instantiated and summed. Frozen
  parameters are left out.

FLOPs per checkpoint: ``2 n m`` times, per layer, the smaller cost above
(the whole instantiated part is one matrix product). Memory per row: the
ghost layers' ``P (h_in + O h_out)`` numbers and ``O`` per instantiated
parameter, plus the forward activations and signals while a state is
built; ghost products go in sub-blocks of at most :data:`GHOST_SCRATCH`
numbers, a fixed grid, so results are bit-identical across budgets.
"""

import math
import threading
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vjp, vmap

from .._blocking import TILE_ROWS
from .._network import check_rows_independent
from ._base import TORCH_FUNC_LOCK, Engine

# functional_call swaps a module's parameters in place for the call, so two
# threads inside the same module at once would compute at each other's
# checkpoints: states take turns (reentrant; always taken before
# TORCH_FUNC_LOCK). With thread-based n_jobs the hooks engine gains nothing
# from several tasks at once; worker processes are unaffected.
_MODULE_LOCK = threading.RLock()

#: Largest temporary of a ghost contraction, in numbers (row sub-blocks of
#: a fixed size keep every product's shape independent of the budget).
GHOST_SCRATCH = 2**21
#: Signals from one backward over ``O`` copies of each row rather than a
#: batched backward of ``O`` seeds (``_replicated_signals``).
REPLICATE = True
#: An embedding's ghost term goes through its matching token pairs only
#: when they are fewer than one in ``SPARSE_TOKENS`` position pairs.
SPARSE_TOKENS = 8
#: Rows of an instantiated ``vec G`` or of a ghost layer's ``vec D`` per
#: sketch piece, as in the structured engine.
SKETCH_ROWS = 8192

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
_RULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, *_NORMS)
_RULE_PARAMETERS = {"weight", "bias"}


class HookEngine(Engine):
    """Forward hooks and one batched backward; a rule per layer type.

    A state holds, per ghost layer (or group of a grouped convolution), its
    inputs ``A`` (n, P, h_in [+ 1]), or the token ids of an embedding, and
    signals ``D`` (n, P, O, h_out); and the instantiated per-example
    gradients of every other trained parameter, concatenated, (n, O, k).
    Which layers are ghost, where each tensor's row axis is and how much a
    row costs come from a probe forward on two and three copies of one row
    (``example``, or the first rows the engine sees).

    Parameters
    ----------
    module : torch.nn.Module
    parameter_names : list of str
    example : torch.Tensor, default=None
        A row (or rows) of the input, ``(n, *input_shape)``: lets
        :meth:`bytes_per_row` and :meth:`sketch_shapes` answer before any
        state exists (``select_engine`` passes it).

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel.engines import HookEngine
    >>> net = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.Flatten(),
    ...                           torch.nn.Linear(8, 1))
    >>> params = {n: p.detach() for n, p in net.named_parameters()}
    >>> engine = HookEngine(net, list(params))
    >>> X = torch.randn(5, 1, 6)
    >>> state = engine.state(params, X)
    >>> engine.contract(state, state, trace=True).shape
    torch.Size([5, 5])
    """

    name = "hooks"
    supported_modules = (
        "a module whose parametrised layers are Linear, Conv1d, Conv2d, "
        "Embedding, LayerNorm, GroupNorm, BatchNorm or MultiheadAttention"
    )

    def __init__(self, module, parameter_names, example=None):
        self.module = module
        self.parameter_names = list(parameter_names)
        self.plan = None
        if example is not None:
            self._make_plan(example)

    @classmethod
    def supports(cls, module):
        """Any module with parameters: layers without a rule fall back."""
        return any(True for _ in module.parameters())

    @classmethod
    def covers(cls, module):
        """Whether every directly parametrised submodule has a rule.

        ``engine="auto"`` picks the hooks engine only then; a module with an
        unusual layer still runs exactly with ``engine="hooks"`` (that
        layer through the per-layer fallback).
        """
        owners = [m for m in module.modules() if _own_parameters(m)]
        if not owners:
            return False
        inside_attention = {
            id(sub)
            for m in module.modules()
            if isinstance(m, nn.MultiheadAttention)
            for sub in m.modules()
            if sub is not m
        }
        return all(
            isinstance(m, (*_RULES, nn.MultiheadAttention)) or id(m) in inside_attention
            for m in owners
        )

    # ----------------------------------------------------------------- plan

    def _make_plan(self, example):
        """Probe the module: which layers run, their rules, axes and sizes."""
        _check_rows_independent(self.module)
        self.plan = _Plan(self.module, self.parameter_names, example)

    def _require_plan(self, what):
        if self.plan is None:
            raise RuntimeError(
                f"The hooks engine needs an example row before {what}: build it "
                "with select_engine(..., example=X[:1]) or call state() first."
            )
        return self.plan

    def bytes_per_row(self, n_outputs, itemsize):
        plan = self._require_plan("bytes_per_row")
        # The state, and about as much again for the forward activations,
        # the graph and the signals alive while it is built; the ghost
        # scratch counted against a full tile.
        return 2 * plan.numbers_per_row * itemsize + GHOST_SCRATCH * 8 // TILE_ROWS

    # ---------------------------------------------------------------- state

    def state(self, parameters, X, metric=None):
        """Ghost terms ``(A, D)`` and instantiated gradients of the rows ``X``."""
        if metric is not None:
            raise NotImplementedError(
                f"The {self.name!r} engine does not take a metric yet."
            )
        if self.plan is None:
            self._make_plan(X[:1])
        _check_rows_independent(self.module)
        return _build_state(self, parameters, X)

    def static(self, X, Y):
        return None

    # ------------------------------------------------------------- contract

    def contract(self, state_x, state_y, trace, static=None):
        """Instantiated Gram plus every ghost term: (n, m) or (n, m, O, O)."""
        G_x, G_y = state_x["inst"], state_y["inst"]
        total = None
        if G_x is not None:
            if trace:
                total = G_x.flatten(1) @ G_y.flatten(1).T
            else:
                total = torch.einsum("iak,jbk->ijab", G_x, G_y)
        for term, tx, ty in zip(self.plan.ghosts, state_x["ghost"], state_y["ghost"]):
            part = _ghost(term, tx, ty, "trace" if trace else "full")
            total = part if total is None else total.add_(part)
        return total

    def contract_vector(self, state_x, state_y, vectors, static=None):
        """``K[i, j] @ vectors[j]``: (n, m, O), ``v`` folded into Y's side first."""
        G_x, G_y = state_x["inst"], state_y["inst"]
        total = None
        if G_x is not None:
            folded = torch.einsum("jbk,jb->jk", G_y, vectors)
            total = torch.einsum("iak,jk->ija", G_x, folded)
        for term, tx, ty in zip(self.plan.ghosts, state_x["ghost"], state_y["ghost"]):
            part = _ghost(term, tx, ty, "vector", vectors)
            total = part if total is None else total.add_(part)
        return total

    def diagonal(self, state, X):
        """``sum_o |G_o(x)|^2`` per row, ghost layers by per-row position Grams."""
        G = state["inst"]
        n = state["n"]
        total = (G * G).sum(dim=(1, 2)) if G is not None else None
        for term, (A, D) in zip(self.plan.ghosts, state["ghost"]):
            P = D.shape[1]
            step = max(1, GHOST_SCRATCH // max(1, P * P))
            parts = []
            for r0 in range(0, n, step):
                a, d = A[r0 : r0 + step], D[r0 : r0 + step].flatten(2)
                signal = d @ d.transpose(1, 2)
                gram = _input_gram_rows(term, a).to(signal.dtype)
                parts.append((gram * signal).sum(dim=(1, 2)))
            part = torch.cat(parts)
            total = part if total is None else total + part
        return total

    # --------------------------------------------------------------- sketch

    def sketch_shapes(self, n_outputs):
        """Blocks of the instantiated ``vec G``, then ``(O h_out, h_in)`` per ghost.

        A ghost layer's gradient ``sum_p vec d_p (x) a_p`` is sketched as
        ``sum_p (u . vec d_p) (v . a_p)`` (a Kronecker sketch, linear in the
        sum); ``vec D`` longer than :data:`SKETCH_ROWS` is cut into blocks.
        """
        return [shape for shape, _ in self._pieces(n_outputs)]

    def sketch(self, state, X, piece, factors):
        """Piece ``piece`` of the rows' gradients, sketched: (n, m)."""
        _, (kind, index, start, stop) = self._pieces(state["n_outputs"])[piece]
        if kind == "inst":
            (projection,) = factors
            return state["inst"].flatten(1)[:, start:stop] @ projection
        term = self.plan.ghosts[index]
        A, D = state["ghost"][index]
        U, V = factors
        signals = D.flatten(2)[:, :, start:stop] @ U  # (n, P, m)
        inputs = V[A] if term.tokens else A @ V  # (n, P, m)
        return (signals * inputs).sum(dim=1)

    def _pieces(self, n_outputs):
        plan = self._require_plan("sketch_shapes")
        pieces = []
        total = n_outputs * plan.n_instantiated
        for start in range(0, total, SKETCH_ROWS):
            stop = min(start + SKETCH_ROWS, total)
            pieces.append(((stop - start,), ("inst", None, start, stop)))
        for index, term in enumerate(plan.ghosts):
            rows = n_outputs * term.h_out
            for start in range(0, rows, SKETCH_ROWS):
                stop = min(start + SKETCH_ROWS, rows)
                pieces.append(
                    ((stop - start, term.h_in), ("ghost", index, start, stop))
                )
        return pieces


# --------------------------------------------------------------------- plan


def _own_parameters(module):
    return dict(module.named_parameters(recurse=False))


class _Ghost:
    """One ghost term: a (layer, group) whose uses concatenate positions."""

    def __init__(self, key, h_in, h_out, tokens, positions):
        self.key, self.h_in, self.h_out = key, h_in, h_out
        self.tokens = tokens  # the input side is one-hot token ids
        self.positions = positions


class _Layer:
    """A hooked module: its rule, trained parameters and mode."""

    def __init__(self, module, prefix, names, rule):
        self.module, self.prefix, self.rule = module, prefix, rule
        self.names = names  # local name -> canonical full name (trained only)
        self.ghost = False
        self.calls = []  # per call: batch axes of (args, kwargs, outputs)


class _Plan:
    """What the probe forward learns about a module and its trained parameters."""

    def __init__(self, module, parameter_names, example):
        trained = set(parameter_names)
        canonical = {}  # id(parameter) -> its name in named_parameters()
        for name, p in module.named_parameters():
            canonical[id(p)] = name
        uses = {}  # canonical name -> owning modules
        for mod_name, mod in module.named_modules(remove_duplicate=False):
            for local, p in _own_parameters(mod).items():
                full = canonical[id(p)]
                if full in trained:
                    uses.setdefault(full, set()).add(id(mod))
        self.tied = {full for full, owners in uses.items() if len(owners) > 1}

        # Which modules run, with the shapes of their inputs and outputs at
        # two batch sizes: the axis that changes is the row axis.
        records = [_probe(module, example, rows) for rows in (2, 3)]
        called = records[0]
        prefixes = {id(m): name for name, m in module.named_modules()}
        modules = {id(m): m for m in module.modules()}
        parents = {}
        for name, m in module.named_modules():
            for child in m.children():
                parents.setdefault(id(child), id(m))

        layers = {}
        for mod_id, mod in modules.items():
            names = {
                local: canonical[id(p)]
                for local, p in _own_parameters(mod).items()
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
                layer = layers[owner] = _Layer(
                    modules[owner], prefixes[owner], {}, None
                )
            layer.names.update(names)
        for layer in layers.values():
            layer.rule = _rule(layer)

        outputs = records[0][id(module)][0]["outputs"]
        self.n_outputs = int(math.prod(outputs[0][1:])) if outputs else 1
        self.layers = []
        self.ghosts = []
        inst_sizes = {}
        numbers = activations = 0
        for mod_id, layer in layers.items():
            calls2, calls3 = records[0][mod_id], records[1][mod_id]
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
            activations += sum(
                _row_numbers(c, axes) for c, axes in zip(calls2, layer.calls)
            )
            self.layers.append(layer)
            terms = _kron_shapes(layer, calls2, self.n_outputs)
            tied = any(full in self.tied for full in layer.names.values())
            if terms and not tied and _ghost_is_cheaper(terms, self.n_outputs):
                layer.ghost = True
                for group, (h_in, h_out, P, tokens) in enumerate(terms):
                    self.ghosts.append(
                        _Ghost((id(layer.module), group), h_in, h_out, tokens, P)
                    )
                    # Token inputs are kept as ids: one number a position.
                    numbers += P * ((1 if tokens else h_in) + self.n_outputs * h_out)
            else:
                for local, full in layer.names.items():
                    inst_sizes[full] = _parameter(layer.module, local).numel()
        # One backward over O copies of each row (see _replicated_signals)
        # when there are several outputs: the forward activations are then
        # O times as many while a state is built.
        self.replicate = REPLICATE and self.n_outputs > 1
        if self.replicate:
            numbers += (self.n_outputs - 1) * activations
        self.inst_names = sorted(inst_sizes)
        self.inst_offsets = {}
        offset = 0
        for full in self.inst_names:
            self.inst_offsets[full] = (offset, offset + inst_sizes[full])
            offset += inst_sizes[full]
        self.n_instantiated = offset
        self.numbers_per_row = numbers + activations + self.n_outputs * offset


def _parameter(module, local):
    owner = module
    *path, leaf = local.split(".")
    for part in path:
        owner = getattr(owner, part)
    return getattr(owner, leaf)


def _rule(layer):
    mod = layer.module
    if isinstance(mod, _RULES) and set(layer.names) <= _RULE_PARAMETERS:
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


def _check_rows_independent(module):
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
                "kwargs": {k: _shape(v) for k, v in kwargs.items()},
                "outputs": [tuple(t.shape) for t in _tensors(output)],
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


def _shape(value):
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _tensors(output):
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


def _per_row(shape, axis):
    if shape is None or axis is None:
        return 0
    return math.prod(shape) // shape[axis]


def _row_numbers(call, axes):
    """Numbers per row of a call's inputs and outputs (kept while building)."""
    return sum(_per_row(s, a) for s, a in zip(call["args"], axes["args"])) + sum(
        _per_row(s, a) for s, a in zip(call["outputs"], axes["outputs"])
    )


def _kron_shapes(layer, calls, n_outputs):
    """``(h_in, h_out, P, tokens)`` per group of a Kronecker layer, or []."""
    mod, names = layer.module, layer.names
    trains_w, trains_b = "weight" in names, "bias" in names
    if layer.rule == "linear":
        h_in = (mod.in_features if trains_w else 0) + trains_b
        P = sum(
            _per_row(c["args"][0], a["args"][0]) // mod.in_features
            for c, a in zip(calls, layer.calls)
        )
        return [(h_in, mod.out_features, P, False)] if h_in else []
    if layer.rule == "conv":
        groups = mod.groups
        k = math.prod(mod.kernel_size) * mod.in_channels // groups
        h_in = (k if trains_w else 0) + trains_b
        P = sum(
            _per_row(c["outputs"][0], a["outputs"][0]) // mod.out_channels
            for c, a in zip(calls, layer.calls)
        )
        return [(h_in, mod.out_channels // groups, P, False)] * groups if h_in else []
    if layer.rule == "embedding":
        P = sum(
            _per_row(c["args"][0], a["args"][0]) for c, a in zip(calls, layer.calls)
        )
        return [(mod.num_embeddings, mod.embedding_dim, P, True)]
    return []


def _ghost_is_cheaper(terms, n_outputs):
    """``P^2 (h_in + O h_out) < O h_in h_out (1 + 2 P / T)`` over the groups.

    For token inputs the input Gram is one comparison per pair of
    positions, so ``h_in`` (the vocabulary) counts as 1 on the ghost side.
    """
    ghost = sum(
        P * P * ((1 if tokens else h_in) + n_outputs * h_out)
        for h_in, h_out, P, tokens in terms
    )
    inst = sum(
        n_outputs * h_in * h_out * (1 + 2 * P / TILE_ROWS)
        for h_in, h_out, P, _ in terms
    )
    return ghost < inst


# -------------------------------------------------------------------- state


class _Recorder:
    """Keeps, for this thread's forward, each hooked call's inputs and output.

    With ``copies > 1`` (the forward runs each row ``copies`` times, see
    :func:`_replicated_signals`) only the first copy of each row's inputs is
    kept, along the row axes the plan found.
    """

    def __init__(self, layers, copies):
        self.thread = threading.get_ident()
        self.active = True
        self.axes = {id(layer.module): layer.calls for layer in layers}
        self.copies = copies
        self.calls = {}  # id(module) -> list of (args, kwargs, outputs)

    def _keep(self, value, axis):
        if not isinstance(value, torch.Tensor):
            return value
        value = value.detach()
        if self.copies > 1 and axis is not None:
            first = torch.arange(0, value.shape[axis], self.copies, device=value.device)
            return value.index_select(axis, first)  # a new tensor: no clone
        # A clone: later in-place operations (relu_, x += shortcut) must not
        # change the kept inputs.
        return value.clone()

    def hook(self, mod, args, kwargs, output):
        if not self.active or threading.get_ident() != self.thread:
            return None
        calls = self.calls.setdefault(id(mod), [])
        axes = self.axes[id(mod)][len(calls)]
        kept_args = [self._keep(a, ax) for a, ax in zip(args, axes["args"])]
        kept_kwargs = {
            k: self._keep(v, axes["kwargs"].get(k)) for k, v in kwargs.items()
        }
        calls.append((kept_args, kept_kwargs, _tensors(output)))
        # Downstream gets a clone, so in-place operations there leave the
        # output we differentiate by untouched.
        if isinstance(output, torch.Tensor):
            return output.clone()
        if isinstance(output, tuple):
            return tuple(
                t.clone() if isinstance(t, torch.Tensor) else t for t in output
            )
        return None


def _record(engine, parameters, X, recorder):
    """One forward with hooks and one backward, under ``_MODULE_LOCK``.

    Returns the parameter leaves, the output, the hooked outputs and their
    signals; ``recorder`` keeps the hooked calls' inputs.
    """
    plan, module = engine.plan, engine.module
    copies = recorder.copies
    handles = [
        layer.module.register_forward_hook(recorder.hook, with_kwargs=True)
        for layer in plan.layers
    ]
    try:
        with torch.enable_grad():
            leaves = {
                name: parameters[name].detach().requires_grad_(True)
                if name in parameters
                else _parameter(module, name).detach().requires_grad_(True)
                for name in engine.parameter_names
            }
            rows = X.repeat_interleave(copies, dim=0) if copies > 1 else X
            out = functional_call(module, leaves, (rows,))
            recorder.active = False
            out = out.reshape(rows.shape[0], -1)
            outputs = [
                (layer, k, layer.calls[k]["outputs"][j], t)
                for layer in plan.layers
                for k, (_, _, ts) in enumerate(recorder.calls.get(id(layer.module), []))
                for j, t in enumerate(ts)
            ]
            kept = [t for *_, t in outputs]
            if copies > 1:
                signals = _replicated_signals(out, kept, [a for _, _, a, _ in outputs])
            else:
                signals = _signals(out, kept)
    finally:
        for h in handles:
            h.remove()
    return leaves, out, outputs, signals


def _build_state(engine, parameters, X):
    plan = engine.plan
    module = engine.module
    copies = plan.n_outputs if plan.replicate else 1
    recorder = _Recorder(plan.layers, copies)
    # functional_call swaps the module's parameters in place for the call:
    # two threads inside it at once would run on each other's checkpoints.
    with _MODULE_LOCK:
        leaves, out, outputs, signals = _record(engine, parameters, X, recorder)
    n = X.shape[0]
    n_outputs = out.shape[1]
    by_call = {}
    for (layer, k, _, _), D in zip(outputs, signals):
        by_call.setdefault((id(layer.module), k), []).append(D)

    dtype = out.dtype
    inst = (
        out.new_zeros(n, n_outputs, plan.n_instantiated)
        if plan.n_instantiated
        else None
    )
    ghost = {}
    for layer in plan.layers:
        calls = recorder.calls.get(id(layer.module), [])
        for k, (args, kwargs, _) in enumerate(calls):
            Ds = by_call[(id(layer.module), k)]
            axes = layer.calls[k]
            if layer.rule == "fallback":
                grads = _fallback(layer, args, kwargs, Ds, axes, leaves, module)
            else:
                D = Ds[0].movedim(axes["outputs"][0] + 1, 0)  # (n, O, ...)
                x = args[0].movedim(axes["args"][0], 0)
                if layer.ghost:
                    for group, (A, Dg) in enumerate(_kron(layer, x, D, dtype)):
                        ghost.setdefault((id(layer.module), group), []).append((A, Dg))
                    continue
                grads = _instantiate(layer, x, D, dtype)
            for full, g in grads.items():
                start, stop = plan.inst_offsets[full]
                inst[:, :, start:stop] += g.reshape(n, n_outputs, -1)
    ghosts = []
    for term in plan.ghosts:
        parts = ghost[term.key]
        A = parts[0][0] if len(parts) == 1 else torch.cat([a for a, _ in parts], 1)
        D = parts[0][1] if len(parts) == 1 else torch.cat([d for _, d in parts], 1)
        ghosts.append((A, D))
    return {"inst": inst, "ghost": ghosts, "n": n, "n_outputs": n_outputs}


def _replicated_signals(out, tensors, axes):
    """Signals from one backward over ``O`` copies of every row.

    Copy ``o`` of row ``i`` (row ``i O + o`` of the forward) is seeded with
    ``e_o``: one ordinary backward pass over an ``O`` times larger batch,
    in place of ``O`` passes over the rows (or a ``vmap`` of them, which
    loops where an operation has no batching rule, as convolution and
    pooling backward do). Returns ``(O, *Z.shape)`` per kept output, ``Z``
    with ``n`` rows on its row axis.
    """
    n_outputs = out.shape[1]
    n = out.shape[0] // n_outputs
    eye = torch.eye(n_outputs, dtype=out.dtype, device=out.device)
    wanted = [t for t in tensors if t.requires_grad]
    grads = iter(
        torch.autograd.grad(out, wanted, eye.repeat(n, 1), allow_unused=True)
        if wanted
        else ()
    )
    result = []
    for t, axis in zip(tensors, axes):
        g = next(grads) if t.requires_grad else None
        if g is None:
            g = t.new_zeros(t.shape)
        g = g.detach().movedim(axis, 0)
        g = g.reshape(n, n_outputs, *g.shape[1:]).transpose(0, 1)
        result.append(g.movedim(1, axis + 1))
    return result


def _signals(out, tensors):
    """``df_o / dZ`` for every kept output ``Z`` and output ``o``: (O, *Z.shape)."""
    n_outputs = out.shape[1]
    wanted = [t for t in tensors if t.requires_grad]
    grads = iter(())
    if wanted:
        eye = torch.eye(n_outputs, dtype=out.dtype, device=out.device)
        seeds = eye[:, None, :].expand(n_outputs, out.shape[0], n_outputs)
        try:
            with warnings.catch_warnings():  # attention has no batching rule
                warnings.filterwarnings("ignore", "There is a performance drop")
                grads = torch.autograd.grad(
                    out, wanted, seeds, is_grads_batched=True, allow_unused=True
                )
        except RuntimeError:  # an operation without a batching rule: one by one
            per_output = [
                torch.autograd.grad(
                    out, wanted, seeds[o], retain_graph=True, allow_unused=True
                )
                for o in range(n_outputs)
            ]
            grads = [
                None if parts[0] is None else torch.stack(parts)
                for parts in zip(*per_output)
            ]
        grads = iter(grads)
    result = []
    for t in tensors:
        g = next(grads) if t.requires_grad else None
        if g is None:
            g = t.new_zeros(n_outputs, *t.shape)
        result.append(g.detach())
    return result


def _positions(x, D, features):
    """Inputs (n, P, features) and signals (n, P, O, h) at every position."""
    n, n_outputs = D.shape[0], D.shape[1]
    A = x.reshape(n, -1, features)
    h = D.shape[-1]
    return A, D.reshape(n, n_outputs, -1, h).transpose(1, 2)


def _unfold(layer, x, D):
    """A conv layer's patches (n, P, C_in k) and signals (n, P, O, C_out).

    Patches come from strided views of the padded input (one copy), in
    ``F.unfold``'s order ``(C_in, k_h, k_w)``: the same numbers, several times
    faster than ``im2col`` on the CPU for small images.
    """
    mod = layer.module
    n, n_outputs = D.shape[0], D.shape[1]
    mode = "constant" if mod.padding_mode == "zeros" else mod.padding_mode
    x = F.pad(x, mod._reversed_padding_repeated_twice, mode=mode)
    kernel, dilation, stride = mod.kernel_size, mod.dilation, mod.stride
    if isinstance(mod, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, dilation, stride = (1, *kernel), (1, *dilation), (1, *stride)
    (kh, kw), (dh, dw), (sh, sw) = kernel, dilation, stride
    windows = x.unfold(2, (kh - 1) * dh + 1, sh).unfold(3, (kw - 1) * dw + 1, sw)
    windows = windows[..., ::dh, ::dw]  # (n, C, out_h, out_w, kh, kw)
    A = windows.permute(0, 2, 3, 1, 4, 5).reshape(n, -1, x.shape[1] * kh * kw)
    D = D.reshape(n, n_outputs, mod.out_channels, -1).permute(0, 3, 1, 2)
    return A, D


def _augment(A, trains_weight, trains_bias):
    parts = ([A] if trains_weight else []) + (
        [A.new_ones(*A.shape[:-1], 1)] if trains_bias else []
    )
    return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


def _kron(layer, x, D, dtype):
    """Ghost terms ``(A, D)`` of one call, one per group."""
    mod, names = layer.module, layer.names
    trains_w, trains_b = "weight" in names, "bias" in names
    if layer.rule == "embedding":
        tokens = x.reshape(x.shape[0], -1)
        _, Dp = _positions(x.to(dtype), D, 1)
        if mod.padding_idx is not None:  # no gradient reaches padding rows
            Dp = Dp * (tokens != mod.padding_idx)[:, :, None, None].to(dtype)
        return [(tokens, Dp)]
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


def _instantiate(layer, x, D, dtype):
    """Per-example gradients of one call, in each parameter's own layout."""
    mod, names = layer.module, layer.names
    n, n_outputs = D.shape[0], D.shape[1]
    grads = {}
    if layer.rule == "embedding":
        tokens = x.reshape(n, -1)
        _, Dp = _positions(x.to(dtype), D, 1)  # (n, P, O, dim)
        if mod.padding_idx is not None:
            Dp = Dp * (tokens != mod.padding_idx)[:, :, None, None].to(dtype)
        flat = (
            tokens + mod.num_embeddings * torch.arange(n, device=tokens.device)[:, None]
        ).reshape(-1)
        weight = Dp.new_zeros(n * mod.num_embeddings, n_outputs, mod.embedding_dim)
        weight.index_add_(0, flat, Dp.reshape(-1, n_outputs, mod.embedding_dim))
        grads[names["weight"]] = weight.view(n, mod.num_embeddings, n_outputs, -1)
        grads[names["weight"]] = grads[names["weight"]].transpose(1, 2)
        return grads
    if layer.rule == "norm":
        return _norm_gradients(layer, x, D)
    if layer.rule == "linear":
        A, Dp = _positions(x, D, mod.in_features)
        if "weight" in names:
            grads[names["weight"]] = torch.einsum("npoh,npa->noha", Dp, A)
        if "bias" in names:
            grads[names["bias"]] = Dp.sum(dim=1)
        return grads
    A, Dp = _unfold(layer, x, D)
    g = mod.groups
    c_in, c_out = A.shape[-1] // g, mod.out_channels // g
    if "weight" in names:
        grads[names["weight"]] = torch.cat(
            [
                torch.einsum(
                    "npoh,npa->noha",
                    Dp[..., k * c_out : (k + 1) * c_out],
                    A[..., k * c_in : (k + 1) * c_in],
                )
                for k in range(g)
            ],
            dim=2,
        )
    if "bias" in names:
        grads[names["bias"]] = Dp.sum(dim=1)
    return grads


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


def _fallback(layer, args, kwargs, Ds, axes, leaves, root):
    """Per-example gradients of one layer's parameters by ``torch.func``.

    ``vmap`` over rows of a vector-Jacobian product of that layer alone, at
    its kept inputs, with the kept output signals as cotangents.
    """
    mod = layer.module
    params = {
        local: leaves[full].detach() if full in leaves else _parameter(mod, local)
        for local, full in layer.names.items()
    }
    arg_axes, kwarg_axes = axes["args"], axes["kwargs"]
    out_axes = axes["outputs"]
    kw_names = [k for k, ax in kwarg_axes.items() if ax is not None]
    kw_fixed = {k: v for k, v in kwargs.items() if k not in kw_names}
    row_args = [a if ax is not None else None for a, ax in zip(args, arg_axes)]
    fixed_args = [a if ax is None else None for a, ax in zip(args, arg_axes)]

    def single(row_args, row_kwargs, row_signals):
        def f(p):
            call_args = [
                fixed if ax is None else a.unsqueeze(ax)
                for a, fixed, ax in zip(row_args, fixed_args, arg_axes)
            ]
            call_kwargs = dict(kw_fixed)
            for k, v in row_kwargs.items():
                call_kwargs[k] = v.unsqueeze(kwarg_axes[k])
            outputs = _tensors(functional_call(mod, p, tuple(call_args), call_kwargs))
            return tuple(t.squeeze(ax) for t, ax in zip(outputs, out_axes))

        _, pullback = vjp(f, params)
        (grads,) = vmap(pullback)(tuple(row_signals))
        return grads

    in_dims = (
        list(arg_axes),
        {k: kwarg_axes[k] for k in kw_names},
        tuple(ax + 1 for ax in out_axes),
    )
    with _MODULE_LOCK, TORCH_FUNC_LOCK, warnings.catch_warnings():
        # vmap over attention says it loops where it has no batching rule.
        warnings.filterwarnings("ignore", "There is a performance drop")
        grads = vmap(single, in_dims=in_dims)(
            row_args, {k: kwargs[k] for k in kw_names}, tuple(Ds)
        )
    return {layer.names[local]: g for local, g in grads.items()}


# ---------------------------------------------------------------- contract


def _input_gram_rows(term, A):
    """Per row, the Gram of its positions' inputs: (n, P, P)."""
    if term.tokens:
        return A[:, :, None] == A[:, None, :]
    return A @ A.transpose(1, 2)


def _input_gram(term, A_x, A_y):
    """``(a_{i,p} . a_{j,q})`` as an (n, P, m, Q) tensor."""
    n, P = A_x.shape[0], A_x.shape[1]
    m, Q = A_y.shape[0], A_y.shape[1]
    if term.tokens:
        return (A_x.reshape(-1, 1) == A_y.reshape(1, -1)).view(n, P, m, Q)
    return (A_x.reshape(n * P, -1) @ A_y.reshape(m * Q, -1).T).view(n, P, m, Q)


def _ghost(term, tx, ty, mode, vectors=None):
    """One ghost term between two blocks, in row sub-blocks of fixed size."""
    (A_x, D_x), (A_y, D_y) = tx, ty
    n, P, n_outputs, _ = D_x.shape
    m, Q = D_y.shape[0], D_y.shape[1]
    per_pair = P * Q * (n_outputs * n_outputs if mode == "full" else n_outputs)
    sy = min(m, max(1, GHOST_SCRATCH // per_pair))
    sx = min(n, max(1, GHOST_SCRATCH // (per_pair * sy)))
    if mode == "vector":
        # Fold v into Y's signals first: (m, Q, h).
        D_y = torch.einsum("jqbh,jb->jqh", D_y, vectors)
    if term.tokens:
        pairs = _token_matches(A_x.reshape(-1), A_y.reshape(-1))
        if pairs[0].numel() * SPARSE_TOKENS < n * P * m * Q:
            return _sparse_tokens(pairs, D_x, D_y, m, mode)
    if mode == "trace" and P == 1 and Q == 1:  # 7.3's rule, no sub-blocks
        gram = _input_gram(term, A_x, A_y).view(n, m).to(D_x.dtype)
        return gram.mul_(D_x.reshape(n, -1) @ D_y.reshape(m, -1).T)
    shape = (n, m) if mode == "trace" else (n, m, n_outputs)
    if mode == "full":
        shape = (n, m, n_outputs, n_outputs)
    result = D_x.new_zeros(shape)
    for i0 in range(0, n, sx):
        i1 = min(i0 + sx, n)
        for j0 in range(0, m, sy):
            j1 = min(j0 + sy, m)
            gram = _input_gram(term, A_x[i0:i1], A_y[j0:j1]).to(D_x.dtype)
            dx, dy = D_x[i0:i1], D_y[j0:j1]
            a, b = i1 - i0, j1 - j0
            if mode == "trace":
                signal = (dx.reshape(a * P, -1) @ dy.reshape(b * Q, -1).T).view(
                    a, P, b, Q
                )
                result[i0:i1, j0:j1] = (gram * signal).sum(dim=(1, 3))
            elif mode == "vector":
                h = dx.shape[-1]
                signal = (dx.reshape(-1, h) @ dy.reshape(-1, h).T).view(
                    a, P, n_outputs, b, Q
                )
                result[i0:i1, j0:j1] = torch.einsum("ipjq,ipajq->ija", gram, signal)
            else:
                h = dx.shape[-1]
                signal = (dx.reshape(-1, h) @ dy.reshape(-1, h).T).view(
                    a, P, n_outputs, b, Q, n_outputs
                )
                result[i0:i1, j0:j1] = torch.einsum("ipjq,ipajqb->ijab", gram, signal)
    return result


def _token_matches(tokens_x, tokens_y):
    """Every pair ``(r, c)`` of equal tokens: flat positions of X and of Y.

    Sorting Y's tokens and searching X's gives each ``r`` its run of equal
    tokens, so the pairs cost their number, not ``len(x) * len(y)``; their
    order depends on the tokens alone (deterministic sums).
    """
    order = torch.argsort(tokens_y, stable=True)
    lo = torch.searchsorted(tokens_y[order], tokens_x, side="left")
    counts = torch.searchsorted(tokens_y[order], tokens_x, side="right") - lo
    rows = torch.repeat_interleave(
        torch.arange(len(tokens_x), device=tokens_x.device), counts
    )
    first = torch.cumsum(counts, 0) - counts  # each r's first pair
    t = torch.arange(len(rows), device=tokens_x.device)
    return rows, order[t - first[rows] + lo[rows]]


def _sparse_tokens(pairs, D_x, D_y, m, mode):
    """An embedding's ghost term summed over its matching token pairs only.

    ``K[i, j] += d_{i,p} . d'_{j,q}`` for every ``t_{i,p} = t'_{j,q}``, in
    pieces of at most :data:`GHOST_SCRATCH` numbers, added in pair order.
    """
    n, P, n_outputs, h = D_x.shape
    Q = D_y.shape[1]
    rows, columns = pairs
    dx = D_x.reshape(n * P, n_outputs, h)
    dy = D_y.reshape(-1, n_outputs, h) if mode != "vector" else D_y.reshape(-1, h)
    extra = {"trace": (), "vector": (n_outputs,), "full": (n_outputs, n_outputs)}
    result = D_x.new_zeros(n * m, *extra[mode])
    step = max(1, GHOST_SCRATCH // (n_outputs * n_outputs * h))
    for t0 in range(0, len(rows), step):
        r, c = rows[t0 : t0 + step], columns[t0 : t0 + step]
        if mode == "trace":
            values = (dx[r] * dy[c]).sum(dim=(1, 2))
        elif mode == "vector":
            values = torch.einsum("tah,th->ta", dx[r], dy[c])
        else:
            values = torch.einsum("tah,tbh->tab", dx[r], dy[c])
        result.index_add_(0, r // P * m + c // Q, values)
    return result.view(n, m, *extra[mode])
