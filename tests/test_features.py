"""Random path-kernel features (``_features.py``) against the autograd oracle."""

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from _dispatch import Dispatched
from _oracle import jacobian_rows, path_kernel_reference
from torch import nn

from sklearn_pathkernel import PathKernelClassifier, PathKernelRegressor
from sklearn_pathkernel._compute import _blocking, _stacks
from sklearn_pathkernel._kernels import _features as features_module
from sklearn_pathkernel._kernels._features import gaussian_factor, path_features, plan
from sklearn_pathkernel.engines import _jacobian, select_engine

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _frozen_first_weight(n_features, n_outputs):
    net = nn.Sequential(
        nn.Identity(),
        nn.Linear(n_features, 6),
        nn.GELU(),
        nn.Linear(6, n_outputs, bias=False),
    )
    net[1].weight.requires_grad_(False)  # the first layer trains its bias only
    return net


def _no_biases_and_signals_after_the_output(n_features, n_outputs):
    return nn.Sequential(
        nn.Tanh(),  # the first Linear layer does not see X itself
        nn.Linear(n_features, 5, bias=False),
        nn.Sigmoid(),
        nn.Linear(5, n_outputs, bias=False),
        nn.Tanh(),  # the output layer's signals are not the identity
    )


class _Residual(nn.Module):
    """Not an nn.Sequential: the structured engine cannot take it."""

    def __init__(self, n_features, n_outputs):
        super().__init__()
        self.a = nn.Linear(n_features, n_features)
        self.b = nn.Linear(n_features, n_outputs)

    def forward(self, x):
        return self.b(x + torch.tanh(self.a(x)))


# (estimator class, its parameters, number of targets: 0 for three classes)
_CASES = {
    "regressor": (PathKernelRegressor, {}, 1),
    "classifier": (PathKernelClassifier, {}, 0),
    "two-hidden-two-targets": (PathKernelRegressor, {"hidden_layer_sizes": (6, 5)}, 2),
    "frozen-weight-no-output-bias": (
        PathKernelRegressor,
        {"module": _frozen_first_weight},
        2,
    ),
    "no-biases-activation-after-output": (
        PathKernelRegressor,
        {"module": _no_biases_and_signals_after_the_output},
        2,
    ),
    "residual": (PathKernelRegressor, {"module": _Residual}, 2),
}


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    return rng.randn(30, 3)


_FITTED = {}


def _fitted(case, X):
    """A float64 network of ``case`` with two checkpoints, fitted once."""
    if case not in _FITTED:
        cls, params, n_targets = _CASES[case]
        if n_targets == 0:
            y = np.digitize(X[:, 0] + np.sin(X[:, 1]), [-0.5, 0.5])
        else:
            y = np.column_stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2]])[:, :n_targets]
            y = y.ravel() if n_targets == 1 else y
        params = {
            "hidden_layer_sizes": (8,),
            "max_iter": 4,
            "record_every": 2,
            "dtype": "float64",
            "random_state": 0,
            **params,
        }
        _FITTED[case] = cls(**params).fit(X, y)
    return _FITTED[case]


def _features(est, X, **options):
    return path_features(est.module_, est.trajectory_, X, **options)


def _gradient_blocks(module, parameters, X):
    """Per Linear layer, the oracle's ``d_o(x) [a(x), 1]^T``: (n, O, h_out, h_in')."""
    J = jacobian_rows(module, parameters, X)  # (n, O, d), in parameter order
    n, n_outputs = J.shape[:2]
    ends = np.cumsum([p.numel() for p in parameters.values()])
    columns = dict(zip(parameters, np.split(np.arange(J.shape[2]), ends[:-1])))
    blocks = {}
    for index, layer in enumerate(module):
        if isinstance(layer, nn.Linear):
            parts = [
                J[:, :, columns[name]].reshape(n, n_outputs, layer.out_features, -1)
                for name in (f"{index}.weight", f"{index}.bias")
                if name in columns
            ]
            if parts:
                blocks[index] = np.concatenate(parts, axis=3)
    return blocks


