"""Jacobian engines: how a block of rows becomes a tangent kernel.

An engine turns a block of rows into a *state* at one point ``w`` of
parameter space and contracts two states into that block's tangent kernel
``J_w(X) J_w(Y)^T``. The blocked loops never need to know what a state is:
they call only the methods of :class:`Engine`. :data:`ENGINES` is the one
dispatch table; ``"auto"`` takes the first engine in it that supports the
module.

Costs per checkpoint, for ``n`` rows against ``m``, ``O`` outputs and ``d``
trainable parameters (an MLP with widths ``h_0, ..., h_L = O``):

``"structured"`` (an ``nn.Sequential`` of Linear layers and elementwise
activations)
    FLOPs ``2 n m sum_l (h_{l-1} + 1 + O h_l)``; memory per row
    ``sum_l (h_{l-1} + 1 + O h_l)`` numbers. No Jacobian ever exists.
``"jacobian"`` (any module)
    FLOPs ``2 n m O d`` plus the Jacobians; memory per row ``O d`` numbers.
``"ntk_vp"`` (any module)
    FLOPs about ``6 n m O d``; memory ``O`` numbers per row and ``d + n O``
    per column of a batch. For when ``O d`` numbers per row do not fit.

Random features (``sketch``, ``m`` of them, ``n`` rows, per checkpoint): the
structured engine's Kronecker sketch takes ``2 n m sum_l (O h_l + h_{l-1} +
1)`` FLOPs and ``m sum_l (O h_l + h_{l-1} + 1)`` random numbers; the
Jacobian engine's Gaussian projection ``2 n m O d`` FLOPs and ``m O d``
random numbers; ``"ntk_vp"`` projects with ``O m`` Jacobian-vector products.

To add an engine (docs/design.md, section 7): subclass :class:`Engine` in a
module of its own, implement every method, and add it to :data:`ENGINES`
(before the generic ones if ``"auto"`` should prefer it);
``tests/test_engines.py`` checks it against the autograd reference.
"""

from ._base import TORCH_FUNC_LOCK, Engine
from ._jacobian import JacobianEngine
from ._ntk_vp import NTKVectorProductEngine
from ._structured import StructuredEngine

__all__ = [
    "ENGINES",
    "Engine",
    "JacobianEngine",
    "NTKVectorProductEngine",
    "StructuredEngine",
    "TORCH_FUNC_LOCK",
    "select_engine",
]

#: Engine classes by name, in the order ``engine="auto"`` tries them.
ENGINES = {
    "structured": StructuredEngine,
    "jacobian": JacobianEngine,
    "ntk_vp": NTKVectorProductEngine,
}


def select_engine(engine, module, parameter_names):
    """Resolve the ``engine`` option to an engine bound to ``module``.

    Parameters
    ----------
    engine : {"auto", "structured", "jacobian", "ntk_vp"}
        "auto" picks the first engine in :data:`ENGINES` that supports the
        module: the structured engine for Linear/elementwise
        ``nn.Sequential`` networks, the generic Jacobian engine otherwise.
    module : torch.nn.Module
    parameter_names : iterable of str
        The parameters the kernel is taken with respect to.

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
    >>> select_engine("auto", torch.nn.Bilinear(2, 2, 1), ["weight"]).name
    'jacobian'
    """
    if engine == "auto":
        engine = next(name for name, cls in ENGINES.items() if cls.supports(module))
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
    return cls(module, list(parameter_names))
