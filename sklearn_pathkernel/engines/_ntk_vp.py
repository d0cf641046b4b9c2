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

import torch
from torch.func import functional_call, jvp, vjp, vmap

from ._base import TORCH_FUNC_LOCK, Engine, count_parameters


class NTKVectorProductEngine(Engine):
    """Kernel columns by vector-Jacobian then Jacobian-vector products.

    A state is the pair ``(parameters, rows)``, or ``(parameters, rows,
    metric)`` in a metric: nothing is computed until two states meet, which
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
        if metric is None:
            return parameters, X
        metric = {
            name: metric[name].to(dtype=X.dtype, device=X.device) for name in parameters
        }
        return parameters, X, metric

    def static(self, X, Y):
        return None

    def contract(self, state_x, state_y, trace, static=None):
        parameters, X = state_x[:2]
        parameters_y, Y = state_y[:2]
        if len(state_x) != len(state_y):
            raise ValueError(
                "state_x and state_y must both be taken in a metric or both "
                "without one."
            )
        metric = _metric(state_y)
        f_x, f_y = self._outputs(X), self._outputs(Y)

        def column(cotangent):
            (tangent,) = pullback(cotangent)
            if metric is not None:  # J_X M J_Y^T e: scale between the two
                tangent = {name: t * metric[name] for name, t in tangent.items()}
            return jvp(f_x, (parameters,), (tangent,))[1]

        with TORCH_FUNC_LOCK:
            out_y, pullback = vjp(f_y, parameters_y)
            m, n_outputs = out_y.shape
            basis = torch.eye(m * n_outputs, dtype=out_y.dtype, device=out_y.device)
            basis = basis.view(m * n_outputs, m, n_outputs)
            columns = torch.cat(
                [vmap(column)(chunk) for chunk in basis.split(self.columns_per_batch)]
            )  # (m * O, n, O): columns[(j, b), i, a] = K[i, j, a, b]
        full = columns.view(m, n_outputs, X.shape[0], n_outputs).permute(2, 0, 3, 1)
        return full.diagonal(dim1=2, dim2=3).sum(-1) if trace else full

    def contract_vector(self, state_x, state_y, vectors, static=None):
        """``K[i, j] @ vectors[j]`` for every pair, from the full kernel."""
        full = self.contract(state_x, state_y, False, static)
        return torch.einsum("ijab,jb->ija", full, vectors)

    def diagonal(self, state, X):
        """``sum_o |J(x_i)^T e_o|^2`` by one vector-Jacobian product per output.

        Rows go through in batches of ``columns_per_batch`` (``vmap``), so at
        most that many parameter-sized gradients exist at once. In a metric,
        ``sum_o |J(x_i)^T e_o|_M^2``.
        """
        parameters, rows = state[:2]
        metric = _metric(state)
        module = self.module

        def single(x):
            def f(p):
                return functional_call(module, p, (x.unsqueeze(0),)).reshape(-1)

            out, pullback = vjp(f, parameters)
            total = out.new_zeros(())
            for e_o in torch.eye(out.shape[0], dtype=out.dtype, device=out.device):
                (gradient,) = pullback(e_o)
                total = total + sum(
                    (g * g if metric is None else g * g * metric[name]).sum()
                    for name, g in gradient.items()
                )
            return total

        with TORCH_FUNC_LOCK:
            return torch.cat(
                [vmap(single)(batch) for batch in rows.split(self.columns_per_batch)]
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
        parameters, rows = state[:2]
        metric = _metric(state)
        (projection,) = factors  # (d, m), rows in the order of ``parameters``
        outputs = self._outputs(rows)
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

    def _outputs(self, rows):
        """``p -> f(rows; p)`` as an (n, O) matrix."""
        module = self.module
        return lambda p: functional_call(module, p, (rows,)).reshape(rows.shape[0], -1)


def _metric(state):
    """The metric a state was taken in, or None."""
    return state[2] if len(state) == 3 else None
