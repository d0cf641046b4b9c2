"""The layer-hook engine: per-layer rules on any module graph.

Forward hooks keep each parametrised layer's input and one backward pass,
``vmap``-ed over the ``O`` output seeds, gives its output signals for all
outputs at once (``_recording.py``); a rule per layer type turns them into
that layer's share of the tangent kernel (``_rules.py``, ``_attention.py``,
``_fallback.py``), kept in ghost form or instantiated by a cost rule
(``_ghost.py``), as a probe forward planned (``_plan.py``). No per-example
Jacobian of the whole network ever exists (docs/design.md, section 7.6). In
a diagonal metric (the path of Adam) ghost terms take the forms of
``_metric.py``.

FLOPs per checkpoint: ``2 n m`` times, per layer, the smaller of the ghost
cost ``P Q (h_in + O h_out)`` and the instantiated ``O h_in h_out`` (the
whole instantiated part is one matrix product). Memory per row: the ghost
layers' ``P (h_in + O h_out)`` numbers and ``O`` per instantiated
parameter, plus the forward activations and signals while a state is
built; ghost products go in sub-blocks of at most ``_ghost.GHOST_SCRATCH``
numbers, a fixed grid, so results are bit-identical across budgets. On
a device (CUDA, or the device policy forced for tests) the sub-blocks grow
to the tile pair's size, and an embedding fed by the rows themselves finds
its matching tokens once per pair of blocks (:meth:`HookEngine.static`),
so no checkpoint waits for the host.
"""

from torch import nn

from ..._compute._blocking import TILE_ROWS
from .._base import Engine
from . import _ghost
from ._fallback import quiet_looped_attention
from ._ghost import contract_ghost, ghost_diagonal, ghost_sketch, token_matches
from ._metric import (
    contract_gradients,
    contract_pairwise,
    gradient_sketch,
    pairwise_diagonal,
    pairwise_sketch,
)
from ._plan import Plan, check_rows_deterministic, own_parameters
from ._recording import build_state
from ._rules import RULES

#: Rows of an instantiated ``vec G`` or of a ghost layer's ``vec D`` per
#: sketch piece, as in the structured engine.
SKETCH_ROWS = 8192


