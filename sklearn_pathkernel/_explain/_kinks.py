"""Where a piecewise-linear network's activation pattern changes along a step.

Along one step segment ``w(s) = w_t + s (w_{t+1} - w_t)``, ``s`` in [0, 1], a
network built of layers linear in their parameters (Linear, Conv, Embedding,
eval-mode norms' affine part) and piecewise-linear operations (relu,
leaky_relu, hardtanh, relu6, max-pooling, ...) has, at a query row, an
*activation pattern*: which side of each kink every unit is on, which input
each max-pooling window picks. Between two pattern changes the network is a
product of matrices affine in ``s``, so its Jacobian is a polynomial in ``s``
of degree below the number of parameterised layers in the chain, and
Gauss-Legendre with ``n`` nodes integrates it exactly when that degree is at
most ``2n - 1``. Across a change it has a kink, where Gauss-Legendre on the
whole segment converges slowly (docs/design.md, section 4, "Kinks").

The pattern is every discrete decision the forward pass makes, recorded by a
``TorchFunctionMode`` (:class:`PatternRecorder`): the side of each threshold
of the piecewise-linear functions (``torch.relu``, ``F.relu``,
``nn.ReLU``, ``F.hardtanh``, ``torch.clamp``, ``torch.maximum``, ...), the
indices of max-pooling and of ``max``/``sort``/``topk`` along a dimension,
and the result of every tensor comparison (``z > 0`` in
``torch.where(z > 0, z, 0.1 * z)``). It catches functional calls inside a
user's ``forward`` as well as modules.

:func:`segment_kinks` finds, for each query row, the points of (0, 1) where
its pattern changes: patterns on a grid of ``GRID + 1`` shared points bracket
them; every bracket whose ends differ is narrowed, all (row, bracket) pairs
at once and each row at its own point (a batched forward through
:class:`RowPoints` when every parameter enters affinely, else
``torch.func.vmap`` with a copy of the parameters per row), to the first
point where the pattern departs from the bracket's start, to rounding (until
the interval stops shrinking in the network's dtype); the search then
repeats from that point until the pattern agrees with the bracket's end.
A first-layer unit's pre-activation is affine in ``s``, so it crosses zero
once at most and its crossing is always found; a deeper unit that crosses
and crosses back inside one bracket (1/16 of a step) would be missed.
:func:`piece_rounds` and :func:`in_chunks` then give each row the nodes and
weights of its pieces.
"""

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap
from torch.overrides import TorchFunctionMode

from .._model._network import InputAdapter, forward_at
from ..engines import TORCH_FUNC_LOCK

#: Brackets per step segment: patterns are first compared at GRID + 1 points.
GRID = 16
#: Sections each pass of the kink search cuts an interval into.
SECTIONS = 4
#: Kinks searched in one bracket before the search gives up with a warning.
MAX_KINKS_PER_BRACKET = 256
#: Elements of per-row parameters materialised by one vmapped evaluation.
_CHUNK_ELEMENTS = 2**23


def _arg(args, kwargs, position, name, default=None):
    """A function's argument, passed by position or by name."""
    if len(args) > position:
        return args[position]
    return kwargs.get(name, default)


def _sides(z, *bounds):
    """Which side of each bound the entries of ``z`` are on (None: no bound)."""
    return [z > bound for bound in bounds if bound is not None]


def _sign(args, kwargs):
    return _sides(args[0], 0.0)


def _hardtanh(args, kwargs):
    low = _arg(args, kwargs, 1, "min_val", -1.0)
    return _sides(args[0], low, _arg(args, kwargs, 2, "max_val", 1.0))


def _clamp(args, kwargs):
    low = _arg(args, kwargs, 1, "min")
    return _sides(args[0], low, _arg(args, kwargs, 2, "max"))


def _shrink(args, kwargs):
    lambd = _arg(args, kwargs, 1, "lambd", 0.5)
    return _sides(args[0], -lambd, lambd)


def _larger(args, kwargs):
    other = _arg(args, kwargs, 1, "other")
    return [args[0] > other] if torch.is_tensor(other) else []


def _fixed(*bounds):
    return lambda args, kwargs: _sides(args[0], *bounds)


