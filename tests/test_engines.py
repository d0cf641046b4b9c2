"""Jacobian engines against the per-example autograd reference."""

import inspect
import warnings

import numpy as np
import pytest
import torch
from _oracle import flat_metric, jacobian_rows, tangent_kernel_reference
from torch import nn

from sklearn_pathkernel._compute import _blocking
from sklearn_pathkernel._model._network import make_mlp
from sklearn_pathkernel.engines import (
    ENGINES,
    Engine,
    JacobianEngine,
    StructuredEngine,
    _jacobian,
    _structured,
    select_engine,
)

# What the blocked loops call: the interface every engine implements.
_INTERFACE = sorted(Engine.__abstractmethods__)


def _mlp(n_features, n_outputs, activation="tanh", bias=True, seed=0):
    net = make_mlp(
        n_features,
        n_outputs,
        (7, 5),
        activation,
        generator=torch.Generator().manual_seed(seed),
    ).double()
    if not bias:
        for layer in net:
            if isinstance(layer, nn.Linear):
                layer.bias = None
    return net


def _params(net):
    return {n: p.detach() for n, p in net.named_parameters()}


def _data(*shapes, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen, dtype=torch.float64) for s in shapes]


def _check_engine(engine, net, params, X, Y):
    bound = select_engine(engine, net, list(params))
    for trace in (True, False):
        with torch.no_grad():  # as the blocked loop calls engines
            state_x, state_y = bound.state(params, X), bound.state(params, Y)
            got = bound.contract(state_x, state_y, trace, bound.static(X, Y))
        want = tangent_kernel_reference(net, params, X, Y, trace=trace)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-12)
    _check_fold(bound, params, X, Y, want)
    _check_sketch(bound, net, params, X, Y)


