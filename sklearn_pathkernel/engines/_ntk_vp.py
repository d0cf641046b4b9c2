"""NTK-vector products: kernel columns without any stored Jacobian, any module.

For each column ``(j, o)`` of ``Y`` a vector-Jacobian product gives
``J_Y^T e_{jo}`` and a Jacobian-vector product maps it through ``J_X``.
Memory ``d + n O`` per column, but each column costs a forward and backward
pass over ``X``: FLOPs about ``6 n m O d`` per checkpoint. Useful when
``O d`` numbers per row do not fit in memory. Its sketch projects each
output's gradient with Jacobian-vector products, the projection's columns as
tangents: ``O m`` of them per block of rows.

In a diagonal metric ``M`` (the path kernel of Adam) the vector-Jacobian
product is scaled by ``M`` before the Jacobian-vector product, the diagonal
weighs each squared gradient entry by ``M``, and the sketch's tangents are
the projection's columns times ``sqrt(M)``: the same cost plus ``d`` products
per column.
"""

from typing import NamedTuple

import torch
from torch.func import functional_call, jvp, vjp, vmap

from ._base import (
    TORCH_FUNC_LOCK,
    Engine,
    count_parameters,
    output_vectors,
    split_parameters,
)


class _State(NamedTuple):
    """An ``ntk_vp`` state: nothing is computed until two states meet.

    ``parameters`` are the trained ones, ``fixed`` those held at a value;
    ``vectors`` (n, O), when folded, make the rows' one output
    ``vectors[i] . f(x_i)``.
    """

    parameters: dict
    rows: torch.Tensor
    metric: dict = None
    fixed: dict = None
    vectors: torch.Tensor = None