def _pooled(with_indices):
    return lambda args, kwargs: [with_indices(*args, **kwargs)[1]]


def _output(args, kwargs, out):
    """A comparison's, a sign's or an argmax's result: the decision itself."""
    return [out] if torch.is_tensor(out) else []


def _chosen(args, kwargs, out):
    """Which entries a max, min, sort or topk picks."""
    if isinstance(out, tuple) and hasattr(out, "indices"):  # along a dim
        return [out.indices]
    if len(args) == 1 and not kwargs and torch.is_tensor(out):
        return [args[0] == out]  # a full reduction: which entry it is
    return []  # max(a, b): the before rule has it


def _second(name):
    return lambda args, kwargs: _sides(args[0], _arg(args, kwargs, 1, name))


def _functions(owners, names):
    """The functions of ``names`` that the torch build has, on every owner."""
    found = []
    for owner in owners:
        found += [getattr(owner, n) for n in names if hasattr(owner, n)]
    return found


def _with_inplace(*names):
    return [*names, *(name + "_" for name in names)]


def _rules():
    """``(before, after)``: patterns from a call's arguments, and from its output.

    ``before`` rules read the input before the call (in-place activations
    overwrite it).
    """
    everywhere = (torch, torch.Tensor, F)
    sign = _with_inplace("relu", "leaky_relu", "rrelu", "abs", "elu", "celu", "selu")
    table = [
        (sign + ["prelu", "absolute", "__abs__"], _sign),
        (_with_inplace("hardtanh"), _hardtanh),
        (_with_inplace("clamp", "clip"), _clamp),
        (_with_inplace("relu6"), _fixed(0.0, 6.0)),
        (_with_inplace("hardsigmoid", "hardswish"), _fixed(-3.0, 3.0)),
        (["hardshrink", "softshrink"], _shrink),
        (_with_inplace("threshold"), _second("threshold")),
        (_with_inplace("clamp_min"), _second("min")),
        (_with_inplace("clamp_max"), _second("max")),
        (["maximum", "minimum", "fmax", "fmin", "max", "min"], _larger),
    ]
    before = {}
    for names, rule in table:
        before.update({f: rule for f in _functions(everywhere, names)})
    pools = ["max_pool1d", "max_pool2d", "max_pool3d"]
    for name in pools + ["adaptive_" + pool for pool in pools]:
        with_indices = getattr(F, name + "_with_indices", None)
        if with_indices is None:
            continue
        for function in _functions((torch, F), [name, name + "_with_indices"]):
            before[function] = _pooled(with_indices)
    comparisons = ["gt", "lt", "ge", "le", "eq", "ne", "greater", "less"]
    comparisons += ["greater_equal", "less_equal", "not_equal"]
    comparisons += [f"__{c}__" for c in ["gt", "lt", "ge", "le", "eq", "ne"]]
    comparisons += ["sign", "sgn", "heaviside", "argmax", "argmin", "argsort"]
    after = {f: _output for f in _functions(everywhere, comparisons)}
    chosen = ["max", "min", "sort", "topk", "kthvalue", "median"]
    after.update({f: _chosen for f in _functions(everywhere, chosen)})
    return before, after


_BEFORE, _AFTER = _rules()


class PatternRecorder(TorchFunctionMode):
    """Records every discrete decision of the forward passes it sees.

    Used as a context manager around a forward pass; ``patterns`` then
    holds the recorded tensors in call order and ``names`` the names of the
    functions that made decisions.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._explain._kinks import PatternRecorder
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
    >>> with PatternRecorder() as recorder:
    ...     _ = net(torch.zeros(4, 2))
    >>> recorder.names, recorder.flat().shape
    ({'relu'}, torch.Size([12]))
    """

    def __init__(self):
        super().__init__()
        self.patterns = []
        self.names = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rule = _rule(_BEFORE, func)
        if rule is not None:
            self._keep(func, rule(args, kwargs))
        out = self._call(func, args, kwargs)
        rule = _rule(_AFTER, func)
        if rule is not None:
            self._keep(func, rule(args, kwargs, out))
        return out

    def _call(self, func, args, kwargs):
        return func(*args, **kwargs)

    def _keep(self, func, patterns):
        if patterns:
            self.patterns += patterns
            self.names.add(getattr(func, "__name__", repr(func)))

    def flat(self, rows=None):
        """Every recorded pattern as int64: one vector, or (rows, P) per row.

        Per row (a batched forward), patterns that are not per row (a
        constant mask) are left out: they cannot change along a segment.
        """
        if rows is None:
            kept = [p.reshape(-1) for p in self.patterns]
        else:
            kept = [p.reshape(rows, -1) for p in self.patterns if _per_row(p, rows)]
        if not kept:
            return torch.zeros((0,) if rows is None else (rows, 0), dtype=torch.int64)
        return torch.cat([p.to(torch.int64) for p in kept], -1)