def _kronecker_reference(est, X, seed, m):
    """docs/design.md, section 6, written out on the oracle's Jacobians.

    ``phi_r(x) = m^{-1/2} sum_k sqrt(w_k) sum_l u_{k,l,r}^T M_l(x) v_{k,l,r}``
    with ``M_l(x) = vec D (x) [a, 1]`` a trained layer's gradient; the output
    layer's identity signals (``d_o = e_o``) give ``sqrt(O) v . [a, 1]``.
    """
    module, trajectory = est.module_, est.trajectory_
    last = max(i for i, c in enumerate(module) if isinstance(c, nn.Linear))
    identity_output = all(isinstance(c, nn.Identity) for c in module[last + 1 :])
    phi = np.zeros((len(X), m))
    for k, (step, weight) in enumerate(trajectory.kernel_nodes()):
        blocks = _gradient_blocks(module, trajectory.parameters_at(step), X)
        for piece, (index, M) in enumerate(blocks.items()):
            n, n_outputs, width, inputs = M.shape
            if index == last and identity_output:
                V = gaussian_factor(seed, k, piece, 0, inputs, m).numpy()
                sketch = np.sqrt(n_outputs) * M[:, 0, 0] @ V  # [a, 1] @ V
            else:
                U = gaussian_factor(seed, k, piece, 0, n_outputs * width, m).numpy()
                V = gaussian_factor(seed, k, piece, 1, inputs, m).numpy()
                M = M.reshape(n, n_outputs * width, inputs)
                sketch = np.einsum("nij,ir,jr->nr", M, U, V)
            phi += np.sqrt(weight / m) * sketch
    return phi


def _projection_reference(est, X, seed, m, engine):
    """The Gaussian projection of ``vec J`` in the generic engines' pieces."""
    module, trajectory = est.module_, est.trajectory_
    phi = np.zeros((len(X), m))
    for k, (step, weight) in enumerate(trajectory.kernel_nodes()):
        J = jacobian_rows(module, trajectory.parameters_at(step), X)
        n, n_outputs, d = J.shape
        if engine == "jacobian":  # vec J in blocks of SKETCH_ROWS rows
            rows, total = _jacobian.SKETCH_ROWS, n_outputs * d
            P = torch.cat(
                [
                    gaussian_factor(seed, k, piece, 0, min(rows, total - start), m)
                    for piece, start in enumerate(range(0, total, rows))
                ]
            )
            projected = J.reshape(n, -1) @ P.numpy()
        else:  # "ntk_vp": one piece per output
            projected = sum(
                J[:, o] @ gaussian_factor(seed, k, o, 0, d, m).numpy()
                for o in range(n_outputs)
            )
        phi += np.sqrt(weight / m) * projected
    return phi


def test_gaussian_factor_depends_on_every_key():
    base = gaussian_factor(0, 1, 2, 0, 6, 5)
    assert base.dtype == torch.float64 and base.shape == (6, 5)
    assert torch.equal(base, gaussian_factor(0, 1, 2, 0, 6, 5))
    for other in [(1, 1, 2, 0), (0, 2, 2, 0), (0, 1, 3, 0), (0, 1, 2, 1)]:
        assert not torch.allclose(base, gaussian_factor(*other, 6, 5))
    # More columns or rows extend nothing: each shape is its own draw.
    assert gaussian_factor(0, 1, 2, 0, 6, 7).shape == (6, 7)


@pytest.mark.parametrize("case", [c for c in _CASES if c != "residual"])
def test_structured_features_are_the_kronecker_sketch(case, data):
    X = data[:7]
    est = _fitted(case, data)
    phi, diagonal = _features(est, X, n_components=5, seed=3)
    assert select_engine("auto", est.module_, []).name == "structured"
    np.testing.assert_allclose(
        phi, _kronecker_reference(est, X, 3, 5), rtol=1e-10, atol=1e-12
    )
    # The diagonal stays exact: K_path(x, x), not an estimate.
    K = path_kernel_reference(est.module_, est.trajectory_, X)
    np.testing.assert_allclose(diagonal, np.diag(K), rtol=1e-10)


