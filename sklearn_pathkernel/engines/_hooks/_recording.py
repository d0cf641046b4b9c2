"""The layer-hook engine's recording: one forward with hooks, then backward.

Forward hooks keep each parametrised layer's input ``A`` (and its output
``Z``); a backward pass ``vmap``-ed over the ``O`` seeds ``e_o`` gives
every layer's output gradient ``D = df_o/dZ`` for all outputs at once
(rows are independent, so the gradient of the row-summed output with
respect to ``Z`` holds every row's signals). The rules of ``_rules.py``
(or ``_attention.py``, ``_fallback.py``) then turn each call's ``A`` and
``D`` into the state: ghost terms and instantiated gradients
(docs/design.md, section 7.6).
"""

import threading

import torch
from torch.func import functional_call

from .._base import TORCH_FUNC_LOCK, output_vectors
from . import _attention
from ._fallback import fallback_gradients
from ._metric import instantiate_term
from ._plan import output_tensors, parameter_at
from ._rules import instantiate, kron, kron_metric


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
        calls.append((kept_args, kept_kwargs, output_tensors(output)))
        # Downstream gets a clone, so in-place operations there leave the
        # output we differentiate by untouched.
        if isinstance(output, torch.Tensor):
            return output.clone()
        if isinstance(output, tuple):
            return tuple(
                t.clone() if isinstance(t, torch.Tensor) else t for t in output
            )
        return None


def _record(engine, parameters, X, recorder, vectors=None):
    """One forward with hooks and one backward, under ``TORCH_FUNC_LOCK``.

    Returns the parameter leaves, the output, the hooked outputs and their
    signals; ``recorder`` keeps the hooked calls' inputs. With ``vectors``
    (n, O) the backward is seeded with them: one signal, ``vectors . f``.
    """
    plan, module = engine.plan, engine.module
    copies = recorder.copies
    handles = [
        layer.module.register_forward_hook(recorder.hook, with_kwargs=True)
        for layer in plan.layers
    ]
    try:
        with torch.enable_grad():
            trained = set(engine.parameter_names)
            leaves = {
                name: parameters[name].detach().requires_grad_(True)
                if name in parameters
                else parameter_at(module, name).detach().requires_grad_(True)
                for name in engine.parameter_names
            }
            # Parameters held fixed at a value of their own (a frozen layer at
            # a checkpoint): in the forward, and for the rules that read a
            # layer's parameters (the fallback, attention), without gradients.
            leaves.update(
                (name, p.detach())
                for name, p in parameters.items()
                if name not in trained
            )
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
            if vectors is not None:
                signals = _seeded_signals(out, kept, output_vectors(vectors, out))
            elif copies > 1:
                signals = _replicated_signals(out, kept, [a for _, _, a, _ in outputs])
            else:
                signals = _signals(out, kept)
    finally:
        for h in handles:
            h.remove()
    return leaves, out, outputs, signals


def build_state(engine, parameters, X, metric=None, vectors=None):
    """The rows' state: instantiated gradients ``(n, O, k)`` and ghost terms.

    With ``vectors`` (n, O), the state of the one output ``vectors . f``
    (``O = 1``), from one backward pass seeded with them.

    With a ``metric`` (name -> positive tensor) every instantiated gradient
    is scaled by its ``sqrt``, an embedding's signals by its tokens' rows,
    and each other ghost term takes its ``metric_form`` (``_metric.py``):
    ``(A, D, S)`` kept pairwise, or ``sqrt(S) * G`` instantiated;
    ``"forms"`` says which, per term (None without a metric).
    """
    plan = engine.plan
    replicated = plan.signals == "replicated" and vectors is None
    copies = plan.n_outputs if replicated else 1
    recorder = _Recorder(plan.layers, copies)
    # functional_call swaps the module's parameters in place for the call:
    # one lock with every other functional forward (engines/_base.py).
    with TORCH_FUNC_LOCK:
        leaves, out, outputs, signals = _record(
            engine, parameters, X, recorder, vectors
        )
    n = X.shape[0]
    n_outputs = out.shape[1] if vectors is None else 1
    by_call = {}  # (id(module), call) -> the signals of its outputs
    for (layer, k, _, _), D in zip(outputs, signals):
        by_call.setdefault((id(layer.module), k), []).append(D)
    roots = None
    if metric is not None:
        roots = {
            full: metric[full].to(device=out.device, dtype=out.dtype).sqrt()
            for layer in plan.layers
            for full in layer.names.values()
        }
    rows = (n, n_outputs)
    grads, ghost = _apply_rules(
        engine, recorder, by_call, leaves, roots, out.dtype, rows
    )
    inst = _concatenate(plan, grads, out, n, n_outputs)
    ghosts = _ghost_terms(plan, ghost, metric, out.dtype)
    forms = None
    if metric is not None:
        forms = tuple(term.metric_form for term in plan.ghosts)
    return {
        "inst": inst,
        "ghost": ghosts,
        "forms": forms,
        "n": n,
        "n_outputs": n_outputs,
    }


def _apply_rules(engine, recorder, by_call, leaves, roots, dtype, rows):
    """Every recorded call through its layer's rule.

    Returns the instantiated gradients by full name, ``(n, O, numel)``
    (``rows`` is ``(n, O)``) summed over calls, and the ghost terms'
    ``(A, D)`` by ``(id(module), group)``, one per call.
    """
    n, n_outputs = rows
    grads_by_name = {}
    ghost = {}
    for layer in engine.plan.layers:
        calls = recorder.calls.get(id(layer.module), [])
        for k, (args, kwargs, _) in enumerate(calls):
            Ds = by_call[(id(layer.module), k)]
            terms, grads = _call_rule(
                layer,
                args,
                kwargs,
                Ds,
                layer.calls[k],
                leaves,
                engine.module,
                dtype,
                roots,
            )
            for group, (A, Dg) in enumerate(terms):
                ghost.setdefault((id(layer.module), group), []).append((A, Dg))
            for full, g in grads.items():
                g = g.reshape(n, n_outputs, -1)
                total = grads_by_name.get(full)
                grads_by_name[full] = g if total is None else total + g
    return grads_by_name, ghost