def _per_row(pattern, rows):
    return pattern.ndim > 0 and pattern.shape[0] == rows


def _rule(rules, func):
    try:
        return rules.get(func)
    except TypeError:  # an unhashable callable: no rule of ours
        return None


def _affine_slots():
    """Functions linear in their weight and bias: where those sit in a call."""
    layers = ["linear", "conv1d", "conv2d", "conv3d", "embedding"]
    layers += ["conv_transpose1d", "conv_transpose2d", "conv_transpose3d"]
    slots = {f: ((1, "weight"), (2, "bias")) for f in _functions((torch, F), layers)}
    norms = {"batch_norm": 3, "instance_norm": 3, "layer_norm": 2, "group_norm": 2}
    for name, weight in norms.items():
        for function in _functions((torch, F), [name]):
            slots[function] = ((weight, "weight"), (weight + 1, "bias"))
    return slots


def _each_argument():
    """Functions affine in each tensor argument: True where ``f(0) = 0``."""
    everywhere = (torch, torch.Tensor)
    linear = ["matmul", "mm", "bmm", "mul", "expand", "__matmul__", "__rmatmul__"]
    linear += ["__mul__", "__rmul__"]
    shifts = ["add", "sub", "__add__", "__radd__", "__sub__", "__rsub__"]
    each = {f: True for f in _functions(everywhere, linear)}
    each.update({f: False for f in _functions(everywhere, shifts)})
    return each


_AFFINE, _EACH = _affine_slots(), _each_argument()


class NotAffine(Exception):
    """A parameter enters the forward pass otherwise than affinely, per row."""