@pytest.mark.parametrize("engine", ["jacobian", "ntk_vp"])
@pytest.mark.parametrize("case", ["classifier", "residual"])
def test_generic_features_are_the_projected_jacobians(engine, case, data, monkeypatch):
    monkeypatch.setattr(_jacobian, "SKETCH_ROWS", 16)  # many blocks of vec J
    X = data[:5]
    est = _fitted(case, data)
    phi, diagonal = _features(est, X, n_components=6, seed=1, engine=engine)
    expected = _projection_reference(est, X, 1, 6, engine)
    np.testing.assert_allclose(phi, expected, rtol=1e-10, atol=1e-12)
    K = path_kernel_reference(est.module_, est.trajectory_, X)
    np.testing.assert_allclose(diagonal, np.diag(K), rtol=1e-10)


@pytest.mark.parametrize(
    "engine, bound",
    # Var[phi(x) . phi(y)] <= bound * K(x, x) K(y, y) / m: the Gaussian
    # projection's (K_xx K_yy + K_xy^2) / m is at most 2 K_xx K_yy / m; the
    # Kronecker sketch adds at most 6 K_xx K_yy / m.
    [("structured", 8.0), ("jacobian", 2.0)],
)
def test_features_are_unbiased(engine, bound, data):
    X = data[:6]
    est = _fitted("classifier", data)  # three outputs, two checkpoints
    K = path_kernel_reference(est.module_, est.trajectory_, X)
    m, seeds = 128, 60
    estimates = []
    for seed in range(seeds):
        phi, _ = _features(est, X, n_components=m, seed=seed, engine=engine)
        estimates.append(phi @ phi.T)
    estimates = np.array(estimates)
    scale = np.outer(np.diag(K), np.diag(K))
    # The sample variance respects the bound (with room for its own noise)...
    assert np.all(estimates.var(axis=0) <= 1.5 * bound * scale / m)
    # ...and the mean of the independent estimates is K within 4 standard
    # errors of that bound, entry by entry.
    standard_error = np.sqrt(bound * scale / (m * seeds))
    assert np.all(np.abs(estimates.mean(axis=0) - K) <= 4 * standard_error)


def test_error_falls_like_one_over_the_square_root_of_m(data):
    X = data[:20]
    est = _fitted("two-hidden-two-targets", data)
    K = est.kernel(X)

    def error(m, seed):
        phi, _ = _features(est, X, n_components=m, seed=seed)
        return np.linalg.norm(phi @ phi.T - K) / np.linalg.norm(K)

    errors = [np.mean([error(m, seed) for seed in range(8)]) for m in (25, 100, 400)]
    # Halved per 4x more features.
    for big, small in zip(errors, errors[1:]):
        assert 1.4 < big / small < 2.8, errors


@pytest.mark.parametrize("engine", ["structured", "jacobian"])
def test_features_are_bit_identical_across_budgets_and_factor_groups(
    engine, data, monkeypatch
):
    monkeypatch.setattr(_blocking, "TILE_ROWS", 4)  # several tiles of rows
    monkeypatch.setattr(_jacobian, "SKETCH_ROWS", 16)
    est = _fitted("two-hidden-two-targets", data)
    X, m = data[:23], 64
    bound = select_engine(engine, est.module_, est.trajectory_.parameter_names)
    shapes = bound.sketch_shapes(2)
    # The smallest budget that still holds a tile keeps the factors of few
    # pieces at a time; 64 MiB keeps them all.
    plans = {
        memory: plan(bound, shapes, 2, 8, m, memory)
        for memory in np.geomspace(1e-3, 64, 200)
    }
    small = min(memory for memory, (tile, _) in plans.items() if tile == 4)
    assert 1 < len(plans[small][1]) and plans[64.0][1] == [list(range(len(shapes)))]
    full = _features(est, X, n_components=m, seed=0, engine=engine, working_memory=64)
    for memory in (small, 1.0):
        again = _features(
            est, X, n_components=m, seed=0, engine=engine, working_memory=memory
        )
        assert np.array_equal(again[0], full[0]) and np.array_equal(again[1], full[1])


