"""Jacobian engines: how a block of rows becomes a tangent kernel.

An engine turns a block of rows into a *state* at one point ``w`` of
parameter space and contracts two states into that block's tangent kernel
``J_w(X) J_w(Y)^T``. The blocked loops never need to know what a state is:
they call only the methods of :class:`Engine`. :data:`ENGINES` is the one
dispatch table; ``"auto"`` takes the first engine in it that *covers* the
module (:meth:`Engine.covers`: by default, that supports it) and, for a
metric, supports one.

Costs per checkpoint, for ``n`` rows against ``m``, ``O`` outputs and ``d``
trainable parameters (an MLP with widths ``h_0, ..., h_L = O``):

``"structured"`` (an ``nn.Sequential`` of Linear layers, dropout and elementwise
activations)
    FLOPs ``2 n m sum_l (h_{l-1} + 1 + O h_l)``; memory per row
    ``sum_l (h_{l-1} + 1 + O h_l)`` numbers. No Jacobian ever exists. In a
    metric (Adam's path kernel): FLOPs ``2 n m sum_l h_l (h_{l-1} + 1 + O)``
    (the output layer, identity signals: ``2 n m (h_{L-1} + 1)``), ``O``
    times fewer than ``"jacobian"``; the same memory per row.
``"hooks"`` (Linear, Conv1d/2d, Embedding, norm and attention layers in any
module graph)
    FLOPs ``2 n m`` times, per layer at ``P`` positions, the smaller of
    ``P^2 (h_in + O h_out)`` (ghost form) and ``O h_in h_out``
    (instantiated gradient); attention's four projections count as such
    layers; layers without a rule pay their own per-example gradients only.
    Memory per row: per layer ``P (h_in + O h_out)`` or ``O h_in h_out``
    numbers. In a metric (Adam)
    a ghost layer pays the smaller of ``P^2 (h_in h_out + O h_out)``
    (pairwise) and ``O h_in h_out``; embeddings are unchanged.
``"jacobian"`` (any module)
    FLOPs ``2 n m O d`` plus the Jacobians; memory per row ``O d`` numbers.
    The same in a metric.
``"ntk_vp"`` (any module)
    FLOPs about ``6 n m O d``; memory ``O`` numbers per row and ``d + n O``
    per column of a batch. For when ``O d`` numbers per row do not fit.
    In a metric, ``d`` products more per column.

Random features (``sketch``, ``m`` of them, ``n`` rows, per checkpoint): the
structured engine's Kronecker sketch takes ``2 n m sum_l (O h_l + h_{l-1} +
1)`` FLOPs (in a metric ``2 n m sum_l h_l (h_{l-1} + 1 + O)``) and ``m
sum_l (O h_l + h_{l-1} + 1)`` random numbers; the Jacobian engine's
Gaussian projection ``2 n m O d`` FLOPs and ``m O d`` random numbers;
``"ntk_vp"`` projects with ``O m`` Jacobian-vector products.

To add an engine (docs/design.md, section 7): subclass :class:`Engine` in a
module of its own, with the constructor ``(module, parameter_names, *,
example=None, metric=False)`` and every abstract method; override
:meth:`Engine.covers` if ``"auto"`` should pick it for fewer modules than it
supports; set ``supports_metric`` if :meth:`Engine.state` takes a metric.
Then add it to :data:`ENGINES` (before the generic ones if ``"auto"`` should
prefer it): ``select_engine`` needs no edit. ``tests/test_engines.py``
checks it against the autograd reference.
"""

from ._base import TORCH_FUNC_LOCK, Engine
from ._hooks import HookEngine
from ._jacobian import JacobianEngine
from ._ntk_vp import NTKVectorProductEngine
from ._structured import StructuredEngine

__all__ = [
    "ENGINES",
    "Engine",
    "HookEngine",
    "JacobianEngine",
    "NTKVectorProductEngine",
    "StructuredEngine",
    "TORCH_FUNC_LOCK",
    "select_engine",
]

#: Engine classes by name, in the order ``engine="auto"`` tries them.
ENGINES = {
    "structured": StructuredEngine,
    "hooks": HookEngine,
    "jacobian": JacobianEngine,
    "ntk_vp": NTKVectorProductEngine,
}


def select_engine(engine, module, parameter_names, example=None, metric=False):
    """Resolve the ``engine`` option to an engine bound to ``module``.

    Parameters
    ----------
    engine : {"auto", "structured", "hooks", "jacobian", "ntk_vp"}
        "auto" picks the first engine in :data:`ENGINES` that covers the
        module (and, for a metric, supports one): the structured engine for
        Linear/elementwise ``nn.Sequential`` networks, the layer-hook engine
        for modules whose parametrised layers all have rules (Linear,
        Conv1d/2d, Embedding, LayerNorm, GroupNorm, BatchNorm,
        MultiheadAttention), the generic Jacobian engine otherwise.
    module : torch.nn.Module
    parameter_names : iterable of str
        The parameters the kernel is taken with respect to.
    example : torch.Tensor, default=None
        Some rows of the input, for engines that learn the shapes of the
        work from a probe (the hooks engine): then ``bytes_per_row`` and
        ``sketch_shapes`` are known before the first state.
    metric : bool, default=False
        Whether states will be taken in a metric (the path of a
        preconditioned solver such as Adam): "auto" then picks among the
        engines that support one; engines whose memory per row depends on
        it (the hooks engine) are told.

    Returns
    -------
    engine : Engine

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel.engines import select_engine
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(),
    ...                           torch.nn.Linear(3, 1))
    >>> select_engine("auto", mlp, ["0.weight"]).name
    'structured'
    >>> cnn = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.Flatten(),
    ...                           torch.nn.Linear(4, 1))
    >>> select_engine("auto", cnn, ["0.weight"]).name
    'hooks'
    >>> select_engine("auto", torch.nn.Bilinear(2, 2, 1), ["weight"]).name
    'jacobian'
    """
    if engine == "auto":
        engine = next(
            name
            for name, cls in ENGINES.items()
            if cls.covers(module) and (cls.supports_metric or not metric)
        )
    if engine not in ENGINES:
        raise ValueError(
            f"The 'engine' parameter must be 'auto' or one of {sorted(ENGINES)}; "
            f"got {engine!r} instead."
        )
    cls = ENGINES[engine]
    if not cls.supports(module):
        raise ValueError(
            f"The {engine!r} engine does not support {type(module).__name__} "
            f"(it needs {cls.supported_modules}); use engine='auto' or 'jacobian'."
        )
    if metric and not cls.supports_metric:
        raise ValueError(
            f"The {engine!r} engine cannot take the path kernel of a "
            "preconditioned solver (Adam keeps a per-parameter step size); use "
            "engine='auto' or "
            + repr(next(n for n, c in ENGINES.items() if c.supports_metric))
            + "."
        )
    return cls(module, list(parameter_names), example=example, metric=metric)