class RowPoints(PatternRecorder):
    """A batched forward in which row ``i`` sees the parameters at ``s[i]``.

    The parameters passed to the forward must be ``start`` itself (the
    same tensors). A function affine in the parameters it is given (a
    layer's weight and bias, or one operand of ``matmul``, ``mul``,
    ``expand``, ``add``...) gives, at ``start + s delta``,
    ``f(start) + s (f(delta) - f(0))`` on each row: two or three
    evaluations at shared parameters, where ``torch.func.vmap`` would copy
    every parameter per row. Any other use of a parameter, or an output
    whose first dimension is not the rows, raises :class:`NotAffine`.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._explain._kinks import RowPoints
    >>> net = torch.nn.Linear(1, 1)
    >>> start = {"weight": torch.ones(1, 1), "bias": torch.zeros(1)}
    >>> delta = {"weight": torch.ones(1, 1), "bias": torch.ones(1)}
    >>> s = torch.tensor([0.0, 0.5, 1.0])
    >>> with RowPoints(start, delta, s):  # 3 rows of x = 2: (1 + s) 2 + s
    ...     out = torch.func.functional_call(net, start, (torch.full((3, 1), 2.0),))
    >>> out.flatten()
    tensor([2.0000, 3.5000, 5.0000])
    """

    def __init__(self, start, delta, s):
        super().__init__()
        self.moves = {id(start[n]): delta[n] for n in start}
        self.s = s

    def _call(self, func, args, kwargs):
        moved = [a for a in (*args, *kwargs.values()) if self._moves(a)]
        if not moved:
            if any(self._moves(a) for a in _nested(args, kwargs)):
                raise NotAffine("a parameter inside a list")
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        moved_args, moved_kwargs = self._swap(args, kwargs, lambda t: self.moves[id(t)])
        change = func(*moved_args, **moved_kwargs)
        if not self._linear(func, args, kwargs, moved):
            zero_args, zero_kwargs = self._swap(args, kwargs, torch.zeros_like)
            change = change - func(*zero_args, **zero_kwargs)
        if not self._rows(func, args, kwargs, out):
            raise NotAffine("an output whose first dimension is not the rows")
        return out + self.s.reshape(-1, *[1] * (out.ndim - 1)) * change

    def _moves(self, a):
        return torch.is_tensor(a) and id(a) in self.moves

    def _rows(self, func, args, kwargs, out):
        """Whether ``out`` runs over the rows, as an input other than a
        parameter does (or a parameter expanded to them)."""
        n = len(self.s)
        if not torch.is_tensor(out) or out.ndim == 0 or len(out) != n:
            return False
        inputs = [a for a in (*args, *kwargs.values()) if torch.is_tensor(a)]
        by_rows = [a for a in inputs if not self._moves(a) and a.ndim and len(a) == n]
        return bool(by_rows) or getattr(func, "__name__", "") == "expand"

    def _linear(self, func, args, kwargs, moved):
        """Whether ``func`` is linear (``f(0) = 0``) in the moving parameters.

        Raises :class:`NotAffine` when it is not even affine in them.
        """
        name = getattr(func, "__name__", repr(func))
        if _rule(_AFFINE, func) is not None:
            slots = [_arg(args, kwargs, i, n) for i, n in _AFFINE[func]]
            if any(all(t is not u for u in slots) for t in moved):
                raise NotAffine(f"a parameter outside {name}'s weight and bias")
            weight, bias = slots
            return self._moves(weight) and (bias is None or self._moves(bias))
        if _rule(_EACH, func) is None or len(moved) > 1:
            raise NotAffine(f"a parameter in {name}")
        return _EACH[func]

    def _swap(self, args, kwargs, replace):
        """``(args, kwargs)`` with each moving parameter replaced."""

        def one(a):
            return replace(a) if self._moves(a) else a

        return [one(a) for a in args], {k: one(v) for k, v in kwargs.items()}


def _nested(args, kwargs):
    """The tensors inside the lists and tuples among a call's arguments."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, (list, tuple)):
            yield from _nested(a, {})
        else:
            yield a


def probe(module, start, X):
    """What :func:`segment_kinks` can do with ``module``.

    Parameters
    ----------
    module : torch.nn.Module
    start : dict of str to torch.Tensor
        The parameters (the path's first point, say).
    X : torch.Tensor of shape (n, n_features)
        A few rows (two are used).

    Returns
    -------
    names : list of str
        The functions that make discrete decisions; empty for a smooth
        network, which has no kinks (and then ``batched`` is False).
    batched : bool
        Whether patterns at per-row points come from a batched forward
        (every parameter enters a layer linear in it); otherwise each row
        gets its own parameters through ``torch.func.vmap``.

    Raises
    ------
    Exception
        When there are decisions, whatever the forward raises under
        ``torch.func.vmap``: a module that cannot be evaluated row by row.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._explain._kinks import probe
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Hardtanh(),
    ...                           torch.nn.Linear(3, 1))
    >>> start = {n: p.detach() for n, p in net.named_parameters()}
    >>> probe(net, start, torch.randn(2, 2))
    (['hardtanh'], True)
    """
    with TORCH_FUNC_LOCK, torch.no_grad(), PatternRecorder() as recorder:
        forward_at(module, start, X[:2])
    if not recorder.names:
        return [], False

    def one_row(x):
        return forward_at(module, start, x.unsqueeze(0))

    with TORCH_FUNC_LOCK, torch.no_grad():
        vmap(one_row)(X[:2])
        batched = _batched_agrees(module, start, X[:2])
    return sorted(recorder.names), batched


def probe_direction(parameters):
    """A fixed random direction as large as the parameters, tensor by tensor.

    What per-row points are checked along: a use of the parameters that
    :class:`RowPoints` does not follow shows up in full, however little a
    step of the path moves them.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._explain._kinks import probe_direction
    >>> direction = probe_direction({"w": torch.ones(3)})
    >>> direction["w"].shape
    torch.Size([3])
    """
    generator = torch.Generator().manual_seed(0)
    direction = {}
    for name, p in parameters.items():
        draw = torch.randn(p.shape, generator=generator, dtype=torch.float64)
        size = p.detach().abs().mean().item() + 1.0
        direction[name] = (size * draw).to(p)
    return direction


def _batched_agrees(module, start, X):
    """Whether the batched forward of :class:`RowPoints` is the network's."""
    delta = probe_direction(start)
    s = torch.linspace(0.25, 0.75, X.shape[0], dtype=X.dtype, device=X.device)
    try:
        with RowPoints(start, delta, s):
            batched = forward_at(module, start, X)
    except NotAffine:
        return False
    direct = torch.cat(
        [
            forward_at(module, {n: start[n] + a * delta[n] for n in start}, x[None])
            for a, x in zip(s, X)
        ]
    )
    scale = direct.abs().max().item() + 1.0
    tolerance = 1e-8 if X.dtype == torch.float64 else 1e-3
    return bool((batched - direct).abs().max() <= tolerance * scale)