class HookEngine(Engine):
    """Forward hooks and one batched backward; a rule per layer type.

    A state holds, per ghost layer (or group of a grouped convolution), its
    inputs ``A`` (n, P, h_in [+ 1]), or the token ids of an embedding, and
    signals ``D`` (n, P, O, h_out); and the instantiated per-example
    gradients of every other trained parameter, concatenated, (n, O, k).
    In a metric (``state(..., metric=)``, the path of Adam) the instantiated
    gradients are scaled by its ``sqrt`` and each ghost term takes its form
    in a metric (``_metric.py``). Which layers are ghost, where each
    tensor's row axis is and how much a row costs come from a probe forward
    on two and three copies of one row (``example``, or the first rows the
    engine sees).

    Parameters
    ----------
    module : torch.nn.Module
    parameter_names : list of str
    example : torch.Tensor, default=None
        A row (or rows) of the input, ``(n, *input_shape)``: lets
        :meth:`bytes_per_row` and :meth:`sketch_shapes` answer before any
        state exists (``select_engine`` passes it).
    metric : bool, default=False
        Whether states will be taken in a metric: :meth:`bytes_per_row` then
        counts the gradients that ghost terms instantiate in one (a state
        taken in a metric sets it too).

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel.engines import HookEngine
    >>> net = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.Flatten(),
    ...                           torch.nn.Linear(8, 1))
    >>> params = {n: p.detach() for n, p in net.named_parameters()}
    >>> engine = HookEngine(net, list(params))
    >>> X = torch.randn(5, 1, 6)
    >>> state = engine.state(params, X)
    >>> engine.contract(state, state, trace=True).shape
    torch.Size([5, 5])
    >>> metric = {n: torch.rand(p.shape) + 0.5 for n, p in params.items()}
    >>> state = engine.state(params, X, metric=metric)
    >>> engine.diagonal(state, X).shape
    torch.Size([5])
    """

    name = "hooks"
    supports_metric = True
    supported_modules = (
        "a module whose parametrised layers are Linear, Conv1d, Conv2d, "
        "Embedding, LayerNorm, GroupNorm, BatchNorm or MultiheadAttention"
    )

    def __init__(self, module, parameter_names, *, example=None, metric=False):
        self.module = module
        self.parameter_names = list(parameter_names)
        self.metric = bool(metric)
        self.plan = None
        quiet_looped_attention()  # here, on the caller's thread
        if example is not None:
            self._make_plan(example)

    @classmethod
    def supports(cls, module):
        """Any module with parameters: layers without a rule fall back."""
        return any(True for _ in module.parameters())

    @classmethod
    def covers(cls, module):
        """Whether every directly parametrised submodule has a rule.

        ``engine="auto"`` picks the hooks engine only then; a module with an
        unusual layer still runs exactly with ``engine="hooks"`` (that
        layer through the per-layer fallback).
        """
        owners = [m for m in module.modules() if own_parameters(m)]
        if not owners:
            return False
        inside_attention = {
            id(sub)
            for m in module.modules()
            if isinstance(m, nn.MultiheadAttention)
            for sub in m.modules()
            if sub is not m
        }
        return all(
            isinstance(m, (*RULES, nn.MultiheadAttention)) or id(m) in inside_attention
            for m in owners
        )

    # ----------------------------------------------------------------- plan

    def _make_plan(self, example):
        """Probe the module: which layers run, their rules, axes and sizes."""
        check_rows_deterministic(self.module)
        self.plan = Plan(self.module, self.parameter_names, example)

    def _require_plan(self, what):
        if self.plan is None:
            raise RuntimeError(
                f"The hooks engine needs an example row before {what}: build it "
                "with select_engine(..., example=X[:1]) or call state() first."
            )
        return self.plan

    def bytes_per_row(self, n_outputs, itemsize):
        plan = self._require_plan("bytes_per_row")
        # The state, and about as much again for the forward activations,
        # the graph and the signals alive while it is built; the ghost
        # scratch counted against a full tile.
        numbers = plan.metric_numbers_per_row if self.metric else plan.numbers_per_row
        return 2 * numbers * itemsize + _ghost.GHOST_SCRATCH * 8 // TILE_ROWS

    # ---------------------------------------------------------------- state

    def state(self, parameters, X, metric=None):
        """Ghost terms ``(A, D)`` and instantiated gradients of the rows ``X``.

        With a ``metric``, every product of the state is the one in it.
        """
        if self.plan is None:
            self._make_plan(X[:1])
        check_rows_deterministic(self.module)
        if metric is not None:
            self.metric = True
        return build_state(self, parameters, X, metric)

    def static(self, X, Y):
        """The matching tokens of embeddings fed by the rows themselves, or None.

        Found once per pair of blocks (their number is read on the host)
        and used at every checkpoint, so no contraction waits for the
        device. A slice of it (``static[:, batch]``) is None: the
        contraction then finds them itself (on a device, every position
        pair instead).
        """
        if self.plan is None:
            self._make_plan(X[:1])
        matches = {
            index: token_matches(X.reshape(len(X), -1), Y.reshape(len(Y), -1))
            for index, term in enumerate(self.plan.ghosts)
            if term.from_input
        }
        return TokenMatches(matches) if matches else None

    # ------------------------------------------------------------- contract

    def contract(self, state_x, state_y, trace, static=None):
        """Instantiated Gram plus every ghost term: (n, m) or (n, m, O, O)."""
        mode = "trace" if trace else "full"
        return self._contract(state_x, state_y, mode, static=static)

    def _contract(self, state_x, state_y, mode, vectors=None, static=None):
        G_x, G_y = state_x["inst"], state_y["inst"]
        total = None
        if G_x is not None:
            total = contract_gradients(G_x, G_y, mode, vectors)
        matches = static.matches if isinstance(static, TokenMatches) else {}
        for index, (term, form, tx, ty) in enumerate(
            zip(self.plan.ghosts, _forms(state_x), state_x["ghost"], state_y["ghost"])
        ):
            if form == "ghost":
                found = matches.get(index)
                part = contract_ghost(term, tx, ty, mode, vectors, found)
            elif form == "pairwise":
                part = contract_pairwise(tx, ty, mode, vectors)
            else:  # sqrt(S) * G: (n, O, h_out, h_in)
                part = contract_gradients(tx.flatten(2), ty.flatten(2), mode, vectors)
            total = part if total is None else total.add_(part)
        return total

    def contract_vector(self, state_x, state_y, vectors, static=None):
        """``K[i, j] @ vectors[j]``: (n, m, O), ``v`` folded into Y's side first."""
        return self._contract(state_x, state_y, "vector", vectors, static)

    def folded_state(self, parameters, X, vectors, metric=None):
        """:meth:`state` of ``vectors . f``: one backward seeded with them."""
        if self.plan is None:
            self._make_plan(X[:1])
        check_rows_deterministic(self.module)
        if metric is not None:
            self.metric = True
        return build_state(self, parameters, X, metric, vectors=vectors)

    def diagonal(self, state, X):
        """``sum_o |G_o(x)|^2`` per row, ghost layers by per-row position Grams."""
        G = state["inst"]
        total = (G * G).sum(dim=(1, 2)) if G is not None else None
        for term, form, t in zip(self.plan.ghosts, _forms(state), state["ghost"]):
            if form == "ghost":
                part = ghost_diagonal(term, *t)
            elif form == "pairwise":
                part = pairwise_diagonal(*t)
            else:
                part = (t * t).sum(dim=(1, 2, 3))
            total = part if total is None else total + part
        return total

    # --------------------------------------------------------------- sketch

    def sketch_shapes(self, n_outputs):
        """Blocks of the instantiated ``vec G``, then ``(O h_out, h_in)`` per ghost.

        A ghost layer's gradient ``sum_p vec d_p (x) a_p`` is sketched as
        ``sum_p (u . vec d_p) (v . a_p)`` (a Kronecker sketch, linear in the
        sum); ``vec D`` longer than :data:`SKETCH_ROWS` is cut into blocks.
        In a metric the same factors sketch ``sqrt(S) * G`` (the Kronecker
        sketch is unbiased for any matrix), rows of it instantiated per piece.
        """
        return [shape for shape, _ in self._pieces(n_outputs)]

    def sketch(self, state, X, piece, factors):
        """Piece ``piece`` of the rows' gradients, sketched: (n, m)."""
        _, (kind, index, start, stop) = self._pieces(state["n_outputs"])[piece]
        if kind == "inst":
            (projection,) = factors
            return state["inst"].flatten(1)[:, start:stop] @ projection
        term, form = self.plan.ghosts[index], _forms(state)[index]
        t = state["ghost"][index]
        if form == "ghost":
            return ghost_sketch(term, *t, start, stop, factors)
        if form == "pairwise":
            return pairwise_sketch(*t, start, stop, factors)
        return gradient_sketch(t.flatten(1, 2)[:, start:stop], factors)

    def _pieces(self, n_outputs):
        plan = self._require_plan("sketch_shapes")
        pieces = []
        total = n_outputs * plan.n_instantiated
        for start in range(0, total, SKETCH_ROWS):
            stop = min(start + SKETCH_ROWS, total)
            pieces.append(((stop - start,), ("inst", None, start, stop)))
        for index, term in enumerate(plan.ghosts):
            rows = n_outputs * term.h_out
            for start in range(0, rows, SKETCH_ROWS):
                stop = min(start + SKETCH_ROWS, rows)
                pieces.append(
                    ((stop - start, term.h_in), ("ghost", index, start, stop))
                )
        return pieces


class TokenMatches:
    """:meth:`HookEngine.static`: matching token pairs per ghost term index.

    Sliced (the decomposition takes ``static[:, batch]`` of a structured
    engine's input Gram), it is None: the pairs belong to whole blocks.
    """

    def __init__(self, matches):
        self.matches = matches

    def __getitem__(self, index):
        return None


def _forms(state):
    """Each ghost term's form in the state: all ``"ghost"`` without a metric."""
    return state["forms"] or ("ghost",) * len(state["ghost"])
