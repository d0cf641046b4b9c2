"""The structured engine: the outer-product form of ``nn.Linear`` layers.

A dense layer's Jacobian is an outer product, ``dz/dW = delta a^T``, so its
tangent-kernel term is ``(A_X A_Y^T + 1) * (D_X D_Y^T)`` (elementwise; the
``+ 1`` is the bias), with ``A`` the layer inputs from one forward pass and
``D`` the output signals from one backward pass of all ``O`` outputs at
once. FLOPs per checkpoint: ``2 n m sum_l (h_{l-1} + 1 + O h_l)`` for the
traced kernel, with the first layer's input Gram shared by all
checkpoints; memory per row: ``sum_l (h_{l-1} + 1 + O h_l)`` numbers. No
per-example Jacobian ever exists.

The same structure gives a Kronecker sketch for random features: a layer's
gradient ``vec D (x) a`` meets Gaussian ``u (x) v`` as ``(u . vec D) (v . a)``,
``2 n m (O h_l + h_{l-1} + 1)`` FLOPs per layer for ``m`` features instead of
``2 n m O h_l (h_{l-1} + 1)`` (docs/design.md, section 6).

In a diagonal metric ``M`` (the path kernel of Adam) a layer's term is
``sum_j G_D[j] G_A[j]`` over its units, ``G_A[j] = A_X diag(M[j]) A_Y^T``:
``2 n m h_l (h_{l-1} + 1 + O)`` FLOPs, ``O`` times fewer than a Gram of
the per-example gradients (docs/design.md, section 7.3).
"""

import math

import torch
from torch import nn

from .._compute._blocking import device_budget, sub_block_rows
from ._base import Engine, output_vectors

# Elementwise activations the structured engine understands. Those with a
# closed-form derivative avoid an autograd call; the rest get theirs from
# autograd on the elementwise function, which is exact for elementwise maps.
_CLOSED_FORM_DERIVATIVES = {
    nn.Tanh: lambda z, a: 1.0 - a * a,
    nn.Sigmoid: lambda z, a: a * (1.0 - a),
    nn.ReLU: lambda z, a: (z > 0).to(z.dtype),
}
# Layers that are the identity in eval mode, the mode kernels are computed in
# (``_network.in_evaluation_mode``): skipped like nn.Identity.
_IDENTITY = (nn.Identity, nn.Dropout, nn.AlphaDropout)
_ELEMENTWISE = (
    *_IDENTITY,
    nn.Tanh,
    nn.Sigmoid,
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Softplus,
    nn.Mish,
    nn.CELU,
    nn.SELU,
    nn.Hardtanh,
    nn.Softsign,
)
#: Rows of a layer's ``vec D`` (length ``O h_l``) per sketch piece: bounds a
#: piece's signal factor to ``SKETCH_ROWS * m`` numbers for very wide layers.
SKETCH_ROWS = 8192
#: Numbers a row sub-block's temporaries in a metric may always take (16 MiB
#: in float32), however few the columns: rows enough for efficient GEMMs. On
#: the CPU only; under the device policy the device's budget sizes them.
METRIC_TEMPORARIES = 2**22