def patterns(module, start, delta, s, X, *, batched):
    """Each row's pattern at its own point ``start + s[i] * delta``: (n, P) int64.

    ``batched``: one forward through :class:`RowPoints`; otherwise ``vmap``
    over (``s``, rows), in chunks that bound the per-row parameters it
    materialises.
    """
    if batched:
        with TORCH_FUNC_LOCK, torch.no_grad(), RowPoints(start, delta, s) as mode:
            forward_at(module, start, X)
        return mode.flat(rows=X.shape[0])

    def one_row(s_i, x):
        point = {n: start[n] + s_i * delta[n] for n in start}
        with PatternRecorder() as recorder:
            forward_at(module, point, x.unsqueeze(0))
        return recorder.flat()

    d = sum(p.numel() for p in start.values())
    chunk = max(1, _CHUNK_ELEMENTS // max(d, 1))
    with TORCH_FUNC_LOCK, torch.no_grad():
        parts = [
            vmap(one_row)(s[i : i + chunk], X[i : i + chunk])
            for i in range(0, len(s), chunk)
        ]
    return torch.cat(parts)


def segment_kinks(module, start, end, X, *, batched=False):
    """Where each row's pattern changes along ``start -> end``.

    Parameters
    ----------
    module : torch.nn.Module
    start, end : dict of str to torch.Tensor
        The segment's ends (``w_t`` and ``w_{t+1}``).
    X : torch.Tensor of shape (n, n_features)
        Query rows, on the parameters' device.
    batched : bool, default=False
        Evaluate patterns by a batched forward (see :func:`probe`).

    Returns
    -------
    kinks : torch.Tensor of float64, shape (n, m)
        Row ``i``'s pattern changes, sorted, padded with 1.0 (the segment's
        end); ``m`` is the most changes of any row (0 when none has any).

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._explain._kinks import segment_kinks
    >>> net = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.ReLU()).double()
    >>> start = {"0.weight": torch.ones(1, 1, dtype=torch.float64),
    ...          "0.bias": torch.tensor([-0.3], dtype=torch.float64)}
    >>> end = {"0.weight": torch.ones(1, 1, dtype=torch.float64),
    ...        "0.bias": torch.tensor([-1.3], dtype=torch.float64)}
    >>> X = torch.tensor([[1.0], [5.0]], dtype=torch.float64)
    >>> segment_kinks(net, start, end, X)  # 1 - 0.3 - s = 0 at s = 0.7
    tensor([[0.7000],
            [1.0000]], dtype=torch.float64)
    """
    dtype = next(iter(start.values())).dtype
    delta = {n: end[n] - start[n] for n in start}
    n = X.shape[0]
    grid = torch.linspace(0, 1, GRID + 1, dtype=dtype, device=X.device)
    search = _Search(module, start, delta, X, batched)
    at_grid = search.pattern(
        torch.arange(n, device=X.device).repeat(GRID + 1), grid.repeat_interleave(n)
    ).reshape(GRID + 1, n, -1)
    g, rows = (at_grid[:-1] != at_grid[1:]).any(2).nonzero(as_tuple=True)
    found = search.all_kinks(
        rows, grid[g], grid[g + 1], at_grid[g, rows], at_grid[g + 1, rows]
    )
    return _padded(found, n)


class _Search:
    """The bisection of :func:`segment_kinks`, on (row, bracket) pairs."""

    def __init__(self, module, start, delta, X, batched):
        self.module, self.start, self.delta, self.X = module, start, delta, X
        self.batched = batched

    def pattern(self, rows, s):
        return patterns(
            self.module, self.start, self.delta, s, self.X[rows], batched=self.batched
        )

    def all_kinks(self, rows, lo, end, pattern_lo, pattern_end):
        """Every change in each bracket ``[lo, end]``: a list of (rows, points)."""
        found = []
        for _ in range(MAX_KINKS_PER_BRACKET):
            if rows.numel() == 0:
                return found
            hi, pattern_hi = self.first_change(rows, lo, end, pattern_lo, pattern_end)
            found.append((rows, hi))
            more = (pattern_hi != pattern_end).any(1) & (hi < end)
            rows, lo, end = rows[more], hi[more], end[more]
            pattern_lo, pattern_end = pattern_hi[more], pattern_end[more]
        warnings.warn(
            f"The kink search stopped after {MAX_KINKS_PER_BRACKET} pattern "
            "changes within 1/16 of one step, at some query rows: the exact "
            "decomposition integrates across the rest with Gauss-Legendre "
            "nodes, and the result's error attribute reports the gap.",
            UserWarning,
            stacklevel=4,
        )
        return found

    def first_change(self, rows, lo, hi, pattern_lo, pattern_hi):
        """Narrow each ``[lo, hi]`` to where the pattern first leaves ``pattern_lo``.

        Each pass evaluates ``SECTIONS - 1`` inner points of every interval
        still wider than rounding and keeps the section where the pattern
        first differs: bisection, ``log2(SECTIONS)`` halvings per pass.
        Returns ``hi`` within rounding of that point, and the pattern there.
        """
        lo, hi, pattern_hi = lo.clone(), hi.clone(), pattern_hi.clone()
        fractions = torch.arange(1, SECTIONS, dtype=lo.dtype, device=lo.device)
        fractions /= SECTIONS
        while True:
            mid = (lo + hi) / 2
            active = ((mid > lo) & (mid < hi)).nonzero(as_tuple=True)[0]
            if active.numel() == 0:
                return hi, pattern_hi
            a, b = lo[active, None], hi[active, None]
            points = (a + (b - a) * fractions).clamp_(a, b)  # (k, SECTIONS - 1)
            at = self.pattern(
                rows[active].repeat_interleave(SECTIONS - 1), points.reshape(-1)
            ).reshape(len(active), SECTIONS - 1, -1)
            differs = (at != pattern_lo[active, None]).any(2)
            # The first inner point that differs, or SECTIONS - 1 for none.
            first = torch.where(differs.any(1), differs.int().argmax(1), SECTIONS - 1)
            inner = torch.cat([a, points, b], 1)  # the section's ends
            picked = torch.arange(len(active), device=lo.device)
            lo[active] = inner[picked, first]
            hi[active] = inner[picked, first + 1]
            moved = (first < SECTIONS - 1).nonzero(as_tuple=True)[0]
            pattern_hi[active[moved]] = at[moved, first[moved]]


def _padded(found, n):
    """(row, point) lists as sorted float64 rows padded with 1.0: (n, m)."""
    if not found:
        return torch.ones((n, 0), dtype=torch.float64)
    rows = torch.cat([r for r, _ in found]).cpu()
    points = torch.cat([p for _, p in found]).double().cpu()
    counts = torch.bincount(rows, minlength=n)
    kinks = torch.ones((n, int(counts.max())), dtype=torch.float64)
    order = torch.argsort(rows * 2.0 + points, stable=True)  # by row, then s
    rows, points = rows[order], points[order]
    first = torch.cumsum(counts, 0) - counts
    kinks[rows, torch.arange(len(rows)) - first[rows]] = points
    return kinks


#: Layers of a chain that carry no parameter and keep each piece's degree.
_PIECEWISE_LINEAR = (
    nn.ReLU, nn.LeakyReLU, nn.Hardtanh, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.AvgPool1d,
    nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout,
)  # fmt: skip
#: Layers affine in their parameters (and, on each piece, in their input).
_AFFINE_LAYERS = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d,
    nn.BatchNorm3d, nn.Embedding, nn.PReLU,
)  # fmt: skip


