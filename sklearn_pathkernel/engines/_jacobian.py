"""The generic engine: per-example Jacobians from ``torch.func``, any module.

FLOPs per checkpoint ``2 n m O d`` for the traced kernel plus the Jacobians;
memory per row ``O d`` numbers. Its sketch is a Gaussian projection of
``vec J``: ``2 n O d m`` FLOPs for ``m`` features.
"""

import torch
from torch.func import functional_call, jacrev, vmap

from ._base import (
    TORCH_FUNC_LOCK,
    Engine,
    count_parameters,
    output_vectors,
    split_parameters,
)

#: Rows of ``vec J`` (length ``O d``) per sketch piece: a piece's factor is
#: ``SKETCH_ROWS * m`` numbers, so the projection never exists whole.
SKETCH_ROWS = 2048


class JacobianEngine(Engine):
    """Materialise per-example Jacobians with ``torch.func``; any module.

    A state is the (n, O, d) stack of the rows' Jacobians (``vmap`` over
    ``jacrev``); two states contract with one matrix product.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel.engines import JacobianEngine
    >>> net = torch.nn.Linear(3, 2)
    >>> engine = JacobianEngine(net, ["weight", "bias"])
    >>> engine.state(dict(net.named_parameters()), torch.ones(4, 3)).shape
    torch.Size([4, 2, 8])
    """

    name = "jacobian"
    supports_metric = True

    def __init__(self, module, parameter_names, *, example=None, metric=False):
        self.module = module
        self.parameter_names = set(parameter_names)
        self.n_parameters = count_parameters(module, parameter_names)

    @classmethod
    def supports(cls, module):
        """Any module whose forward treats rows independently."""
        return True

    def bytes_per_row(self, n_outputs, itemsize):
        # The Jacobian, plus about as much again for jacrev's intermediates.
        return 2 * n_outputs * self.n_parameters * itemsize

    def state(self, parameters, X, metric=None):
        """Jacobians of the rows of ``X``, shape (n, O, d).

        With a ``metric``, ``J diag(sqrt(metric))``: then every product is
        the one in that metric.
        """
        module = self.module
        trained, fixed = split_parameters(parameters, self.parameter_names)

        def single(params, x):
            return functional_call(
                module, {**fixed, **params}, (x.unsqueeze(0),)
            ).reshape(-1)

        with TORCH_FUNC_LOCK:
            jac = vmap(jacrev(single), in_dims=(None, 0))(trained, X)
        n = X.shape[0]
        if metric is not None:
            jac = {name: j * metric[name].sqrt().to(j.dtype) for name, j in jac.items()}
        return torch.cat([j.reshape(n, j.shape[1], -1) for j in jac.values()], dim=2)

    def static(self, X, Y):
        return None

    def contract(self, state_x, state_y, trace, static=None):
        """``J_X J_Y^T``: (n, m) summed over outputs, or (n, m, O, O)."""
        if trace:
            return state_x.flatten(1) @ state_y.flatten(1).T
        return torch.einsum("iad,jbd->ijab", state_x, state_y)

    def contract_vector(self, state_x, state_y, vectors, static=None):
        """``K[i, j] @ vectors[j]`` for every pair: (n, m, O), no O x O kernel."""
        pulled = torch.einsum("jbd,jb->jd", state_y, vectors)  # J_y^T v_j
        return torch.einsum("iad,jd->ija", state_x, pulled)

    def folded_state(self, parameters, X, vectors, metric=None):
        """``v^T J`` per row: (n, 1, d), from the rows' Jacobians."""
        if callable(vectors):
            with TORCH_FUNC_LOCK:
                outputs = functional_call(self.module, parameters, (X,))
            vectors = output_vectors(vectors, outputs.reshape(X.shape[0], -1))
        state = self.state(parameters, X, metric=metric)
        return torch.einsum("nod,no->nd", state, vectors).unsqueeze(1)

    def diagonal(self, state, X):
        """``K(x_i, x_i)`` summed over outputs: the rows' squared Jacobian norms."""
        return (state * state).sum(dim=(1, 2))

    def sketch_shapes(self, n_outputs):
        """``vec J`` cut into blocks of :data:`SKETCH_ROWS` rows."""
        total = n_outputs * self.n_parameters
        return [
            (min(SKETCH_ROWS, total - start),) for start in range(0, total, SKETCH_ROWS)
        ]

    def sketch(self, state, X, piece, factors):
        """The rows' ``vec J`` block ``piece`` times its projection: (n, m)."""
        (projection,) = factors
        start = piece * SKETCH_ROWS
        return state.flatten(1)[:, start : start + projection.shape[0]] @ projection
