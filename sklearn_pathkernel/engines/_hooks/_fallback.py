"""The layer-hook engine's fallback for a layer without a rule.

Any parametrised module without a rule (``_rules.py``,
``_attention.py``) gets per-example gradients of its own parameters by
``torch.func``: per-example vector-Jacobian products of that
layer alone on its kept inputs, with the kept signals as cotangents; only
that layer pays (docs/design.md, section 7.6).
"""

import warnings

from torch.func import functional_call, vjp, vmap

from .._base import TORCH_FUNC_LOCK
from ._plan import output_tensors, parameter_at

#: torch's note that ``vmap`` loops the attention core (scaled dot-product
#: attention has no batching rule), which the fallback meets for every
#: attention layer whose options have no rule (``add_bias_kv``,
#: ``add_zero_attn``): known, harmless, and the price ``_attention.py``
#: states for those options.
LOOPED_ATTENTION = (
    "There is a performance drop because we have not yet implemented the "
    r"batching rule for aten::_scaled_dot_product_\w+"
)


def quiet_looped_attention():
    """Ignore :data:`LOOPED_ATTENTION`, process-wide, unless already ignored.

    Called on the caller's thread whenever a hooks engine is built (again,
    should a ``warnings.catch_warnings()`` block have restored the filters
    since), never on the workers that build states: before Python 3.14
    ``warnings.catch_warnings()`` or ``filterwarnings`` there would change
    the process-wide filters under every other thread, so one call could
    drop or restore another thread's filters. Other warnings of the
    fallback's ``vmap`` (operations of a user's layer without a batching
    rule) reach the user, as they do through the Jacobian engine.
    """
    for action, message, *_ in warnings.filters:
        if action == "ignore" and message and message.pattern == LOOPED_ATTENTION:
            return
    warnings.filterwarnings("ignore", LOOPED_ATTENTION, UserWarning)


def fallback_gradients(layer, args, kwargs, Ds, axes, leaves, root):
    """Per-example gradients of one layer's parameters by ``torch.func``.

    ``vmap`` over rows of a vector-Jacobian product of that layer alone, at
    its kept inputs, with the kept output signals as cotangents. The caller
    holds ``TORCH_FUNC_LOCK`` (reentrant) already: ``functional_call``
    swaps the layer's parameters in place.
    """
    mod = layer.module
    params = {
        local: leaves[full].detach() if full in leaves else parameter_at(mod, local)
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
            outputs = output_tensors(
                functional_call(mod, p, tuple(call_args), call_kwargs)
            )
            return tuple(t.squeeze(ax) for t, ax in zip(outputs, out_axes))

        _, pullback = vjp(f, params)
        (grads,) = vmap(pullback)(tuple(row_signals))
        return grads

    in_dims = (
        list(arg_axes),
        {k: kwarg_axes[k] for k in kw_names},
        tuple(ax + 1 for ax in out_axes),
    )
    # No warnings.catch_warnings() on this worker thread: the engine's
    # constructor ignored the looped attention's warning once, on the
    # caller's thread (quiet_looped_attention).
    with TORCH_FUNC_LOCK:
        grads = vmap(single, in_dims=in_dims)(
            row_args, {k: kwargs[k] for k in kw_names}, tuple(Ds)
        )
    return {layer.names[local]: g for local, g in grads.items()}