class NTKVectorProductEngine(Engine):
    """Kernel columns by vector-Jacobian then Jacobian-vector products.

    A state holds the parameters and the rows (and a metric, or folded
    output vectors): nothing is computed until two states meet, which
    is what lets the two sides sit at different parameters (the exact
    decomposition pairs a query at ``w'`` with training rows at ``w``).

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel.engines import NTKVectorProductEngine
    >>> net = torch.nn.Linear(3, 1)
    >>> engine = NTKVectorProductEngine(net, ["weight", "bias"])
    >>> params = {n: p.detach() for n, p in net.named_parameters()}
    >>> state = engine.state(params, torch.eye(3))
    >>> engine.diagonal(state, torch.eye(3))  # |x|^2 + 1
    tensor([2., 2., 2.])
    """

    name = "ntk_vp"
    supports_metric = True

    def __init__(self, module, parameter_names, *, example=None, metric=False):
        self.module = module
        self.parameter_names = set(parameter_names)
        self.n_parameters = count_parameters(module, parameter_names)
        # Columns (or, for the diagonal, rows) pushed through at once: bounds
        # the memory of one batch to columns_per_batch * (d + n O) numbers.
        self.columns_per_batch = 64

    @classmethod
    def supports(cls, module):
        """Any module whose forward treats rows independently."""
        return True

    def bytes_per_row(self, n_outputs, itemsize):
        # States are the rows themselves; the column batches are bounded by
        # columns_per_batch * (d + n O) numbers, small next to the strip.
        return 4 * n_outputs * itemsize

    def state(self, parameters, X, metric=None):
        trained, fixed = split_parameters(parameters, self.parameter_names)
        if metric is not None:
            metric = {
                name: metric[name].to(dtype=X.dtype, device=X.device)
                for name in trained
            }
        return _State(trained, X, metric, fixed)

    def static(self, X, Y):
        return None

    def folded_state(self, parameters, X, vectors, metric=None):
        """The state, its outputs folded with ``vectors`` when states meet."""
        state = self.state(parameters, X, metric=metric)
        if callable(vectors):
            with TORCH_FUNC_LOCK:
                outputs = self._outputs(state)(state.parameters)
            vectors = output_vectors(vectors, outputs)
        return state._replace(vectors=vectors)

    def contract(self, state_x, state_y, trace, static=None):
        if (state_x.metric is None) != (state_y.metric is None):
            raise ValueError(
                "state_x and state_y must both be taken in a metric or both "
                "without one."
            )
        metric = state_y.metric
        f_x, f_y = self._outputs(state_x), self._outputs(state_y)

        def column(cotangent):
            (tangent,) = pullback(cotangent)
            if metric is not None:  # J_X M J_Y^T e: scale between the two
                tangent = {name: t * metric[name] for name, t in tangent.items()}
            return jvp(f_x, (state_x.parameters,), (tangent,))[1]

        with TORCH_FUNC_LOCK:
            out_y, pullback = vjp(f_y, state_y.parameters)
            m, n_outputs = out_y.shape
            basis = torch.eye(m * n_outputs, dtype=out_y.dtype, device=out_y.device)
            basis = basis.view(m * n_outputs, m, n_outputs)
            columns = torch.cat(
                [vmap(column)(chunk) for chunk in basis.split(self.columns_per_batch)]
            )  # (m * O, n, O): columns[(j, b), i, a] = K[i, j, a, b]
        n = state_x.rows.shape[0]
        full = columns.view(m, n_outputs, n, -1).permute(2, 0, 3, 1)
        return full.diagonal(dim1=2, dim2=3).sum(-1) if trace else full

    def contract_vector(self, state_x, state_y, vectors, static=None):
        """``K[i, j] @ vectors[j]`` for every pair, from the full kernel."""
        full = self.contract(state_x, state_y, False, static)
        return torch.einsum("ijab,jb->ija", full, vectors)

    def diagonal(self, state, X):
        """``sum_o |J(x_i)^T e_o|^2`` by one vector-Jacobian product per output.

        Rows go through in batches of ``columns_per_batch`` (``vmap``), so at
        most that many parameter-sized gradients exist at once. In a metric,
        ``sum_o |J(x_i)^T e_o|_M^2``; folded, the one output ``v . f``.
        """
        metric, module, fixed = state.metric, self.module, state.fixed

        def single(x, v):
            def f(p):
                out = functional_call(module, {**fixed, **p}, (x.unsqueeze(0),))
                out = out.reshape(-1)
                return out if v is None else (out * v).sum().unsqueeze(0)

            out, pullback = vjp(f, state.parameters)
            total = out.new_zeros(())
            for e_o in torch.eye(out.shape[0], dtype=out.dtype, device=out.device):
                (gradient,) = pullback(e_o)
                total = total + sum(
                    (g * g if metric is None else g * g * metric[name]).sum()
                    for name, g in gradient.items()
                )
            return total

        rows, vectors = state.rows, state.vectors
        size = self.columns_per_batch
        with TORCH_FUNC_LOCK:
            if vectors is None:
                return torch.cat(
                    [vmap(lambda x: single(x, None))(b) for b in rows.split(size)]
                )
            return torch.cat(
                [
                    vmap(single)(b, v)
                    for b, v in zip(rows.split(size), vectors.split(size))
                ]
            )

    def sketch_shapes(self, n_outputs):
        """One piece per output: its gradient, ``d`` numbers."""
        return [(self.n_parameters,)] * n_outputs

    def sketch(self, state, X, piece, factors):
        """``J_o(x) P`` for output ``o = piece``, one JVP per column of ``P``.

        The columns go through in batches of ``columns_per_batch``
        (``vmap``); no Jacobian is formed. In a metric ``M`` the piece is
        ``J_o(x) sqrt(M)``, so the tangents are ``sqrt(M)`` times the
        columns of ``P``.
        """
        parameters, metric = state.parameters, state.metric
        (projection,) = factors  # (d, m), rows in the order of ``parameters``
        outputs = self._outputs(state)
        names = list(parameters)
        sizes = [parameters[name].numel() for name in names]
        if metric is not None:
            root = torch.cat([metric[name].reshape(-1) for name in names]).sqrt()
            projection = projection * root.unsqueeze(1)

        def column(tangent):
            tangents = {
                name: part.reshape(parameters[name].shape)
                for name, part in zip(names, tangent.split(sizes))
            }
            return jvp(outputs, (parameters,), (tangents,))[1][:, piece]

        with TORCH_FUNC_LOCK:
            columns = torch.cat(
                [
                    vmap(column)(batch)
                    for batch in projection.T.split(self.columns_per_batch)
                ]
            )  # (m, n)
        return columns.T

    def _outputs(self, state):
        """``p -> f(rows; p)`` as an (n, O) matrix; (n, 1) when folded."""
        module, rows, fixed, vectors = (
            self.module,
            state.rows,
            state.fixed,
            state.vectors,
        )

        def outputs(p):
            out = functional_call(module, {**fixed, **p}, (rows,))
            out = out.reshape(rows.shape[0], -1)
            return out if vectors is None else (out * vectors).sum(1, keepdim=True)

        return outputs