def chain_layers(module):
    """The parameterised layers of a chain, or None for another network.

    For an ``nn.Sequential`` (nested ones included, an :class:`InputAdapter`
    around it allowed) of layers affine in their trainable parameters and
    piecewise-linear or linear layers without parameters, the count ``L``
    of layers whose parameters train: on each piece between kinks the
    Jacobian is a polynomial of degree ``L - 1`` at most, which
    ``ceil(L / 2)`` Gauss-Legendre nodes integrate exactly.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._explain._kinks import chain_layers
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(),
    ...                           torch.nn.Linear(3, 1))
    >>> chain_layers(net), chain_layers(torch.nn.Sequential(torch.nn.Tanh()))
    (2, None)
    """
    if type(module) is InputAdapter:
        module = module.module
    if type(module) in _AFFINE_LAYERS:  # not a subclass: its own forward
        return int(any(p.requires_grad for p in module.parameters()))
    if type(module) in _PIECEWISE_LINEAR:
        return 0
    if type(module) is not nn.Sequential:
        return None
    counts = [chain_layers(child) for child in module]
    return None if None in counts else sum(counts)


def piece_rounds(kinks, nodes, weights):
    """Per-row quadrature over the pieces between kinks, in rounds.

    Round ``(j, q)`` takes node ``q`` of piece ``j`` at every row that has a
    ``j``-th piece of positive length.

    Parameters
    ----------
    kinks : torch.Tensor of float64, shape (n, m)
        From :func:`segment_kinks`.
    nodes, weights : list of float
        Gauss-Legendre nodes in [0, 1] and weights summing to 1.

    Returns
    -------
    rounds : list of (rows, s, w)
        Row indices (int64), their points ``s`` in [0, 1] and weights ``w``
        (float64): ``sum_rounds w J(x; w(s))`` is ``Jbar`` at each row.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._explain._kinks import piece_rounds
    >>> kinks = torch.tensor([[0.25], [1.0]], dtype=torch.float64)
    >>> for rows, s, w in piece_rounds(kinks, [0.5], [1.0]):
    ...     print(rows.tolist(), s.tolist(), w.tolist())
    [0, 1] [0.125, 0.5] [0.25, 1.0]
    [0] [0.625] [0.75]
    """
    n = kinks.shape[0]
    zeros, ones = torch.zeros((n, 1)), torch.ones((n, 1))
    edges = torch.cat([zeros.double(), kinks, ones.double()], 1)
    rounds = []
    for a, b in zip(edges.T[:-1], edges.T[1:]):
        rows = (b > a).nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        width = (b - a)[rows]
        for node, weight in zip(nodes, weights):
            rounds.append((rows, a[rows] + node * width, weight * width))
    return rounds


def in_chunks(rounds, size):
    """:func:`piece_rounds`' (row, point, weight) triples in chunks of ``size``.

    A row may appear several times in a chunk (several of its nodes): its
    terms are added up by whoever adds the chunk (``index_add_``).

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._explain._kinks import in_chunks, piece_rounds
    >>> kinks = torch.tensor([[0.25], [1.0]], dtype=torch.float64)
    >>> for rows, s, w in in_chunks(piece_rounds(kinks, [0.5], [1.0]), 2):
    ...     print(rows.tolist(), s.tolist(), w.tolist())
    [0, 1] [0.125, 0.5] [0.25, 1.0]
    [0] [0.625] [0.75]
    """
    if not rounds:
        return []
    rows, s, w = (torch.cat(parts) for parts in zip(*rounds))
    return [
        (rows[i : i + size], s[i : i + size], w[i : i + size])
        for i in range(0, len(rows), size)
    ]