def _check_fold(bound, params, X, Y, full, metric=None):
    """Folded states: ``u_i^T K(x_i, y_j) v_j`` and ``u^T K(x, x) u``, no O x O."""
    u, v = _data((len(X), full.shape[-1]), (len(Y), full.shape[-1]), seed=5)
    with torch.no_grad():
        state_x = bound.folded_state(params, X, u, metric=metric)
        state_y = bound.folded_state(params, Y, v, metric=metric)
        got = bound.contract(state_x, state_y, True, bound.static(X, Y))
        self_x = bound.contract(state_x, state_x, True, bound.static(X, X))
        diagonal = bound.diagonal(state_x, X)
        # Vectors made from the rows' outputs by the engine's own forward.
        made = bound.folded_state(params, X, torch.sin, metric=metric)
        given = bound.folded_state(
            params,
            X,
            torch.sin(torch.func.functional_call(bound.module, params, X)),
            metric=metric,
        )
        made, given = bound.diagonal(made, X), bound.diagonal(given, X)
    want = np.einsum("ia,ijab,jb->ij", u.numpy(), full, v.numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(diagonal.numpy(), np.diag(self_x), rtol=1e-10)
    np.testing.assert_allclose(made.numpy(), given.numpy(), rtol=1e-12)


def _basis(heights):
    """Factors whose columns run over every tuple of basis vectors.

    With them a sketch is exact, not random: ``sum_r s_r(x) s_r(y)`` is
    ``<T(x), T(y)>`` for a sketch that is multilinear in its factors.
    """
    grids = torch.meshgrid(*[torch.arange(h) for h in heights], indexing="ij")
    return tuple(
        torch.eye(h, dtype=torch.float64)[:, grid.reshape(-1)]
        for h, grid in zip(heights, grids)
    )


def _check_sketch(bound, net, params, X, Y):
    """The pieces' sketches with basis factors sum to the traced kernel."""
    with torch.no_grad():
        n_outputs = net(X[:1]).shape[1]
        state_x, state_y = bound.state(params, X), bound.state(params, Y)
        got = 0.0
        for piece, heights in enumerate(bound.sketch_shapes(n_outputs)):
            factors = _basis(heights)
            s_x = bound.sketch(state_x, X, piece, factors)
            s_y = bound.sketch(state_y, Y, piece, factors)
            assert s_x.shape == (len(X), np.prod(heights))
            got = got + s_x @ s_y.T
    want = tangent_kernel_reference(net, params, X, Y)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("n_outputs", [1, 2, 10])
@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_engine_matches_reference(engine, n_outputs, activation, bias):
    net = _mlp(3, n_outputs, activation, bias)
    X, Y = _data((6, 3), (4, 3))
    _check_engine(engine, net, _params(net), X, Y)


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize(
    "subset",
    [["0.weight"], ["0.bias", "2.weight"], ["2.bias", "4.weight", "4.bias"]],
)
def test_engines_differentiate_only_the_given_parameters(engine, subset):
    net = _mlp(3, 2)
    params = {n: p for n, p in _params(net).items() if n in subset}
    X, Y = _data((5, 3), (3, 3))
    _check_engine(engine, net, params, X, Y)


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("subset", [["4.weight", "4.bias"], ["2.weight"]])
def test_parameters_outside_the_trained_ones_are_held_at_their_values(engine, subset):
    # A checkpoint's whole mapping with a subset trained (a last-layer
    # influence): the frozen layers sit at the checkpoint, not the module.
    net = _mlp(3, 2)
    shifted = {n: p + 0.1 * torch.cos(p) for n, p in _params(net).items()}
    X, Y = _data((5, 3), (3, 3))
    bound = select_engine(engine, net, subset, example=X[:1])
    with torch.no_grad():
        got = bound.contract(
            bound.state(shifted, X), bound.state(shifted, Y), False, bound.static(X, Y)
        )
        moved = _mlp(3, 2)
        moved.load_state_dict(shifted)
    want = tangent_kernel_reference(
        moved, {n: shifted[n] for n in subset}, X, Y, trace=False
    )
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "layers",
    [
        lambda: [nn.Linear(3, 6), nn.GELU(), nn.Linear(6, 2)],
        lambda: [nn.Linear(3, 6), nn.LeakyReLU(0.1, inplace=True), nn.Linear(6, 2)],
        lambda: [nn.Linear(3, 6), nn.Softplus(), nn.Linear(6, 4), nn.Tanh()],
        lambda: [nn.Tanh(), nn.Linear(3, 6), nn.SiLU(), nn.Identity(), nn.Linear(6, 1)],
        lambda: [nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 3), nn.Identity()],
        lambda: [nn.Linear(3, 5), nn.Linear(5, 3), nn.Identity()],
        lambda: [nn.Linear(3, 2)],
        # Dropout is the identity in eval mode, in which kernels are computed.
        lambda: [
            nn.Dropout(0.3),
            nn.Linear(3, 6),
            nn.Tanh(),
            nn.Dropout(0.5),
            nn.Linear(6, 2),
            nn.AlphaDropout(0.2),
        ],
    ],
)
def test_structured_engine_on_user_sequentials(layers):
    torch.manual_seed(0)  # this test's own modules: default init is fine here
    net = nn.Sequential(*layers()).double().eval()
    assert StructuredEngine.supports(net)
    X, Y = _data((6, 3), (5, 3))
    _check_engine("structured", net, _params(net), X, Y)


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 1)

    def forward(self, x):
        return self.b(x + torch.tanh(self.a(x)))


@pytest.mark.parametrize(
    "module, auto",
    [
        (_Residual(), "hooks"),
        (nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1), nn.Linear(4, 1)), "hooks"),
        (nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1)), "hooks"),
        (nn.Bilinear(3, 3, 1), "jacobian"),
        (nn.Sequential(nn.Tanh()), "jacobian"),
    ],
    ids=["residual", "softmax", "layernorm", "bilinear", "no-parameters"],
)
def test_structured_engine_refuses_what_it_cannot_do(module, auto):
    assert not StructuredEngine.supports(module)
    assert select_engine("auto", module, []).name == auto
    with pytest.raises(ValueError, match="The 'structured' engine does not support"):
        select_engine("structured", module, [])


def test_generic_engines_handle_any_module():
    net = _Residual().double()
    X, Y = _data((4, 3), (3, 3))
    for engine in ("jacobian", "ntk_vp"):
        _check_engine(engine, net, _params(net), X, Y)


def test_jacobian_state_is_the_jacobian():
    net = _mlp(3, 2)
    (X,) = _data((5, 3))
    state = JacobianEngine(net, list(_params(net))).state(_params(net), X)
    np.testing.assert_allclose(state.numpy(), jacobian_rows(net, _params(net), X))


def test_auto_picks_the_structured_engine_for_mlps_with_dropout():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(0.2), nn.Linear(4, 1))
    assert select_engine("auto", net, ["0.weight"]).name == "structured"


def test_auto_picks_the_structured_engine_for_mlps():
    assert select_engine("auto", _mlp(2, 1), []).name == "structured"


