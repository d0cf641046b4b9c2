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
"""

import math

import torch
from torch import nn

from ._base import Engine

# Elementwise activations the structured engine understands. Those with a
# closed-form derivative avoid an autograd call; the rest get theirs from
# autograd on the elementwise function, which is exact for elementwise maps.
_CLOSED_FORM_DERIVATIVES = {
    nn.Tanh: lambda z, a: 1.0 - a * a,
    nn.Sigmoid: lambda z, a: a * (1.0 - a),
    nn.ReLU: lambda z, a: (z > 0).to(z.dtype),
}
_ELEMENTWISE = (
    nn.Identity,
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


class StructuredEngine(Engine):
    """Outer-product structure of ``nn.Linear`` layers; no Jacobians at all.

    Supports an ``nn.Sequential`` of ``nn.Linear`` layers and elementwise
    activations (the default MLP is one). Each Linear layer contributes
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
    supported_modules = (
        "an nn.Sequential of nn.Linear layers and elementwise activations"
    )

    def __init__(self, module, parameter_names):
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
            and all(isinstance(c, nn.Identity) for c in list(module)[:first])
        )
        # While only nn.Identity follows the last Linear layer, its signals
        # are the identity (state stores None): the same for every row.
        last = self.layers[-1][0] if self.layers else 0
        self.identity_output = bool(self.layers) and all(
            isinstance(c, nn.Identity) for c in list(module)[last + 1 :]
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
        """Per Linear layer: augmented inputs ``A`` (or None) and signals ``D``."""
        if metric is not None:
            raise NotImplementedError(
                f"The {self.name!r} engine does not take a metric yet."
            )
        inputs, pre_activations, signal = {}, {}, X
        for index, child in enumerate(self.module):
            if isinstance(child, nn.Linear):
                inputs[index] = signal
                weight = parameters.get(f"{index}.weight", child.weight)
                bias = parameters.get(f"{index}.bias", child.bias)
                signal = torch.nn.functional.linear(signal, weight, bias)
            elif not isinstance(child, nn.Identity):
                # An in-place activation must not overwrite the kept z.
                z = signal
                signal = child(z.clone() if getattr(child, "inplace", False) else z)
                pre_activations[index] = (z, signal)
        n, n_outputs = X.shape[0], signal.shape[1]
        # Backward pass of all O output signals at once: G is (n, O, width).
        # While G is still the identity (no activation after the last Linear),
        # G @ W is W itself: a broadcast view, no product.
        G = torch.eye(n_outputs, dtype=X.dtype, device=X.device).expand(n, -1, -1)
        is_identity = True
        signals = {}
        first = self.layers[0][0]
        for index in range(len(self.module) - 1, first - 1, -1):
            child = self.module[index]
            if isinstance(child, nn.Linear):
                # None marks the output layer's identity signals (see contract).
                signals[index] = None if is_identity else G
                if index != first:
                    weight = parameters.get(f"{index}.weight", child.weight)
                    G = weight.expand(n, -1, -1) if is_identity else G @ weight
                    is_identity = False
            elif not isinstance(child, nn.Identity):
                is_identity = False
                G = G * _derivative(child, *pre_activations[index]).unsqueeze(1)
        return [
            (self._augment(inputs[index], w, b, k == 0), signals[index])
            for k, (index, w, b) in enumerate(self.layers)
        ]

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
            else:
                total.addcmul_(signal_gram, input_gram)
        return total

    def contract_vector(self, state_x, state_y, vectors, static=None):
        """``K[i, j] @ vectors[j]`` for every pair: (n, m, O).

        The vectors are folded into Y's signals first (``D_y^T v``, one
        ``(m, width)`` matrix per layer), so no ``O x O`` kernel is formed.
        """
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

    def diagonal(self, state, X):
        """``K(x_i, x_i)`` summed over outputs, row by row: (n,).

        Each layer's term is ``(|a|^2 [+ 1]) * |D|_F^2``: the diagonal of
        :meth:`contract`'s traced kernel without any row-by-row product.
        """
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
        for _, D in state:
            if D is not None:
                return D.shape[1]
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
