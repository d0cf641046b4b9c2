"""Jacobian engines: per-block features and their contraction.

An engine turns a block of rows into a *state* at one point ``w`` of parameter
space, and contracts two states into that block's tangent kernel. The blocked
loop in ``_path.py`` never needs to know what a state is, so faster engines
(a later issue's structured engine for Linear + elementwise networks) slot in
beside this one through :data:`ENGINES`.

Engines
-------
``"jacobian"``
    Per-example Jacobians ``J(x)`` of shape (O, d) from ``torch.func``
    (``vmap`` over ``jacrev``), contracted with one matrix product. Works for
    any module whose forward treats rows independently. Memory per row:
    ``O * d`` numbers; FLOPs per pair of rows: ``2 * O * d`` (traced) or
    ``2 * O**2 * d`` (full).
"""

import torch
from torch.func import functional_call, jacrev, vmap


class JacobianEngine:
    """Materialise per-example Jacobians with ``torch.func``; any module."""

    name = "jacobian"

    def __init__(self, module):
        self.module = module

    @staticmethod
    def supports(module):
        """Any module: this is the generic fallback."""
        return True

    def bytes_per_row(self, n_outputs, n_parameters, itemsize):
        # The Jacobian itself, plus about as much again for jacrev's
        # intermediate tensors inside vmap.
        return 2 * n_outputs * n_parameters * itemsize

    def state(self, parameters, X):
        """Jacobians of the rows of ``X``, shape (n, O, d)."""
        module = self.module

        def single(params, x):
            out = functional_call(module, params, (x.unsqueeze(0),))
            return out.reshape(-1)

        jac = vmap(jacrev(single), in_dims=(None, 0))(parameters, X)
        n = X.shape[0]
        return torch.cat([j.reshape(n, j.shape[1], -1) for j in jac.values()], dim=2)

    @staticmethod
    def contract(state_x, state_y, trace):
        """``J_X J_Y^T``: (n, m) summed over outputs, or (n, m, O, O)."""
        if trace:
            return state_x.flatten(1) @ state_y.flatten(1).T
        return torch.einsum("iad,jbd->ijab", state_x, state_y)


ENGINES = {"jacobian": JacobianEngine}


def select_engine(engine, module):
    """Resolve the ``engine`` option to an engine bound to ``module``.

    ``"auto"`` picks the first engine in :data:`ENGINES` that supports the
    module; with only the generic engine registered that is ``"jacobian"``.
    """
    if engine == "auto":
        for cls in ENGINES.values():
            if cls.supports(module):
                return cls(module)
    if engine not in ENGINES:
        raise ValueError(
            f"The 'engine' parameter must be 'auto' or one of {sorted(ENGINES)}; "
            f"got {engine!r} instead."
        )
    cls = ENGINES[engine]
    if not cls.supports(module):
        raise ValueError(
            f"The {engine!r} engine does not support {type(module).__name__}; "
            "use engine='auto'."
        )
    return cls(module)