def test_unknown_engine_is_rejected():
    with pytest.raises(ValueError, match="'engine' parameter must be 'auto' or one"):
        select_engine("magic", _mlp(2, 1), [])


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("n_outputs", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_contract_vector_is_the_kernel_applied_to_vectors(engine, n_outputs, bias):
    net = _mlp(3, n_outputs, "tanh", bias)
    X, Y = _data((5, 3), (4, 3))
    (vectors,) = _data((4, n_outputs), seed=7)
    params = _params(net)
    bound = select_engine(engine, net, list(params))
    with torch.no_grad():
        got = bound.contract_vector(
            bound.state(params, X), bound.state(params, Y), vectors, bound.static(X, Y)
        )
    full = tangent_kernel_reference(net, params, X, Y, trace=False)
    want = np.einsum("ijab,jb->ija", full, vectors.numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_states_at_different_parameters_pair_their_jacobians(engine):
    """J(X; w') J(Y; w)^T, as the exact decomposition needs."""
    net = _mlp(3, 2)
    params = _params(net)
    shifted = {n: p + 0.1 * torch.ones_like(p) for n, p in params.items()}
    X, Y = _data((4, 3), (3, 3))
    (vectors,) = _data((3, 2), seed=3)
    bound = select_engine(engine, net, list(params))
    with torch.no_grad():
        state_x, state_y = bound.state(shifted, X), bound.state(params, Y)
        full = bound.contract(state_x, state_y, False, bound.static(X, Y))
        applied = bound.contract_vector(state_x, state_y, vectors, bound.static(X, Y))
    want = np.einsum(
        "iad,jbd->ijab", jacobian_rows(net, shifted, X), jacobian_rows(net, params, Y)
    )
    np.testing.assert_allclose(full.numpy(), want, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(
        applied.numpy(), np.einsum("ijab,jb->ija", want, vectors.numpy()), rtol=1e-6
    )


def test_the_interface_names_what_the_blocked_loops_call():
    assert _INTERFACE == sorted(
        [
            "bytes_per_row",
            "contract",
            "contract_vector",
            "diagonal",
            "folded_state",
            "sketch",
            "sketch_shapes",
            "state",
            "static",
            "supports",
        ]
    )


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_every_engine_implements_the_whole_interface(name):
    cls = ENGINES[name]
    assert issubclass(cls, Engine) and cls.name == name
    assert not cls.__abstractmethods__  # nothing left abstract
    for method in _INTERFACE:
        defined = inspect.getattr_static(cls, method)
        assert defined is not inspect.getattr_static(Engine, method), method
        # supports is asked of the class, everything else of a bound engine.
        kind = classmethod if method == "supports" else type(lambda: None)
        assert isinstance(defined, kind), method


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_every_engine_is_built_and_picked_alike(name):
    # select_engine builds every engine with the same arguments and asks
    # only covers (a classmethod; supports unless overridden) when picking.
    cls = ENGINES[name]
    assert inspect.signature(cls.__init__) == inspect.signature(Engine.__init__)
    assert isinstance(inspect.getattr_static(cls, "covers"), classmethod)


def test_an_engine_missing_a_method_cannot_be_built():
    class Incomplete(Engine):
        name = "incomplete"

        @classmethod
        def supports(cls, module):
            return True

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("n_outputs", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_diagonal_is_the_reference_diagonal(engine, n_outputs, bias):
    net = _mlp(3, n_outputs, "tanh", bias)
    (X,) = _data((6, 3))
    params = _params(net)
    bound = select_engine(engine, net, list(params))
    with torch.no_grad():
        got = bound.diagonal(bound.state(params, X), X)
    want = np.diag(tangent_kernel_reference(net, params, X))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_long_signals_and_jacobians_are_cut_into_pieces(monkeypatch):
    monkeypatch.setattr(_structured, "SKETCH_ROWS", 4)
    monkeypatch.setattr(_jacobian, "SKETCH_ROWS", 16)
    net = _mlp(3, 3)
    params = _params(net)
    shapes = {
        engine: select_engine(engine, net, list(params)).sketch_shapes(3)
        for engine in ("structured", "jacobian")
    }
    # vec D of the hidden layers: 3 * 7 = 21 and 3 * 5 = 15 rows, by fours;
    # the output layer's identity signals: sqrt(O) [a, 1] alone.
    assert shapes["structured"] == [(4, 4)] * 5 + [(1, 4)] + [(4, 8)] * 3 + [
        (3, 8),
        (6,),
    ]
    total = 3 * sum(p.numel() for p in params.values())  # O d = 258
    assert [h for (h,) in shapes["jacobian"]] == [16] * (total // 16) + [total % 16]
    X, Y = _data((5, 3), (4, 3))
    for engine in shapes:
        _check_engine(engine, net, params, X, Y)


# ------------------------------------------------------------------ metrics
# The path kernel of Adam takes each checkpoint's term in a diagonal metric
# M (docs/design.md, section 12): J(X) diag(M) J(Y)^T.

_METRIC_ENGINES = sorted(n for n, cls in ENGINES.items() if cls.supports_metric)


def _metric(params, seed=5):
    """A random positive metric shaped like ``params``, spread over a decade."""
    gen = torch.Generator().manual_seed(seed)
    return {
        n: 10 ** torch.rand(p.shape, generator=gen, dtype=torch.float64)
        for n, p in params.items()
    }


def _close(got, want):
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * scale)


def _check_metric(engine, net, params, X, Y, bound=None):
    """Every product of the engine's states in a metric, against the oracle."""
    metric = _metric(params)
    bound = bound or select_engine(engine, net, list(params), metric=True)
    full = tangent_kernel_reference(net, params, X, Y, trace=False, metric=metric)
    diagonal = np.diag(tangent_kernel_reference(net, params, X, metric=metric))
    (vectors,) = _data((len(Y), full.shape[-1]), seed=7)
    with torch.no_grad():
        state_x = bound.state(params, X, metric=metric)
        state_y = bound.state(params, Y, metric=metric)
        static = bound.static(X, Y)
        traced = bound.contract(state_x, state_y, True, static)
        whole = bound.contract(state_x, state_y, False, static)
        applied = bound.contract_vector(state_x, state_y, vectors, static)
        own = bound.diagonal(state_x, X)
        sketched = 0.0
        for piece, heights in enumerate(bound.sketch_shapes(full.shape[-1])):
            factors = _basis(heights)
            sketched = (
                sketched
                + bound.sketch(state_x, X, piece, factors)
                @ bound.sketch(state_y, Y, piece, factors).T
            )
    _close(traced.numpy(), np.einsum("ijaa->ij", full))
    _close(whole.numpy(), full)
    _close(applied.numpy(), np.einsum("ijab,jb->ija", full, vectors.numpy()))
    _close(own.numpy(), diagonal)
    # Basis factors make the multilinear sketch exact: sum_r s_r(x) s_r(y) is
    # <T(x), T(y)>, so E over Gaussian factors is the kernel in the metric.
    _close(sketched.numpy(), np.einsum("ijaa->ij", full))
    _check_fold(bound, params, X, Y, full, metric)


def test_the_structured_and_ntk_vp_engines_take_a_metric():
    assert {"structured", "ntk_vp", "jacobian"} <= set(_METRIC_ENGINES)
    assert select_engine("auto", _mlp(2, 1), [], metric=True).name == "structured"


@pytest.mark.parametrize("engine", _METRIC_ENGINES)
@pytest.mark.parametrize("n_outputs", [1, 3])
@pytest.mark.parametrize("activation", ["identity", "tanh"])
@pytest.mark.parametrize("bias", [True, False])
def test_engines_in_a_metric_match_the_reference(engine, n_outputs, activation, bias):
    net = _mlp(3, n_outputs, activation, bias)
    X, Y = _data((6, 3), (4, 3))
    _check_metric(engine, net, _params(net), X, Y)


@pytest.mark.parametrize("engine", _METRIC_ENGINES)
@pytest.mark.parametrize(
    "subset",
    [["0.weight"], ["0.bias", "2.weight"], ["2.bias", "4.weight", "4.bias"]],
)
def test_engines_in_a_metric_differentiate_only_the_given_parameters(engine, subset):
    net = _mlp(3, 2)
    params = {n: p for n, p in _params(net).items() if n in subset}
    X, Y = _data((5, 3), (3, 3))
    _check_metric(engine, net, params, X, Y)


@pytest.mark.parametrize(
    "layers",
    [
        # An activation after the last layer: no identity signals.
        lambda: [nn.Linear(3, 6), nn.Softplus(), nn.Linear(6, 4), nn.Tanh()],
        # Something before the first layer: its input Gram is not static.
        lambda: [nn.Tanh(), nn.Linear(3, 6), nn.SiLU(), nn.Identity(), nn.Linear(6, 1)],
        lambda: [nn.Linear(3, 5), nn.Linear(5, 3), nn.Identity()],
        lambda: [nn.Linear(3, 2)],
        lambda: [nn.Dropout(0.3), nn.Linear(3, 6), nn.Dropout(0.5), nn.Linear(6, 2)],
    ],
    ids=["activation-last", "not-static", "linear-linear", "one-layer", "dropout"],
)
def test_structured_engine_in_a_metric_on_user_sequentials(layers):
    torch.manual_seed(0)  # this test's own modules: default init is fine here
    net = nn.Sequential(*layers()).double().eval()
    X, Y = _data((6, 3), (5, 3))
    _check_metric("structured", net, _params(net), X, Y)


def test_structured_metric_sub_blocks_and_sketch_pieces(monkeypatch):
    """One-row sub-blocks, and vec D cut mid-output into sketch pieces."""
    monkeypatch.setattr(_structured, "SKETCH_ROWS", 4)
    net = _mlp(3, 3, "tanh")
    params = _params(net)
    bound = select_engine("structured", net, list(params), metric=True)
    # Temporaries bounded so tightly that every sub-block is one row.
    monkeypatch.setattr(bound, "bytes_per_row", lambda n_outputs, itemsize: 1)
    monkeypatch.setattr(_structured, "METRIC_TEMPORARIES", 1)
    like = torch.zeros(1)  # read only under the device policy
    assert bound._sub_blocks(6, 4, 3, 100, like) == [(i, i + 1) for i in range(6)]
    X, Y = _data((6, 3), (4, 3))
    _check_metric("structured", net, params, X, Y, bound=bound)


def _recorded_sub_blocks(monkeypatch):
    """Records ``(n_rows, per_row, share, stack, rows)`` of every device sizing."""
    calls, sized = [], _blocking.sub_block_rows

    def recording(n_rows, per_row, budget, *, stack=1):
        rows = sized(n_rows, per_row, budget, stack=stack)
        calls.append((n_rows, per_row, budget // 4, stack, rows))
        return rows

    monkeypatch.setattr(_structured, "sub_block_rows", recording)
    return calls


# Free bytes: an eighth of them for the sub-blocks, 1 KiB (one-row sub-blocks,
# every temporary here is larger), 8 KiB (a few rows) and 128 MiB (whole tiles).
@pytest.mark.parametrize("free_bytes", [2**13, 2**16, 2**30])
def test_structured_metric_sub_blocks_sized_by_the_device_budget(
    free_bytes, monkeypatch
):
    """Traced, full, applied, diagonal and sketch, under the device policy."""
    net = _mlp(3, 3, "tanh")
    params = _params(net)
    X, Y = _data((12, 3), (9, 3))
    with _blocking.device_policy(free_bytes):  # read once, when bound
        bound = select_engine(
            "structured", net, list(params), example=X[:1], metric=True
        )
    calls = _recorded_sub_blocks(monkeypatch)
    _check_metric("structured", net, params, X, Y, bound=bound)
    assert len(calls) >= 5 and all(stack == 1 for *_, stack, _ in calls)
    for n_rows, per_row, share, _, rows in calls:
        # The largest power of two whose temporaries fit the share.
        assert rows in (1, n_rows) or rows * per_row <= share < 2 * rows * per_row
    whole = [rows == n_rows for n_rows, *_, rows in calls]
    if free_bytes == 2**13:
        assert {rows for *_, rows in calls} == {1}
    elif free_bytes == 2**16:
        assert any(1 < c[-1] < c[0] for c in calls) and not all(whole)
    else:
        assert all(whole)


def test_structured_metric_sub_blocks_on_the_cpu_ignore_the_device(monkeypatch):
    """Bound without the device policy: the shapes alone size them, as before."""
    net = _mlp(3, 3, "tanh")
    params = _params(net)
    X, Y = _data((12, 3), (9, 3))
    bound = select_engine("structured", net, list(params), example=X[:1], metric=True)
    calls = _recorded_sub_blocks(monkeypatch)
    with _blocking.device_policy(2**13):  # too late: the budget is read when bound
        _check_metric("structured", net, params, X, Y, bound=bound)
    assert calls == []


@pytest.mark.parametrize("engine", _METRIC_ENGINES)
def test_states_in_a_metric_at_different_parameters(engine):
    """J(X; w') M J(Y; w)^T, as a decomposition in a metric would pair them."""
    net = _mlp(3, 2)
    params = _params(net)
    shifted = {n: p + 0.1 * torch.ones_like(p) for n, p in params.items()}
    metric = _metric(params)
    X, Y = _data((4, 3), (3, 3))
    bound = select_engine(engine, net, list(params), metric=True)
    with torch.no_grad():
        full = bound.contract(
            bound.state(shifted, X, metric=metric),
            bound.state(params, Y, metric=metric),
            False,
            bound.static(X, Y),
        )
    J_Y = jacobian_rows(net, params, Y) * flat_metric(params, metric)
    want = np.einsum("iad,jbd->ijab", jacobian_rows(net, shifted, X), J_Y)
    _close(full.numpy(), want)


def test_structured_metric_of_ones_is_the_plain_kernel():
    """The metric path, at M = 1, agrees with the unchanged plain path."""
    net = _mlp(3, 3)
    params = _params(net)
    ones = {n: torch.ones_like(p) for n, p in params.items()}
    X, Y = _data((6, 3), (4, 3))
    bound = select_engine("structured", net, list(params))
    with torch.no_grad():
        plain = [bound.state(params, Z) for Z in (X, Y)]
        metric = [bound.state(params, Z, metric=ones) for Z in (X, Y)]
        for trace in (True, False):
            _close(
                bound.contract(*metric, trace).numpy(),
                bound.contract(*plain, trace, bound.static(X, Y)).numpy(),
            )


@pytest.mark.parametrize("engine", ["structured", "ntk_vp"])
def test_states_in_and_out_of_a_metric_do_not_meet(engine):
    net = _mlp(3, 2)
    params = _params(net)
    X, Y = _data((4, 3), (3, 3))
    bound = select_engine(engine, net, list(params), metric=True)
    with torch.no_grad():
        plain = bound.state(params, X)
        weighed = bound.state(params, Y, metric=_metric(params))
        with pytest.raises(ValueError, match="both be taken in a metric"):
            bound.contract(plain, weighed, True, bound.static(X, Y))
        with pytest.raises(ValueError, match="both be taken in a metric"):
            bound.contract_vector(weighed, plain, torch.ones(4, 2), None)


@pytest.mark.parametrize("in_metric", [False, True])
def test_structured_engine_runs_a_stack_of_checkpoints_under_vmap(in_metric):
    """Every product, batched over stacked parameters (and metrics), is the loop.

    The device's checkpoint stacks (``_compute/_stacks.py``) rely on it; no
    operation may fall back to a loop over the stack (torch warns when one
    has no batching rule, e.g. ``addcmul_``, ``addmm_``).
    """
    net = _mlp(3, 3)
    params = _params(net)
    points = [
        {n: p + 0.1 * k * torch.sin(torch.arange(p.numel())).view_as(p).double()
         for n, p in params.items()}
        for k in range(3)
    ]  # fmt: skip
    metrics = [_metric(params, seed=k) if in_metric else None for k in range(3)]
    X, Y = _data((6, 3), (4, 3))
    bound = select_engine("structured", net, list(params), metric=in_metric)
    vectors = torch.linspace(-1, 1, 12, dtype=torch.float64).view(4, 3)
    factors = [
        tuple(_data(*[(h, 5) for h in heights], seed=7 + piece))
        for piece, heights in enumerate(bound.sketch_shapes(3))
    ]

    def products(parameters, metric):
        sx, sy = (bound.state(parameters, Z, metric=metric) for Z in (X, Y))
        static = bound.static(X, Y)
        return (
            bound.contract(sx, sy, True, static),
            bound.contract(sx, sy, False, static),
            bound.contract_vector(sx, sy, vectors, static),
            bound.diagonal(sx, X),
            *(bound.sketch(sx, X, piece, f) for piece, f in enumerate(factors)),
        )

    stack = [
        {n: torch.stack([m[n] for m in ms]) for n in ms[0]} if ms[0] else None
        for ms in (points, metrics)
    ]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a batching-rule fallback
        batched = torch.func.vmap(products, in_dims=(0, 0 if in_metric else None))(
            *stack
        )
        for k, (p, m) in enumerate(zip(points, metrics)):
            for got, want in zip(batched, products(p, m)):
                _close(got[k].numpy(), want.numpy())