def test_features_do_not_depend_on_blocking(data):
    est = _fitted("classifier", data)
    full, _ = _features(est, data, n_components=9, seed=0)
    one_row, _ = _features(est, data, n_components=9, seed=0, working_memory=1e-4)
    np.testing.assert_allclose(one_row, full, rtol=1e-10)
    some, _ = _features(est, data[7:9], n_components=9, seed=0)
    np.testing.assert_allclose(some, full[7:9], rtol=1e-10)


def test_the_seed_decides_the_features(data):
    est = _fitted("regressor", data)
    a, _ = _features(est, data, n_components=5, seed=0)
    b, _ = _features(est, data, n_components=5, seed=0)
    c, _ = _features(est, data, n_components=5, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("case", ["regressor", "residual"])
def test_auto_takes_the_engine_select_engine_picks(case, data):
    est = _fitted(case, data)
    X = data[:6]
    picked = select_engine("auto", est.module_, est.trajectory_.parameter_names).name
    assert picked == ("hooks" if case == "residual" else "structured")
    auto, _ = _features(est, X, n_components=7, seed=0)
    named, _ = _features(est, X, n_components=7, seed=0, engine=picked)
    np.testing.assert_array_equal(auto, named)
    if case == "regressor":  # another engine gives other (equally valid) features
        other, _ = _features(est, X, n_components=7, seed=0, engine="jacobian")
        assert not np.allclose(auto, other)


# ------------------------------------------ the device tile policy (issue 21)


def _sketch_ops_per_checkpoint(module, X_t, m, free_bytes=None):
    """Operations of one checkpoint's ``_sketch_part`` over every row block.

    The checkpoint's factors are drawn (and cached) before counting.
    """
    parameters = {n: p.detach().to(X_t.device) for n, p in module.named_parameters()}
    bound = select_engine(
        "structured", module, list(parameters), example=torch.zeros(1, X_t.shape[1])
    )
    shapes = bound.sketch_shapes(10)
    with _blocking.device_policy(free_bytes) if free_bytes else nullcontext():
        tile, groups = plan(bound, shapes, 10, 4, m, None, X_t.device)
    sketch = features_module._Sketch(bound, X_t, tile, X_t.device, shapes, groups, m, 0)
    blocks = features_module.row_blocks(X_t.shape[0], tile)
    features_module._sketch_part(sketch, *blocks[0], 0, 1.0, parameters, None)
    counted = Dispatched()
    with counted:
        for r0, r1 in blocks:
            features_module._sketch_part(sketch, r0, r1, 0, 1.0, parameters, None)
    return counted, tile


def test_device_policy_sketch_dispatches_fewer_operations_per_checkpoint():
    torch.manual_seed(0)
    w2 = nn.Sequential(
        nn.Linear(64, 256),
        nn.Tanh(),
        nn.Linear(256, 256),
        nn.Tanh(),
        nn.Linear(256, 10),
    )
    X_t = torch.empty(20_000, 64, device="meta")
    cpu, cpu_tile = _sketch_ops_per_checkpoint(w2, X_t, 100)
    device, device_tile = _sketch_ops_per_checkpoint(w2, X_t, 100, 2**34)
    assert (cpu_tile, device_tile) == (512, 8192)
    assert cpu.total >= 10 * device.total
    assert cpu.synchronising == device.synchronising == []


@pytest.mark.parametrize("engine", ["structured", "jacobian"])
def test_device_policy_features_match_the_reference(engine, data):
    est = _fitted("two-hidden-two-targets", data)
    bound = select_engine(engine, est.module_, est.trajectory_.parameter_names)
    per_row = bound.bytes_per_row(2, 8) + 32 * 5
    # A quarter of half the free memory holds 8 rows, not 16: 30 rows, 4 tiles.
    with _blocking.device_policy(96 * per_row):
        tile, _ = plan(
            bound, bound.sketch_shapes(2), 2, 8, 5, None, torch.device("cpu")
        )
        phi, diagonal = _features(est, data, n_components=5, seed=3, engine=engine)
    assert tile == 8
    if engine == "structured":
        want = _kronecker_reference(est, data, 3, 5)
    else:
        want = _projection_reference(est, data, 3, 5, engine)
    np.testing.assert_allclose(phi, want, rtol=1e-10, atol=1e-12)
    K = path_kernel_reference(est.module_, est.trajectory_, data)
    np.testing.assert_allclose(diagonal, np.diag(K), rtol=1e-10)


def test_device_out_of_memory_retries_with_half_the_tile(data, monkeypatch):
    est = _fitted("two-hidden-two-targets", data)
    bound = select_engine("structured", est.module_, est.trajectory_.parameter_names)
    per_row = bound.bytes_per_row(2, 8) + 32 * 5
    want = _kronecker_reference(est, data, 3, 5)
    tiles, task = [], features_module._sketch_part

    def failing(sketch, *args):
        tiles.append(sketch.tile)
        if len(tiles) == 2:  # the second task: the sums so far are dropped
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return task(sketch, *args)

    monkeypatch.setattr(features_module, "_sketch_part", failing)
    with (
        _blocking.device_policy(96 * per_row),  # 8-row tiles
        pytest.warns(RuntimeWarning, match="with 8-row tiles; retrying with 4-row"),
    ):
        phi, diagonal = _features(est, data, n_components=5, seed=3)
    assert tiles[:2] == [8, 8] and set(tiles[2:]) == {4}
    np.testing.assert_allclose(phi, want, rtol=1e-10, atol=1e-12)
    K = path_kernel_reference(est.module_, est.trajectory_, data)
    np.testing.assert_allclose(diagonal, np.diag(K), rtol=1e-10)


# ----------------------------- stacks of checkpoints on a device (issue 21)


def _stack_sizes(monkeypatch):
    """Records how many checkpoints every stacked sketch task gets."""
    sizes, task = [], features_module._stacked_sketch_part

    def recording(sketch, r0, r1, ks, *args):
        sizes.append(len(ks))
        return task(sketch, r0, r1, ks, *args)

    monkeypatch.setattr(features_module, "_stacked_sketch_part", recording)
    return sizes


def test_stacked_features_match_the_reference(data, monkeypatch):
    est = _fitted("two-hidden-two-targets", data)
    n_nodes = len(est.trajectory_.kernel_nodes())
    default = _features(est, data, n_components=5, seed=3)
    sizes = _stack_sizes(monkeypatch)
    with _blocking.device_policy(2**30):  # one tile, every checkpoint stacked
        phi, diagonal = _features(est, data, n_components=5, seed=3)
    assert sizes == [n_nodes] and n_nodes > 1
    want = _kronecker_reference(est, data, 3, 5)  # the same draws per checkpoint
    np.testing.assert_allclose(phi, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(phi, default[0], rtol=1e-12, atol=1e-14)
    K = path_kernel_reference(est.module_, est.trajectory_, data)
    np.testing.assert_allclose(diagonal, np.diag(K), rtol=1e-10)
    np.testing.assert_allclose(diagonal, default[1], rtol=1e-12)


def test_stacked_features_in_a_metric_match_the_default(data, monkeypatch):
    est = PathKernelRegressor(
        (6,), solver="adam", learning_rate_init=0.01, max_iter=6,
        dtype="float64", random_state=0, kernel_nodes=None,
    ).fit(data, np.sin(data[:, 0]))  # fmt: skip
    want = _features(est, data, n_components=7, seed=1)
    sizes = _stack_sizes(monkeypatch)
    with _blocking.device_policy(2**30):
        phi, diagonal = _features(est, data, n_components=7, seed=1)
    assert sizes == [len(est.trajectory_.kernel_nodes())]
    np.testing.assert_allclose(phi, want[0], rtol=1e-12, atol=1e-14)
    K = path_kernel_reference(est.module_, est.trajectory_, data)
    np.testing.assert_allclose(diagonal, np.diag(K), rtol=1e-10)


def _stacked_sketch_ops(n_checkpoints, stacked, n=20_000):
    """W2's sketch of ``n`` meta rows over ``n_checkpoints``: operations of its tasks.

    The factors are drawn (and cached) before counting, as in the other count.
    """
    torch.manual_seed(0)
    w2 = nn.Sequential(
        nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(),
        nn.Linear(256, 10),
    )  # fmt: skip
    parameters = {n: p.detach().to("meta") for n, p in w2.named_parameters()}
    bound = select_engine("structured", w2, list(parameters))
    X_t = torch.empty(n, 64, device="meta")
    shapes = bound.sketch_shapes(10)
    with _blocking.device_policy(2**40):
        tile, groups = plan(bound, shapes, 10, 4, 100, None, X_t.device)
    sketch = features_module._Sketch(
        bound, X_t, tile, X_t.device, shapes, groups, 100, 0,
        bound.bytes_per_row(10, 4),
    )  # fmt: skip
    blocks = features_module.row_blocks(X_t.shape[0], tile)
    if stacked:
        ks = tuple(range(n_checkpoints))
        weights = torch.full((n_checkpoints,), 0.1, dtype=torch.float64)
        tasks = [(ks, weights, _stacks.stack_mappings([parameters] * len(ks)), None)]
        function = features_module._stacked_sketch_part
    else:
        tasks = [(k, 0.1, parameters, None) for k in range(n_checkpoints)]
        function = features_module._sketch_part
    counted = Dispatched()
    for task in tasks:
        function(sketch, *blocks[0], *task)  # draws the factors
        with counted:
            for r0, r1 in blocks:
                function(sketch, r0, r1, *task)
    return counted


def test_stacked_sketch_dispatches_fewer_operations_per_checkpoint():
    one = _stacked_sketch_ops(8, stacked=False, n=8192)
    stacked = _stacked_sketch_ops(8, stacked=True, n=8192)
    assert one.total >= 4 * stacked.total
    assert one.synchronising == stacked.synchronising == []


def test_out_of_memory_in_a_stack_retries_with_smaller_stacks(data, monkeypatch):
    est = _fitted("two-hidden-two-targets", data)
    want = _kronecker_reference(est, data, 3, 5)
    calls = []

    def recording(name, fail):
        task = getattr(features_module, name)

        def run(sketch, r0, r1, ks, *args):
            calls.append((sketch.tile, len(ks) if isinstance(ks, tuple) else 1))
            if fail and len(calls) == 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
            return task(sketch, r0, r1, ks, *args)

        monkeypatch.setattr(features_module, name, run)

    recording("_stacked_sketch_part", fail=True)
    recording("_sketch_part", fail=False)
    with (
        _blocking.device_policy(2**30),
        pytest.warns(RuntimeWarning, match="path features ran out of CUDA memory"),
    ):
        phi, _ = _features(est, data, n_components=5, seed=3)
    (tile, size), *retry = calls
    assert size == len(est.trajectory_.kernel_nodes()) == 2
    assert retry == [(tile // 2, 1)] * 2  # 2 // 2: one checkpoint per task
    np.testing.assert_allclose(phi, want, rtol=1e-10, atol=1e-12)