class StructuredEngine(Engine):
    """Outer-product structure of ``nn.Linear`` layers; no Jacobians at all.

    Supports an ``nn.Sequential`` of ``nn.Linear`` layers, elementwise
    activations and dropout (the identity in eval mode, in which kernels are
    computed; the default MLP is one). Each Linear layer contributes
    ``G_A * G_D`` with ``G_A = [A_X, 1][A_Y, 1]^T`` (the ones column only when
    its bias is trained, ``A`` only when its weight is) and
    ``G_D = D_X D_Y^T`` over the flattened (output, unit) axis.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel.engines import StructuredEngine
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
    ...                           torch.nn.Linear(4, 1))
    >>> StructuredEngine.supports(net), StructuredEngine.supports(net[1])
    (True, False)
    """

    name = "structured"
    supports_metric = True
    supported_modules = (
        "an nn.Sequential of nn.Linear layers, elementwise activations and dropout"
    )

    def __init__(self, module, parameter_names, *, example=None, metric=False):
        self.module = module
        names = set(parameter_names)
        self.layers = []  # (index, trains weight, trains bias) per Linear
        for index, child in enumerate(module):
            if isinstance(child, nn.Linear):
                self.layers.append(
                    (index, f"{index}.weight" in names, f"{index}.bias" in names)
                )
        # When the first Linear layer sees X itself, its input Gram is the same
        # at every checkpoint: computed once per block (static), not per state.
        first = self.layers[0][0] if self.layers else 0
        self.static_input = (
            bool(self.layers)
            and self.layers[0][1]
            and all(isinstance(c, _IDENTITY) for c in list(module)[:first])
        )
        # While only identities follow the last Linear layer, its signals
        # are the identity (state stores None): the same for every row.
        last = self.layers[-1][0] if self.layers else 0
        self.identity_output = bool(self.layers) and all(
            isinstance(c, _IDENTITY) for c in list(module)[last + 1 :]
        )
        # In a metric, the device budget (None on the CPU) sizes the row
        # sub-blocks: read once, when the engine is bound for a call.
        self._budget = (
            device_budget(example.device)
            if metric and isinstance(example, torch.Tensor)
            else None
        )

    @classmethod
    def supports(cls, module):
        """An ``nn.Sequential`` of Linear layers and elementwise activations."""
        return (
            isinstance(module, nn.Sequential)
            and any(isinstance(c, nn.Linear) for c in module)
            and all(isinstance(c, (nn.Linear, *_ELEMENTWISE)) for c in module)
        )

    def bytes_per_row(self, n_outputs, itemsize):
        numbers = 0
        for index, _, _ in self.layers:
            layer = self.module[index]
            numbers += layer.in_features + 1 + n_outputs * layer.out_features
        # Plus the backward signal and pre-activations alive while building.
        return 2 * numbers * itemsize

    def state(self, parameters, X, metric=None):
        """Per Linear layer: augmented inputs ``A`` (or None) and signals ``D``.

        With a ``metric``, a :class:`_MetricState` of ``(A, D, M)`` per layer:
        ``M`` the layer's metric laid out like ``[A, 1]`` (``(h_l, h_{l-1}
        [+ 1])``), and the first layer's ``A`` kept, since its input Gram
        is no longer the same at every checkpoint.
        """
        inputs, signals = self._inputs_and_signals(parameters, X)
        return self._pack(inputs, signals, X, metric)

    def _pack(self, inputs, signals, X, metric):
        """Per Linear layer ``(A, D)``, or a :class:`_MetricState` in a metric."""
        if metric is None:
            return [
                (self._augment(inputs[index], w, b, k == 0), signals.get(index))
                for k, (index, w, b) in enumerate(self.layers)
            ]
        return _MetricState(
            (
                self._augment(inputs[index], w, b, is_first=False),
                signals.get(index),
                _layer_metric(metric, index, w, b, X),
            )
            for index, w, b in self.layers
        )

    def _inputs_and_signals(self, parameters, X, vectors=None):
        """Each Linear layer's input and its output signals ``(n, O, h_l)``.

        The signals are None for the output layer while they are the
        identity (no activation after the last Linear layer); with
        ``vectors`` (n, O) the one signal ``vectors . f``. The backward
        pass stops at the first trained layer: layers before it have no
        signals (a last-layer kernel costs a forward and one layer).
        """
        inputs, pre_activations, signal = {}, {}, X
        for index, child in enumerate(self.module):
            if isinstance(child, nn.Linear):
                inputs[index] = signal
                weight = parameters.get(f"{index}.weight", child.weight)
                bias = parameters.get(f"{index}.bias", child.bias)
                signal = torch.nn.functional.linear(signal, weight, bias)
            elif not isinstance(child, _IDENTITY):
                # An in-place activation must not overwrite the kept z.
                z = signal
                signal = child(z.clone() if getattr(child, "inplace", False) else z)
                pre_activations[index] = (z, signal)
        n, n_outputs = X.shape[0], signal.shape[1]
        # Backward pass of all O output signals at once: G is (n, O, width).
        # While G is still the identity (no activation after the last Linear),
        # G @ W is W itself: a broadcast view, no product. Seeded with
        # vectors, one signal: G is (n, 1, width).
        G = torch.eye(n_outputs, dtype=X.dtype, device=X.device).expand(n, -1, -1)
        is_identity = vectors is None
        if not is_identity:
            G = output_vectors(vectors, signal.reshape(n, n_outputs)).unsqueeze(1)
        signals = {}
        trained = [index for index, w, b in self.layers if w or b]
        first = trained[0] if trained else self.layers[0][0]
        for index in range(len(self.module) - 1, first - 1, -1):
            child = self.module[index]
            if isinstance(child, nn.Linear):
                # None marks the output layer's identity signals (see contract).
                signals[index] = None if is_identity else G
                if index != first:
                    weight = parameters.get(f"{index}.weight", child.weight)
                    G = weight.expand(n, -1, -1) if is_identity else G @ weight
                    is_identity = False
            elif not isinstance(child, _IDENTITY):
                is_identity = False
                G = G * _derivative(child, *pre_activations[index]).unsqueeze(1)
        return inputs, signals

    def _augment(self, A, trains_weight, trains_bias, is_first):
        if is_first and self.static_input:
            return None  # its input Gram comes from static()
        parts = ([A] if trains_weight else []) + (
            [A.new_ones(A.shape[0], 1)] if trains_bias else []
        )
        return torch.cat(parts, dim=1) if parts else None

    def static(self, X, Y):
        """The first layer's input Gram: the same at every checkpoint."""
        if not self.static_input:
            return None
        trains_bias = self.layers[0][2]
        gram = X @ Y.T
        return gram + 1.0 if trains_bias else gram

    def contract(self, state_x, state_y, trace, static=None):
        if _in_metric(state_x, state_y):
            return self._metric_contract(state_x, state_y, trace)
        total = None
        for input_gram, D_x, D_y, n_outputs in self._layer_terms(
            state_x, state_y, static
        ):
            if D_x is None:
                # Output layer, signals the identity: D_x D_y^T is O on the
                # trace and the identity in full, so no product is needed.
                eye = torch.eye(
                    n_outputs, dtype=input_gram.dtype, device=input_gram.device
                )
                term = (
                    n_outputs * input_gram
                    if trace
                    else input_gram[:, :, None, None] * eye
                )
                total = term if total is None else total.add_(term)
                continue
            if trace:
                signal_gram = D_x.flatten(1) @ D_y.flatten(1).T
            else:
                n, width = D_x.shape[0], D_x.shape[2]
                signal_gram = (
                    (D_x.reshape(-1, width) @ D_y.reshape(-1, width).T)
                    .view(n, n_outputs, D_y.shape[0], n_outputs)
                    .permute(0, 2, 1, 3)
                )
                input_gram = input_gram[:, :, None, None]
            if total is None:
                total = signal_gram * input_gram
            elif _is_batched(total):
                # Under torch.func.vmap (a stack of checkpoints, the path
                # kernel on a device): addcmul_ has no batching rule and
                # would run once per checkpoint.
                total.add_(signal_gram * input_gram)
            else:
                total.addcmul_(signal_gram, input_gram)
        return total

    def contract_vector(self, state_x, state_y, vectors, static=None):
        """``K[i, j] @ vectors[j]`` for every pair: (n, m, O).

        The vectors are folded into Y's signals first (``D_y^T v``, one
        ``(m, width)`` matrix per layer), so no ``O x O`` kernel is formed.
        """
        if _in_metric(state_x, state_y):
            return self._metric_contract(state_x, state_y, vectors=vectors)
        total = None
        for input_gram, D_x, D_y, _ in self._layer_terms(state_x, state_y, static):
            if D_x is None:  # identity signals: K v is the input Gram times v
                signal = vectors.unsqueeze(0)
            else:
                folded = torch.einsum("jbw,jb->jw", D_y, vectors)
                signal = (D_x @ folded.T).permute(0, 2, 1)  # (n, m, O)
            term = signal * input_gram[:, :, None]
            total = term if total is None else total.add_(term)
        return total

    def folded_state(self, parameters, X, vectors, metric=None):
        """:meth:`state` of ``vectors . f``: the backward pass seeded with them.

        Signals ``(n, 1, h_l)``: ``D^T v``, the output layer's ``v`` itself.
        """
        inputs, signals = self._inputs_and_signals(parameters, X, vectors)
        return self._pack(inputs, signals, X, metric)

    def diagonal(self, state, X):
        """``K(x_i, x_i)`` summed over outputs, row by row: (n,).

        Each layer's term is ``(|a|^2 [+ 1]) * |D|_F^2``: the diagonal of
        :meth:`contract`'s traced kernel without any row-by-row product.
        In a metric ``M`` (``(h_l, h_{l-1} [+ 1])``) it is
        ``sum_jk M_jk (sum_o D_oj^2) a_k^2``: ``2 n h_l (h_{l-1} + 1)`` FLOPs.
        """
        if isinstance(state, _MetricState):
            return _metric_diagonal(state)
        total = None
        for k, ((A, D), (index, trains_weight, trains_bias)) in enumerate(
            zip(state, self.layers)
        ):
            if not (trains_weight or trains_bias):
                continue
            if k == 0 and self.static_input:
                inputs = (X * X).sum(dim=1) + (1.0 if trains_bias else 0.0)
            else:
                inputs = (A * A).sum(dim=1)
            # Identity output signals: the traced D D^T is the output width.
            signals = (
                self.module[index].out_features
                if D is None
                else (D * D).sum(dim=(1, 2))
            )
            term = inputs * signals
            total = term if total is None else total + term
        return total

    def sketch_shapes(self, n_outputs):
        """Per trained layer ``(O h_l, h_{l-1} [+ 1])``: ``vec D (x) [a, 1]``.

        ``[a, 1]`` holds ``a`` only when the weight is trained and the one
        only when the bias is. The output layer's identity signals are the
        same for every row, so its piece is ``sqrt(O) [a, 1]``, of shape
        ``(h_{L-1} [+ 1],)``. A ``vec D`` longer than :data:`SKETCH_ROWS`
        is cut into blocks, each a piece with ``[a, 1]``.
        """
        shapes = []
        for k, start, stop in self._pieces(n_outputs):
            index, trains_weight, trains_bias = self.layers[k]
            inputs = (self.module[index].in_features if trains_weight else 0) + (
                1 if trains_bias else 0
            )
            shapes.append((inputs,) if start is None else (stop - start, inputs))
        return shapes

    def sketch(self, state, X, piece, factors):
        """``(vec D @ U) * ([a, 1] @ V)``, or ``sqrt(O) [a, 1] @ V``: (n, m)."""
        k, start, stop = self._pieces(self._n_outputs(state))[piece]
        if isinstance(state, _MetricState):
            return self._metric_sketch(state[k], start, stop, factors)
        index, trains_weight, trains_bias = self.layers[k]
        A, D = state[k]
        if A is None:  # the first layer sees X; its Gram was left to static()
            A = self._augment(X, trains_weight, trains_bias, is_first=False)
        inputs = A @ factors[-1]
        if start is None:  # identity signals: <vec I, vec I> = O for every row
            return inputs.mul_(math.sqrt(self.module[index].out_features))
        return (D.flatten(1)[:, start:stop] @ factors[0]).mul_(inputs)

    def _pieces(self, n_outputs):
        """``(layer position, start, stop)`` of each sketch piece's ``vec D`` rows.

        ``start`` and ``stop`` are None for the identity signals of the
        output layer.
        """
        pieces = []
        for k, (index, trains_weight, trains_bias) in enumerate(self.layers):
            if not (trains_weight or trains_bias):
                continue
            if k == len(self.layers) - 1 and self.identity_output:
                pieces.append((k, None, None))
                continue
            rows = n_outputs * self.module[index].out_features
            pieces.extend(
                (k, start, min(start + SKETCH_ROWS, rows))
                for start in range(0, rows, SKETCH_ROWS)
            )
        return pieces

    def _n_outputs(self, state):
        """``O``, read from a state's signals (the output width when all are None)."""
        for layer in state:
            if layer[1] is not None:
                return layer[1].shape[1]
        return self.module[self.layers[-1][0]].out_features

    def _layer_terms(self, state_x, state_y, static):
        """Per trained layer: its input Gram, both signals and the output width."""
        for k, (
            (A_x, D_x),
            (A_y, D_y),
            (index, trains_weight, trains_bias),
        ) in enumerate(zip(state_x, state_y, self.layers)):
            if not (trains_weight or trains_bias):
                continue
            input_gram = static if (k == 0 and self.static_input) else A_x @ A_y.T
            n_outputs = self.module[index].out_features if D_x is None else D_x.shape[1]
            yield input_gram, D_x, D_y, n_outputs

    # ------------------------------------------------------- in a metric

    def _metric_contract(self, state_x, state_y, trace=True, vectors=None):
        """:meth:`contract` (or, with ``vectors``, ``contract_vector``) in a metric.

        A layer's term no longer factorises into two Grams. With ``M`` the
        metric laid out like ``[A, 1]`` (``(h_l, h_{l-1} [+ 1])``), the
        traced term of rows ``x, y`` is ``sum_j G_D[j] G_A[j]`` over the
        layer's units ``j``, where ``G_D[j] = sum_o D_x[o, j] D_y[o, j]`` and
        ``G_A[j] = a_x diag(M[j]) a_y^T``: ``h_l`` Grams each, with inner
        sizes ``O`` and ``h_{l-1} + 1``, hence ``2 n m h_l (h_{l-1} + 1 +
        O)`` FLOPs, ``O`` times fewer than a Gram of the ``O x d``
        per-example gradients (what the Jacobian engine pays). All ``G_A[j]``
        are one GEMM, ``(h_l r, h_{l-1} + 1) @ (h_{l-1} + 1, m)``; no
        ``(pairs, h)`` tensor of ``a_x * a_y`` is needed. The output layer's
        identity signals make ``G_D[j] = 1``: one Gram in ``M``'s column
        sums. Rows of ``X`` go in sub-blocks of ``r`` rows whose temporaries
        stay within about one column state (:meth:`_sub_blocks`).
        """
        n, m = _rows(state_x), _rows(state_y)
        n_outputs = self._n_outputs(state_x)
        if vectors is not None:
            term, shape = self._applied_term, (n, m, n_outputs)
        elif trace:
            term, shape = self._traced_term, (n, m)
        else:
            term, shape = self._full_term, (n, m, n_outputs, n_outputs)
        total = None
        for (A_x, D_x, M), (A_y, D_y, _) in zip(state_x, state_y):
            if M is None:  # a layer with nothing trained
                continue
            if total is None:
                total = _batched_like(M, A_x).new_zeros(shape)
            term(total, A_x, A_y, D_x, D_y, M, n_outputs, vectors)
        return total

    def _traced_term(self, total, A_x, A_y, D_x, D_y, M, n_outputs, vectors):
        """Add one layer's traced term in its metric to ``total`` (n, m)."""
        if D_x is None:  # identity signals: G_D[j] = 1 for every unit
            if _is_batched(total):  # addmm_ has no batching rule: vmap would loop
                total.add_((A_x * M.sum(dim=0)) @ A_y.T)
            else:
                total.addmm_(A_x * M.sum(dim=0), A_y.T)
            return
        width, inputs = M.shape
        m = A_y.shape[0]
        # Laid out once so that every product is a plain batched GEMM (torch's
        # bmm copies odd strides batch by batch).
        D_xT = D_x.permute(2, 0, 1).contiguous()  # (h_l, n, O)
        D_yT = D_y.permute(2, 1, 0).contiguous()  # (h_l, O, m)
        per_row = width * (inputs + 2 * m + n_outputs)
        for r0, r1 in self._sub_blocks(A_x.shape[0], m, n_outputs, per_row, M):
            G_A = _input_grams(A_x[r0:r1], A_y, M)  # (h_l, r, m)
            G_D = torch.bmm(D_xT[:, r0:r1], D_yT)
            total[r0:r1].add_(G_A.mul_(G_D).sum(dim=0))

    def _applied_term(self, total, A_x, A_y, D_x, D_y, M, n_outputs, vectors):
        """Add one layer's ``K[i, j] @ vectors[j]`` in its metric: (n, m, O).

        ``sum_j D_x[:, j] G_A[j] (D_y[:, j] . v)``: ``v`` is folded into
        ``D_y`` first, so no ``O x O`` block is formed.
        """
        width, inputs = M.shape
        m = A_y.shape[0]
        if D_x is not None:
            folded = torch.einsum("jbw,jb->wj", D_y, vectors).unsqueeze(1)
        per_row = width * (inputs + 2 * m) + m * n_outputs
        for r0, r1 in self._sub_blocks(A_x.shape[0], m, n_outputs, per_row, M):
            G_A = _input_grams(A_x[r0:r1], A_y, M)  # (h_l, r, m)
            if D_x is None:  # identity signals: unit j is output j
                total[r0:r1].add_(G_A.permute(1, 2, 0) * vectors)
            else:
                weighted = G_A.mul_(folded).transpose(0, 1)  # (r, h_l, m)
                total[r0:r1].add_(torch.bmm(D_x[r0:r1], weighted).transpose(1, 2))

    def _full_term(self, total, A_x, A_y, D_x, D_y, M, n_outputs, vectors):
        """Add one layer's ``O x O`` kernel in its metric: (n, m, O, O).

        ``K[i, j] = D_x[i] diag(G_A[:, i, j]) D_y[j]^T``: ``2 n m O^2 h_l``
        FLOPs besides ``G_A``, as without a metric.
        """
        width, inputs = M.shape
        m = A_y.shape[0]
        if D_x is None:  # identity signals: diagonal, G_A[o] on (o, o)
            per_row = width * (inputs + 2 * m) + m * n_outputs**2
            for r0, r1 in self._sub_blocks(A_x.shape[0], m, n_outputs, per_row, M):
                G_A = _input_grams(A_x[r0:r1], A_y, M)
                total[r0:r1].add_(torch.diag_embed(G_A.permute(1, 2, 0)))
            return
        # Here G_A is wanted as (r, m, h_l): from every pair's a_x * a_y, one
        # GEMM with M^T. Then, batched over the rows i, (D_y * G_A[i]) D_x[i]^T.
        M_t = M.T.contiguous()
        D_x_t = D_x.transpose(1, 2).contiguous()  # (n, h_l, O)
        per_row = m * (inputs + width + n_outputs * (width + n_outputs))
        for r0, r1 in self._sub_blocks(A_x.shape[0], m, n_outputs, per_row, M):
            r = r1 - r0
            pairs = A_x[r0:r1].unsqueeze(1) * A_y.unsqueeze(0)  # (r, m, k)
            G_A = (pairs.view(r * m, inputs) @ M_t).view(r, m, 1, width)
            scaled = (D_y.unsqueeze(0) * G_A).view(r, m * n_outputs, width)
            part = torch.bmm(scaled, D_x_t[r0:r1])  # [i, (j, b), a]
            total[r0:r1].add_(part.view(r, m, n_outputs, n_outputs).transpose(2, 3))

    def _metric_sketch(self, layer, start, stop, factors):
        """One layer's sketch piece in its metric ``M``.

        The piece is ``T = (vec D (x) [a, 1]) * sqrt(M)``, the metric's
        square root at each (output, unit, input) entry (it does not depend on
        the output), so ``<T(x), T(y)>`` is the layer's traced term in the
        metric and the Kronecker factors ``u (x) v`` stay unbiased:
        ``s_r = sum_{o,j} U[(o, j), r] D[o, j] (sqrt(M) (V[:, r] * a))_j``,
        ``2 n m h_l (h_{l-1} + 1 + O)`` FLOPs. The identity signals' piece
        is ``a * sqrt(sum_j M[j])``: the traced identity term's Gram.
        """
        A, D, M = layer
        if start is None:
            return (A * M.sum(dim=0).sqrt()) @ factors[-1]
        U, V = factors
        n, width, m = A.shape[0], D.shape[2], V.shape[1]
        # The outputs this piece of vec D (output-major) touches, its rows of
        # U in place among theirs and zeros elsewhere.
        o0, o1 = start // width, -(-stop // width)
        padded = U.new_zeros((o1 - o0) * width, m)
        padded[start - o0 * width : stop - o0 * width] = U
        # (h_l, O', m) and (h_l, n, O'), laid out for plain batched GEMMs.
        padded = padded.view(o1 - o0, width, m).transpose(0, 1).contiguous()
        signals = D[:, o0:o1].permute(2, 0, 1).contiguous()
        root = M.sqrt()
        out = _batched_like(V, M, A).new_empty(n, m)  # every row is written
        per_row = (A.shape[1] + 2 * width) * m + width * (o1 - o0)
        for r0, r1 in self._sub_blocks(n, m, D.shape[1], per_row, M):
            projected = torch.bmm(signals[:, r0:r1], padded)  # (h_l, r, m)
            inputs = A[r0:r1].T.unsqueeze(2) * V.unsqueeze(1)  # (h_{l-1}+1, r, m)
            inputs = (root @ inputs.flatten(1)).view(width, r1 - r0, m)
            out[r0:r1] = projected.mul_(inputs).sum(dim=0)
        return out

    def _sub_blocks(self, n, m, n_outputs, per_row, like):
        """Row ranges of ``n`` for temporaries of ``per_row`` numbers a row.

        On the CPU a sub-block takes what ``m`` rows' states take
        (:meth:`bytes_per_row`: the loops budget one column chunk's state
        besides the row tile's), or :data:`METRIC_TEMPORARIES` numbers when
        that is more: the network and the shapes only, never the budget, so
        the same bits for every ``working_memory``. Under the device policy
        (a budget read when the engine was bound) the device's budget sizes
        them (``sub_block_rows``): a quarter of it, shared by the stack of
        checkpoints that ``like`` (the metric) is batched over, so that a
        GPU gets a few large products per layer.
        """
        if self._budget is not None:
            bytes_per_row = per_row * like.element_size()
            rows = sub_block_rows(n, bytes_per_row, self._budget, stack=_stacked(like))
        else:
            budget = max(m * self.bytes_per_row(n_outputs, 1), METRIC_TEMPORARIES)
            rows = max(1, budget // per_row)
        return [(r0, min(r0 + rows, n)) for r0 in range(0, n, rows)]


def _is_batched(tensor):
    """Whether ``tensor`` is batched by ``torch.func.vmap`` (a stack of checkpoints).

    On a device the loops run a stack of checkpoints under vmap
    (``_compute/_stacks.py``); in-place products without a batching rule
    (``addcmul_``, ``addmm_``) would run once per checkpoint there.
    """
    return torch._C._functorch.is_batchedtensor(tensor)


def _stacked(tensor):
    """How many checkpoints ``torch.func.vmap`` stacks ``tensor`` over (1: none).

    Nested vmaps multiply: the temporaries of one operation are that many
    times those of one checkpoint.
    """
    size = 1
    functorch = torch._C._functorch
    while functorch.is_batchedtensor(tensor):
        dim = functorch.maybe_get_bdim(tensor)
        tensor = functorch.get_unwrapped(tensor)
        size *= tensor.shape[dim]
    return size


def _batched_like(*likes):
    """The first of ``likes`` that vmap batches, or the first: what to allocate like.

    Under ``torch.func.vmap`` a result written into in place must be batched
    as its terms are: the rows ``X`` are shared by a stack of checkpoints,
    their parameters and metrics are not.
    """
    return next((t for t in likes if _is_batched(t)), likes[0])


def _derivative(activation, z, a):
    """``phi'(z)`` of an elementwise activation, given ``a = phi(z)``."""
    closed_form = _CLOSED_FORM_DERIVATIVES.get(type(activation))
    if closed_form is not None:
        return closed_form(z, a)
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        # The clone keeps an in-place activation off the leaf.
        (grad,) = torch.autograd.grad(activation(z.clone()).sum(), z)
    return grad


class _MetricState(list):
    """A structured state taken in a metric: ``(A, D, M)`` per Linear layer."""


def _in_metric(state_x, state_y):
    """Whether two states to contract were taken in a metric (both must agree)."""
    in_x, in_y = isinstance(state_x, _MetricState), isinstance(state_y, _MetricState)
    if in_x != in_y:
        raise ValueError(
            "state_x and state_y must both be taken in a metric or both without "
            f"one; got state_x {'in' if in_x else 'without'} one and state_y "
            f"{'in' if in_y else 'without'} one."
        )
    return in_x


def _layer_metric(metric, index, trains_weight, trains_bias, X):
    """Layer ``index``'s metric laid out like its ``[A, 1]``, or None."""
    parts = ([metric[f"{index}.weight"]] if trains_weight else []) + (
        [metric[f"{index}.bias"].unsqueeze(1)] if trains_bias else []
    )
    if not parts:
        return None
    return torch.cat(parts, dim=1).to(dtype=X.dtype, device=X.device)


def _input_grams(A_x, A_y, M):
    """``G_A[j] = A_x diag(M[j]) A_y^T`` for every unit ``j``: (h_l, n, m).

    One GEMM, ``(h_l n, k) @ (k, m)``, with ``k = h_{l-1} [+ 1]``.
    """
    width, inputs = M.shape
    scaled = A_x.unsqueeze(0) * M.unsqueeze(1)  # (h_l, n, k)
    n = A_x.shape[0]
    return (scaled.view(width * n, inputs) @ A_y.T).view(width, n, A_y.shape[0])


def _metric_diagonal(state):
    """``K(x_i, x_i)`` in the state's metric, per row: (n,)."""
    total = None
    for A, D, M in state:
        if M is None:
            continue
        squares = A * A
        if D is None:  # identity signals: sum_o D_oj^2 = 1 for every unit
            term = squares @ M.sum(dim=0)
        else:
            term = ((squares @ M.T) * (D * D).sum(dim=1)).sum(dim=1)
        total = term if total is None else total + term
    return total


def _rows(state):
    """The number of rows a metric state holds."""
    return next(layer[0].shape[0] for layer in state if layer[2] is not None)