def _call_rule(layer, args, kwargs, Ds, axes, leaves, module, dtype, roots):
    """One call through its layer's rule: ``(ghost terms, gradients by name)``.

    A ghost layer gives its ``(A, D)`` per group and no gradients; any other
    its per-example gradients (``sqrt(S) * G`` with ``roots``) and no terms.
    """
    if layer.rule == "fallback":
        with TORCH_FUNC_LOCK:
            grads = fallback_gradients(layer, args, kwargs, Ds, axes, leaves, module)
        if roots is not None:
            grads = {full: g * roots[full] for full, g in grads.items()}
        return [], grads
    if layer.rule == "attention":
        call = (layer, args, kwargs, Ds, axes, leaves)
        if layer.ghost:
            return _attention.kron(*call), {}
        return [], _attention.instantiate(*call, roots)
    D = Ds[0].movedim(axes["outputs"][0] + 1, 0)  # (n, O, ...)
    x = args[0].movedim(axes["args"][0], 0)
    if layer.ghost:
        return kron(layer, x, D, dtype, roots), {}
    return [], instantiate(layer, x, D, dtype, roots)


def _ghost_terms(plan, ghost, metric, dtype):
    """Each ghost term's calls concatenated along positions, in its form.

    Without a ``metric`` every term is ``(A, D)``; in one, its
    ``metric_form`` (:func:`_in_metric`).
    """
    ghosts = []
    for term in plan.ghosts:
        parts = ghost[term.key]
        A = parts[0][0] if len(parts) == 1 else torch.cat([a for a, _ in parts], 1)
        D = parts[0][1] if len(parts) == 1 else torch.cat([d for _, d in parts], 1)
        ghosts.append((A, D))
    if metric is None:
        return ghosts
    return [
        _in_metric(term, A, D, metric, dtype)
        for term, (A, D) in zip(plan.ghosts, ghosts)
    ]


def _concatenate(plan, grads, out, n, n_outputs):
    """The instantiated gradients as one (n, O, k) matrix, by one copy.

    Columns in ``plan.inst_offsets``' order; a parameter no call reached
    (its layer did not run on these rows) is zero.
    """
    if not plan.n_instantiated:
        return None
    parts = []
    for full in plan.inst_names:
        start, stop = plan.inst_offsets[full]
        g = grads.get(full)
        parts.append(out.new_zeros(n, n_outputs, stop - start) if g is None else g)
    return parts[0].contiguous() if len(parts) == 1 else torch.cat(parts, dim=2)


def _in_metric(term, A, D, metric, dtype):
    """One ghost term in its ``metric_form`` (an embedding's is scaled already)."""
    if term.metric_form == "ghost":
        return A, D
    S = kron_metric(term.layer, term.group, metric).to(device=D.device, dtype=dtype)
    if term.metric_form == "pairwise":
        return A, D, S
    return instantiate_term(A, D, S.sqrt())


def _replicated_signals(out, tensors, axes):
    """Signals from one backward over ``O`` copies of every row.

    Copy ``o`` of row ``i`` (row ``i O + o`` of the forward) is seeded with
    ``e_o``: one ordinary backward pass over an ``O`` times larger batch,
    in place of a ``vmap`` over ``O`` seeds (``SIGNALS = "replicated"``;
    slower on the CPU: the forward runs ``O`` times). Returns
    ``(O, *Z.shape)`` per kept output, ``Z`` with ``n`` rows on its row axis.
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


def _seeded_signals(out, tensors, vectors):
    """``d(vectors . f)/dZ`` for every kept output ``Z``: (1, *Z.shape).

    One ordinary backward pass seeded with the per-row ``vectors`` (n, O).
    """
    wanted = [t for t in tensors if t.requires_grad]
    grads = iter(
        torch.autograd.grad(out, wanted, vectors.to(out.dtype), allow_unused=True)
        if wanted
        else ()
    )
    result = []
    for t in tensors:
        g = next(grads) if t.requires_grad else None
        result.append((t.new_zeros(t.shape) if g is None else g.detach()).unsqueeze(0))
    return result


def _signals(out, tensors):
    """``df_o / dZ`` for every kept output ``Z`` and output ``o``: (O, *Z.shape).

    One backward ``vmap``-ed over the ``O`` seeds, the forward run once;
    operations without a batching rule (convolution and pooling backward
    on the CPU) loop inside it. Measured on the CNN of ``bench_hooks.py``
    (a) it builds a state about 1.5x faster than the replicated backward
    and no slower than ``O`` separate backward passes, with fewer, larger
    operations than the latter (which matters on a loaded machine).
    """
    n_outputs = out.shape[1]
    wanted = [t for t in tensors if t.requires_grad]
    grads = iter(())
    if wanted:
        eye = torch.eye(n_outputs, dtype=out.dtype, device=out.device)
        seeds = eye[:, None, :].expand(n_outputs, out.shape[0], n_outputs)
        try:
            # Where an operation has no batching rule, the batched backward
            # loops; torch says so ("There is a performance drop ...") only
            # when its debug switch asks for it
            # (torch._C._debug_only_display_vmap_fallback_warnings), so no
            # filter here: warnings.catch_warnings() would change the
            # process-wide filters from this worker thread before Python 3.14.
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
