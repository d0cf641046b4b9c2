"""Blocked tangent and path kernels against the reference."""

import collections
import threading
import warnings
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from _cluster import local_cluster
from _dispatch import Dispatched
from _oracle import path_kernel_reference, tangent_kernel_reference
from _property import given, settings, st
from joblib import parallel_config
from sklearn.exceptions import ConvergenceWarning

from sklearn_pathkernel import (
    PathKernelClassifier,
    PathKernelRegressor,
    path_influence,
    path_kernel,
    path_self_influence,
    tangent_kernel,
)
from sklearn_pathkernel._compute import _blocking, _stacks
from sklearn_pathkernel._kernels import _path
from sklearn_pathkernel.engines import ENGINES, _structured, select_engine


@pytest.fixture(scope="module")
def fitted():
    """A small float64 regressor with 2 outputs and its data."""
    rng = np.random.RandomState(0)
    X = rng.randn(30, 4)
    Y = np.column_stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # Every step a node: 12 checkpoints through the kernel code. (With
        # fewer, test_n_jobs_gives_bit_identical_kernels shows that the
        # tangent kernel at some parameters differs in the last bit between
        # 1 and 2 torch threads; the every-step sum happens to hide it.)
        est = PathKernelRegressor(
            (8,), max_iter=12, dtype="float64", random_state=0, kernel_nodes=None
        ).fit(X, Y)
    return est, X


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("symmetric", [True, False])
def test_path_kernel_matches_reference(fitted, engine, symmetric):
    est, X = fitted
    Z = None if symmetric else X[:7] + 0.1
    got = path_kernel(est.module_, est.trajectory_, X[:9], Z, engine=engine)
    want = path_kernel_reference(est.module_, est.trajectory_, X[:9], Z)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_engines_agree_on_larger_symmetric_kernels(fitted):
    # Enough rows for the diagonal block to be cut into several tiles.
    est, _ = fitted
    X = np.random.RandomState(5).randn(300, 4)
    structured = path_kernel(est.module_, est.trajectory_, X, engine="structured")
    jacobian = path_kernel(est.module_, est.trajectory_, X, engine="jacobian")
    np.testing.assert_allclose(structured, jacobian, rtol=1e-9)
    assert np.array_equal(structured, structured.T)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_n_jobs_gives_bit_identical_kernels(fitted, n_jobs):
    est, X = fitted
    serial = path_kernel(est.module_, est.trajectory_, X, working_memory=0.05)
    parallel = path_kernel(
        est.module_, est.trajectory_, X, working_memory=0.05, n_jobs=n_jobs
    )
    assert np.array_equal(serial, parallel)


class _ThreadRecorder(torch.nn.Module):
    """A linear layer that records the torch threads of each calling thread."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1, dtype=torch.float64)
        self.seen = set()

    def forward(self, x):
        self.seen.add((threading.get_ident(), torch.get_num_threads()))
        return self.linear(x)


def test_parallel_tasks_share_torch_threads(fitted, monkeypatch):
    _, X = fitted
    monkeypatch.setattr(_blocking, "TILE_ROWS", 4)
    monkeypatch.setattr(_blocking, "CHUNK_COLUMNS", 8)
    module = _ThreadRecorder()
    total = torch.get_num_threads()
    tangent_kernel(module, None, X, engine="jacobian", n_jobs=2, working_memory=1e-4)
    main = threading.get_ident()
    in_tasks = {threads for ident, threads in module.seen if ident != main}
    assert in_tasks == {max(1, total // 2)}
    assert torch.get_num_threads() == total  # restored afterwards


def test_parallel_config_decides_the_backend(fitted):
    est, X = fitted
    expected = path_kernel(est.module_, est.trajectory_, X, working_memory=0.05)
    with parallel_config(backend="sequential"):
        got = path_kernel(
            est.module_, est.trajectory_, X, working_memory=0.05, n_jobs=2
        )
    assert np.array_equal(got, expected)


def test_verbose_says_which_engine_runs_and_shows_progress(fitted, capsys):
    est, X = fitted
    path_kernel(est.module_, est.trajectory_, X[:4], verbose=1)
    captured = capsys.readouterr()
    assert "engine 'structured'" in captured.out
    assert "tiles of 512 x 512" in captured.out
    assert "path kernel (structured)" in captured.err  # the tqdm bar
    path_kernel(est.module_, est.trajectory_, X[:4])
    assert capsys.readouterr() == ("", "")


def test_full_output_kernel_traces_to_the_traced_one(fitted):
    est, X = fitted
    full = path_kernel(est.module_, est.trajectory_, X[:5], trace=False)
    assert full.shape == (5, 5, 2, 2)
    np.testing.assert_allclose(
        full,
        path_kernel_reference(est.module_, est.trajectory_, X[:5], trace=False),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        np.einsum("ijaa->ij", full), path_kernel(est.module_, est.trajectory_, X[:5])
    )


@pytest.fixture
def small_grid(monkeypatch):
    """Tiles of 4 rows and chunks of 8 columns, so that 30 rows cross many."""
    monkeypatch.setattr(_blocking, "TILE_ROWS", 4)
    monkeypatch.setattr(_blocking, "CHUNK_COLUMNS", 8)


@pytest.fixture(scope="module")
def unblocked(fitted):
    """``(kernel in one block, oracle)`` for an engine and rows, computed once.

    The budgets and workers of one engine and one pair of row sets are all
    compared with the same two matrices: computing them once per pair keeps
    the grid of cases cheap.
    """
    est, _ = fitted
    cache = {}

    def get(engine, X, Y):
        key = (engine, X.shape[0], Y is None)
        if key not in cache:  # called under the test's small_grid
            cache[key] = (
                path_kernel(est.module_, est.trajectory_, X, Y, engine=engine),
                path_kernel_reference(est.module_, est.trajectory_, X, Y),
            )
        return cache[key]

    return get


# Budgets from one-tile blocks to everything in one block.
@pytest.mark.parametrize("working_memory", [1e-4, 0.03, None])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(
    "engine, n_jobs",
    [("structured", None), ("structured", 2), ("jacobian", None), ("ntk_vp", 2)],
)
def test_result_is_bit_identical_across_block_sizes(
    fitted, small_grid, unblocked, working_memory, symmetric, engine, n_jobs
):
    est, X = fitted
    if engine != "structured":
        X = X[:13]  # the torch.func engines pay a fixed cost per tiny tile
    Y = None if symmetric else X[:11] * 0.5
    whole, reference = unblocked(engine, X, Y)
    blocked = path_kernel(
        est.module_,
        est.trajectory_,
        X,
        Y,
        working_memory=working_memory,
        engine=engine,
        n_jobs=n_jobs,
    )
    assert np.array_equal(blocked, whole)
    np.testing.assert_allclose(blocked, reference, rtol=1e-9, atol=1e-12)


def test_default_grid_is_bit_identical_across_block_sizes():
    # float32 and two 512-row tiles: the shapes where BLAS rounding
    # would differ if products followed the blocks instead of the grid.
    rng = np.random.RandomState(0)
    X = rng.randn(700, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = PathKernelRegressor((16,), max_iter=3, random_state=0).fit(X, X[:, 0])
    kernels = [
        path_kernel(est.module_, est.trajectory_, X, working_memory=memory)
        for memory in (None, 0.5, 1.5)
    ]
    assert all(np.array_equal(K, kernels[0]) for K in kernels[1:])
    assert np.array_equal(kernels[0], kernels[0].T)


def _frozen_first_weight(n_features, n_outputs):
    net = torch.nn.Sequential(
        torch.nn.Identity(),
        torch.nn.Linear(n_features, 6),
        torch.nn.GELU(),
        torch.nn.Linear(6, n_outputs, bias=False),
    )
    net[1].weight.requires_grad_(False)
    return net


def _no_biases(n_features, n_outputs):
    return torch.nn.Sequential(
        torch.nn.Linear(n_features, 5, bias=False),
        torch.nn.Tanh(),
        torch.nn.Linear(5, 5, bias=False),
        torch.nn.Sigmoid(),
        torch.nn.Linear(5, n_outputs, bias=False),
    )


@pytest.mark.parametrize("module", [None, _frozen_first_weight, _no_biases])
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_diagonal_matches_the_reference(fitted, module, engine):
    _, X = fitted
    Y = np.column_stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = PathKernelRegressor(
            (8,), module=module, max_iter=4, dtype="float64", random_state=0
        ).fit(X, Y)
    diagonal = _path.path_kernel_diagonal(
        est.module_, est.trajectory_, X[:9], engine=engine, working_memory=1e-4
    )
    reference = path_kernel_reference(est.module_, est.trajectory_, X[:9])
    np.testing.assert_allclose(diagonal, np.diag(reference), rtol=1e-10)


@pytest.mark.parametrize("trace", [True, False])
def test_symmetric_kernel_is_exactly_symmetric_and_psd(fitted, trace):
    est, X = fitted
    K = path_kernel(est.module_, est.trajectory_, X, trace=trace, working_memory=0.03)
    if not trace:
        assert np.array_equal(K, K.transpose(1, 0, 3, 2))
        K = K.transpose(0, 2, 1, 3).reshape(60, 60)  # rows (i, a), cols (j, b)
    assert np.array_equal(K, K.T)
    eigenvalues = np.linalg.eigvalsh(K)
    assert eigenvalues.min() >= -1e-10 * eigenvalues.max()


def test_kernel_of_x_and_y_is_the_transpose_of_y_and_x(fitted):
    est, X = fitted
    A, B = X[:6], X[10:19]
    K_ab = path_kernel(est.module_, est.trajectory_, A, B)
    K_ba = path_kernel(est.module_, est.trajectory_, B, A)
    np.testing.assert_allclose(K_ab, K_ba.T, rtol=1e-12)


@pytest.mark.parametrize("record_every", [1, 3])
def test_checkpoints_weigh_the_learning_rate_times_the_steps_they_stand_for(
    record_every,
):
    # Independent of Trajectory.weights: the step size is the estimator's
    # learning_rate_init, and a checkpoint stands for record_every steps (the
    # last one for what remains of the 7): the left rule over every kept
    # checkpoint, the definition before quadrature rules.
    rng = np.random.RandomState(3)
    X = rng.randn(12, 3)
    est = PathKernelRegressor(
        (5,),
        learning_rate_init=0.05,
        max_iter=7,
        tol=0.0,
        n_iter_no_change=100,
        record_every=record_every,
        quadrature="left",
        kernel_nodes=None,
        dtype="float64",
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, X[:, 0])
    traj = est.trajectory_
    steps = [min(record_every, 7 - k * record_every) for k in range(len(traj))]
    want = sum(
        0.05 * n * tangent_kernel_reference(est.module_, traj.parameters(k), X[:4])
        for k, n in enumerate(steps)
    )
    np.testing.assert_allclose(path_kernel(est.module_, traj, X[:4]), want, rtol=1e-9)


def test_tangent_kernel_defaults_to_the_module_parameters(fitted):
    est, X = fitted
    params = {n: p.detach() for n, p in est.module_.named_parameters()}
    np.testing.assert_allclose(
        tangent_kernel(est.module_, None, X[:4]),
        tangent_kernel_reference(est.module_, params, X[:4]),
        rtol=1e-6,
    )


def test_tangent_kernel_of_a_linear_model_is_the_linear_kernel_plus_one():
    net = torch.nn.Linear(3, 1).double()
    X = np.random.RandomState(0).randn(5, 3)
    np.testing.assert_allclose(tangent_kernel(net, None, X), X @ X.T + 1.0)


def test_classifier_kernel_sums_over_logits():
    rng = np.random.RandomState(1)
    X = rng.randn(24, 3)
    y = np.repeat(["a", "b", "c"], 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = PathKernelClassifier(
            (6,), max_iter=5, dtype="float64", random_state=0
        ).fit(X, y)
    np.testing.assert_allclose(
        clf.kernel(X[:6]),
        path_kernel_reference(clf.module_, clf.trajectory_, X[:6]),
        rtol=1e-6,
    )


@pytest.mark.parametrize("empty", ["X", "Y"])
def test_empty_inputs_are_refused(fitted, empty):
    est, X = fitted
    args = (X[:0], X) if empty == "X" else (X, X[:0])
    with pytest.raises(ValueError, match=f"{empty} is empty: it has 0 rows"):
        path_kernel(est.module_, est.trajectory_, *args)


def test_accepts_tensors(fitted):
    est, X = fitted
    np.testing.assert_allclose(
        path_kernel(est.module_, est.trajectory_, torch.tensor(X[:4])),
        path_kernel(est.module_, est.trajectory_, X[:4]),
    )


@pytest.mark.parametrize(
    "X, Y, message",
    [
        (np.ones(3), None, "Expected 2D array"),
        (np.array([[np.nan, 1.0, 2.0, 3.0]]), None, "Input X contains NaN"),
        (np.ones((2, 4)), np.array([[np.inf, 1, 1, 1]]), "Input Y contains infinity"),
        (np.ones((2, 4)), np.ones((2, 3)), "Y has 3 features, but X has 4 features"),
        (torch.ones(2, 4, 1), None, "The 'module' failed on X rows of shape"),
        (np.ones((2, 4)), torch.ones(2, 4, 1), "Y has rows of shape \\(4, 1\\)"),
        (torch.ones(4), None, "Expected a 2D tensor for X"),
        (
            np.ones((2, 2, 2)),
            None,
            r"torch.as_tensor\(X\).*nn.Unflatten\(1, \(2, 2\)\)",
        ),
        (torch.tensor([[float("nan")] * 4]), None, "Input X contains NaN or infinity"),
    ],
)
def test_bad_input_is_named(fitted, X, Y, message):
    est, _ = fitted
    with pytest.raises(ValueError, match=message):
        path_kernel(est.module_, est.trajectory_, X, Y)


def test_values_that_overflow_float32_are_refused():
    net = torch.nn.Linear(2, 1)
    with pytest.raises(
        ValueError, match="X contains values that are not finite in torch.float32"
    ):
        tangent_kernel(net, None, np.array([[1e39, 0.0]]))


def test_missing_device_is_refused(fitted, monkeypatch):
    est, X = fitted
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="torch.cuda.is_available\\(\\) is False"):
        path_kernel(est.module_, est.trajectory_, X, device="cuda")


def test_caller_module_is_not_moved(fitted):
    # Work on another device runs on a copy (a GPU-fitted module and
    # device="cpu" on a machine with a GPU).
    est, X = fitted
    where = next(est.module_.parameters()).device
    path_kernel(est.module_, est.trajectory_, X[:3], device="cpu")
    assert next(est.module_.parameters()).device == where


# -- properties on small random networks and data (hypothesis) ---------------
@st.composite
def _small_problem(draw):
    """A tiny fitted float64 regressor and some rows, drawn by hypothesis."""
    n_features = draw(st.integers(1, 4))
    n_outputs = draw(st.integers(1, 3))
    hidden = tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=2)))
    activation = draw(st.sampled_from(["identity", "logistic", "tanh", "relu"]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.RandomState(seed)
    X = rng.randn(draw(st.integers(2, 9)), n_features)
    y = rng.randn(len(X), n_outputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = PathKernelRegressor(
            hidden,
            activation=activation,
            max_iter=draw(st.integers(1, 4)),
            record_every=draw(st.integers(1, 2)),
            dtype="float64",
            random_state=seed,
        ).fit(X, y)
    return est, X, rng.randn(draw(st.integers(1, 5)), n_features)


# derandomize: CI sees the same examples every run; a failure reproduces.
_PROPERTY_SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


@_PROPERTY_SETTINGS
@given(_small_problem())
def test_property_kernel_of_y_and_x_is_the_transpose(problem):
    est, X, Z = problem
    K_xz = path_kernel(est.module_, est.trajectory_, X, Z)
    np.testing.assert_allclose(
        path_kernel(est.module_, est.trajectory_, Z, X), K_xz.T, rtol=1e-10, atol=1e-12
    )


@_PROPERTY_SETTINGS
@given(_small_problem())
def test_property_gram_matrix_is_symmetric_psd(problem):
    est, X, _ = problem
    K = path_kernel(est.module_, est.trajectory_, X)
    assert np.array_equal(K, K.T)
    eigenvalues = np.linalg.eigvalsh(K)
    assert eigenvalues.min() >= -1e-9 * max(1.0, eigenvalues.max())


@_PROPERTY_SETTINGS
@given(_small_problem(), st.randoms(use_true_random=False))
def test_property_permuting_rows_permutes_the_kernel(problem, random):
    est, X, Z = problem
    order = list(range(len(X)))
    random.shuffle(order)
    K = path_kernel(est.module_, est.trajectory_, X, Z)
    np.testing.assert_allclose(
        path_kernel(est.module_, est.trajectory_, X[order], Z), K[order], rtol=1e-12
    )


@_PROPERTY_SETTINGS
@given(
    _small_problem(),
    st.sampled_from(sorted(ENGINES)),
    st.sampled_from([1e-5, 1e-3, None]),
)
def test_property_engine_and_block_size_do_not_change_the_kernel(
    problem, engine, working_memory
):
    est, X, Z = problem
    reference = path_kernel(est.module_, est.trajectory_, X, Z, engine="jacobian")
    got = path_kernel(
        est.module_, est.trajectory_, X, Z, engine=engine, working_memory=working_memory
    )
    np.testing.assert_allclose(got, reference, rtol=1e-9, atol=1e-12)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize(
    "engine",
    [e for e in sorted(ENGINES) if e != "structured"],  # no Dropout rule
)
def test_kernels_are_computed_in_eval_mode_and_leave_the_mode_alone(engine):
    def net(n_features, n_outputs):
        return torch.nn.Sequential(
            torch.nn.Linear(n_features, 4),
            torch.nn.Tanh(),
            torch.nn.Dropout(0.5),
            torch.nn.Linear(4, n_outputs),
        )

    X = np.random.RandomState(0).randn(8, 3)
    est = PathKernelRegressor(module=net, max_iter=2, dtype="float64", random_state=0)
    est.fit(X, X[:, 0])
    module, trajectory = est.module_, est.trajectory_
    expected = path_kernel_reference(module, trajectory, torch.tensor(X[:5]))
    # Dropout in training mode would make every call differ (and torch.func
    # refuses random operations inside vmap): the functions use eval mode.
    module.train()
    K = path_kernel(module, trajectory, X[:5], engine=engine)
    np.testing.assert_allclose(K, expected, rtol=1e-10)
    diagonal = _path.path_kernel_diagonal(module, trajectory, X[:5], engine=engine)
    np.testing.assert_allclose(diagonal, np.diag(expected), rtol=1e-10)
    assert all(layer.training for layer in module.modules())


# -- solvers: the kernel of momentum and Adam paths --------------------------


@pytest.fixture(scope="module", params=["nesterov", "adam"])
def fitted_solver(request):
    """A float64 regressor trained with Nesterov momentum or Adam, minibatch."""
    rng = np.random.RandomState(1)
    X = rng.randn(30, 4)
    Y = np.column_stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2]])
    solver = (
        dict(momentum=0.8, learning_rate_init=0.05)
        if request.param == "nesterov"
        else dict(solver="adam", learning_rate_init=0.01)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = PathKernelRegressor(
            (6,),
            max_iter=4,
            batch_size=10,
            alpha=0.01,
            dtype="float64",
            random_state=0,
            **solver,
        ).fit(X, Y)
    return est, X


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_solver_path_kernel_matches_reference(fitted_solver, engine):
    est, X = fitted_solver
    trajectory = est.trajectory_
    if trajectory.solver.diagonal and not ENGINES[engine].supports_metric:
        with pytest.raises(ValueError, match="cannot take the path kernel of a"):
            path_kernel(est.module_, trajectory, X[:5], engine=engine)
        return
    got = path_kernel(est.module_, trajectory, X[:9], X[:4] + 0.1, engine=engine)
    want = path_kernel_reference(est.module_, trajectory, X[:9], X[:4] + 0.1)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    diagonal = _path.path_kernel_diagonal(est.module_, trajectory, X[:9], engine=engine)
    np.testing.assert_allclose(
        diagonal,
        np.diag(path_kernel_reference(est.module_, trajectory, X[:9])),
        rtol=1e-10,
    )


def test_momentum_kernel_weighs_each_step_by_its_effective_step_size(fitted_solver):
    # The every-step kernel is sum_s p_s K_{w_s}, p_s = sum_{t>=s} eps_t beta_{t,s}
    # (eps / (1 - mu) far from the end), in Adam's metric when there is one.
    est, X = fitted_solver
    trajectory = est.trajectory_.with_quadrature("left")
    p = trajectory.effective_step_sizes
    want = sum(
        p[s]
        * tangent_kernel_reference(
            est.module_,
            trajectory.parameters(s),
            X[:6],
            metric=trajectory.kernel_metric_at(s),
        )
        for s in range(trajectory.n_steps)
    )
    got = path_kernel(est.module_, trajectory, X[:6], engine="jacobian")
    np.testing.assert_allclose(got, want, rtol=1e-10)
    if not trajectory.solver.diagonal:  # Nesterov, 12 steps of 0.05, mu = 0.8
        mu, eps = 0.8, 0.05
        assert p[0] == pytest.approx(eps * (1 + mu * (1 - mu**12) / (1 - mu)))


# -- a dask worker lost while the kernel runs -----------------------------------


def _kill_a_busy_worker(scheduler, pids):
    """A scheduler plugin that SIGKILLs a worker with tasks in flight.

    It waits until the call's scattered data (the shared object: engine and
    rows) is on every worker, as ``run_tasks`` broadcasts it: data without a
    recipe cannot be computed again, so a call whose only copy was lost would
    fail with FutureCancelledError instead of retrying its tasks. Then, when a
    task is next done, it kills a worker that is processing some. Should the
    data never reach every worker, nothing is killed and the test fails.
    """
    import os
    import signal

    from distributed.diagnostics.plugin import SchedulerPlugin

    class Killer(SchedulerPlugin):
        killed = None  # (address, tasks it was processing)

        def transition(self, key, start, finish, *args, **kwargs):
            if self.killed is not None or finish != "memory":
                return
            n_workers = len(scheduler.workers)
            data = [task for task in scheduler.tasks.values() if not task.run_spec]
            if not data or any(len(task.who_has) < n_workers for task in data):
                return
            for worker in scheduler.workers.values():
                if worker.processing:
                    self.killed = (worker.address, len(worker.processing))
                    os.kill(pids[worker.address], signal.SIGKILL)
                    return

    return Killer()


@pytest.mark.slow  # a LocalCluster of two processes: ~10 s, more under load
def test_a_dask_worker_lost_mid_kernel_changes_no_bit(fitted, small_grid):
    # The lost worker's tasks run again on the other one (its nanny restarts
    # it meanwhile), and the caller adds every part in checkpoint order.
    import os

    est, X = fitted
    expected = path_kernel(est.module_, est.trajectory_, X, working_memory=1e-4)
    with local_cluster() as (cluster, client):
        killer = _kill_a_busy_worker(cluster.scheduler, client.run(os.getpid))
        cluster.scheduler.add_plugin(killer)
        with parallel_config(backend="dask"):
            got = path_kernel(
                est.module_, est.trajectory_, X, working_memory=1e-4, n_jobs=2
            )
    assert killer.killed is not None and killer.killed[1] > 0, killer.killed
    assert np.array_equal(got, expected)


# ------------------------------------------ the device tile policy (issue 21)

# One tile pair of `fitted` (544 bytes of state a row, float64) fits a quarter
# of half of 81,920 bytes for 8-row tiles, not for 16: 30 rows cross 4 tiles.
_SMALL_DEVICE = 81_920


def _ops_per_checkpoint(module, X_t, free_bytes=None):
    """Operations of one checkpoint's strips of ``K(X, X)``, statics cached.

    ``free_bytes`` forces the device policy (None: the CPU's grid). Returns
    the counter, the operations that wait for the device, and the tile.
    """
    parameters = {n: p.detach().to(X_t.device) for n, p in module.named_parameters()}
    bound = select_engine(
        "structured", module, list(parameters), example=torch.zeros(1, X_t.shape[1])
    )
    policy = _blocking.device_policy(free_bytes) if free_bytes else nullcontext()
    with policy:
        grid = _path._plan_grid(bound, 10, torch.float32, X_t.device)
        work = _path._Work(bound, X_t, X_t, True, True, (), X_t.device, **grid)
        blocks = _path._row_blocks(work, None)
    counted = Dispatched()
    for r0, r1 in blocks:
        _path._strip_part(work, r0, r1, parameters, None)  # the strip's statics
        with counted:
            _path._strip_part(work, r0, r1, parameters, None)
    return counted.ops, counted.synchronising, work.tile


def _mlp(*widths):
    torch.manual_seed(0)
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def test_device_policy_dispatches_ten_times_fewer_operations_per_checkpoint():
    # W2's shape (issue 21): meta tensors dispatch every operation of the
    # kernel without computing it, so 4096 rows count in a fraction of a second.
    w2 = _mlp(64, 256, 256, 10)
    X_t = torch.empty(4096, 64, device="meta")
    cpu, cpu_waits, cpu_tile = _ops_per_checkpoint(w2, X_t)
    device, device_waits, device_tile = _ops_per_checkpoint(w2, X_t, 2**34)
    assert (cpu_tile, device_tile) == (512, 8192)
    assert sum(cpu.values()) >= 10 * sum(device.values())
    assert cpu_waits == device_waits == []


@pytest.mark.parametrize("free_bytes", [None, 2**34, 2**23])
def test_meta_rows_dispatch_what_real_rows_do(free_bytes):
    # The counts above are those of real work, without host synchronisation.
    small = _mlp(64, 8, 8, 10)
    X = torch.randn(600, 64)
    real, real_waits, tile = _ops_per_checkpoint(small, X, free_bytes)
    meta, _, _ = _ops_per_checkpoint(small, X.to("meta"), free_bytes)
    assert real == meta and real_waits == []
    assert "_local_scalar_dense" not in real
    assert tile == {None: 512, 2**34: 8192, 2**23: 128}[free_bytes]


@pytest.mark.parametrize("symmetric", [True, False])
def test_device_policy_kernel_matches_reference(fitted, symmetric):
    est, X = fitted
    Z = None if symmetric else X[:13] + 0.1
    with _blocking.device_policy(_SMALL_DEVICE):
        grid = _path._plan_grid(_bound(est, X), 2, torch.float64, torch.device("cpu"))
        got = path_kernel(est.module_, est.trajectory_, X, Z)
    assert grid["tile"] == 8
    want = path_kernel_reference(est.module_, est.trajectory_, X, Z)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    if symmetric:
        assert np.array_equal(got, got.T)


def _bound(est, X):
    return select_engine(
        "structured",
        est.module_,
        est.trajectory_.parameter_names,
        example=torch.as_tensor(X[:1]),
    )


def test_device_policy_float32_kernel_matches_reference():
    X = np.random.RandomState(1).randn(40, 5).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = PathKernelRegressor((16,), max_iter=5, random_state=0).fit(
            X, X[:, 0] * X[:, 1]
        )
    assert next(est.module_.parameters()).dtype == torch.float32
    with _blocking.device_policy(2**17):  # 16-row tiles: 40 rows cross 3
        got = path_kernel(est.module_, est.trajectory_, X)
    want = path_kernel_reference(est.module_, est.trajectory_, X)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_device_policy_is_bit_identical_across_budgets(fitted):
    est, X = fitted
    with _blocking.device_policy(_SMALL_DEVICE):
        whole = path_kernel(est.module_, est.trajectory_, X, working_memory=1024)
        strips = path_kernel(est.module_, est.trajectory_, X, working_memory=1e-3)
    assert np.array_equal(whole, strips)


def _diagonal_ops_per_checkpoint(module, X_t, free_bytes=None):
    """Operations of one checkpoint's ``_diagonal_part`` over every row block."""
    parameters = {n: p.detach().to(X_t.device) for n, p in module.named_parameters()}
    bound = select_engine(
        "structured", module, list(parameters), example=torch.zeros(1, X_t.shape[1])
    )
    policy = _blocking.device_policy(free_bytes) if free_bytes else nullcontext()
    with policy:
        tile = _blocking.tile_within_budget(
            None, bound.bytes_per_row(10, 4), X_t.device
        )
    rows = _path._Rows(bound=bound, X_t=X_t, tile=tile, device=X_t.device)
    counted = Dispatched()
    with counted:
        for r0, r1 in _path.row_blocks(X_t.shape[0], tile):
            _path._diagonal_part(rows, r0, r1, parameters, None)
    return counted, tile


def test_device_policy_diagonal_dispatches_fewer_operations_per_checkpoint():
    w2 = _mlp(64, 256, 256, 10)
    X_t = torch.empty(20_000, 64, device="meta")
    cpu, cpu_tile = _diagonal_ops_per_checkpoint(w2, X_t)
    device, device_tile = _diagonal_ops_per_checkpoint(w2, X_t, 2**34)
    assert (cpu_tile, device_tile) == (512, 8192)
    assert cpu.total >= 10 * device.total
    assert cpu.synchronising == device.synchronising == []


def test_device_policy_diagonal_matches_reference(fitted):
    est, X = fitted
    with _blocking.device_policy(_SMALL_DEVICE):
        got = _path.path_kernel_diagonal(est.module_, est.trajectory_, X)
    want = np.diag(path_kernel_reference(est.module_, est.trajectory_, X))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def _waits_in(monkeypatch, *functions):
    """Operations that wait for the device inside each task function of ``_path``."""
    waits = collections.Counter()
    for name in functions:
        task = getattr(_path, name)

        def counted(*args, task=task, name=name, **kwargs):
            with Dispatched() as mode:
                result = task(*args, **kwargs)
            waits.update(f"{name}: {op}" for op in mode.synchronising)
            return result

        monkeypatch.setattr(_path, name, counted)
    return waits


@pytest.mark.parametrize("solver", ["sgd", "adam"])  # adam: the metric kernel
def test_no_operation_inside_the_checkpoint_loops_waits_for_the_device(
    solver, monkeypatch
):
    X = np.random.RandomState(2).randn(20, 3)
    y = np.sin(X[:, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = PathKernelRegressor(
            (6,), max_iter=3, dtype="float64", random_state=0, solver=solver
        ).fit(X, y)
    waits = _waits_in(
        monkeypatch,
        "_strip_part",
        "_diagonal_part",
        "_stacked_strip_part",  # the structured engine's stacks of checkpoints
        "_stacked_diagonal_part",
    )
    with _blocking.device_policy(2**22):  # the device grid (hooks: 4-row tiles)
        for engine in sorted(ENGINES):
            path_kernel(est.module_, est.trajectory_, X, X[:7], engine=engine)
            path_kernel(est.module_, est.trajectory_, X, trace=False, engine=engine)
            _path.path_kernel_diagonal(est.module_, est.trajectory_, X, engine=engine)
        # TracIn folds the loss derivatives into the states of row handles,
        # which the loops look up tile by tile.
        path_influence(est.module_, est.trajectory_, X, y, loss="squared_error")
        path_self_influence(est.module_, est.trajectory_, X, y, loss="squared_error")
    assert not waits, waits


def _out_of_memory_at(monkeypatch, name, call):
    """``_path.<name>`` raises a CUDA out-of-memory error at its ``call``-th call.

    Returns the tile of every call, the failing one included.
    """
    tiles = []
    task = getattr(_path, name)

    def failing(shared, *args):
        tiles.append(shared.tile)
        if len(tiles) == call:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate")
        return task(shared, *args)

    monkeypatch.setattr(_path, name, failing)
    return tiles


@pytest.mark.parametrize("symmetric", [True, False])
# The first strip's first task, or the second strip's: the first is kept.
@pytest.mark.parametrize("call", [1, 13])
def test_device_out_of_memory_retries_with_half_the_tile(
    fitted, symmetric, call, monkeypatch
):
    est, X = fitted
    Z = None if symmetric else X + 0.1
    tiles = _out_of_memory_at(monkeypatch, "_strip_part", call)
    retry = "ran out of CUDA memory with 8-row tiles; retrying with 4-row tiles"
    with (
        _blocking.device_policy(_SMALL_DEVICE),  # strips of 24 rows, then 12
        pytest.warns(RuntimeWarning, match=retry),
    ):
        got = path_kernel(est.module_, est.trajectory_, X, Z)
    assert tiles[:call] == [8] * call and set(tiles[call:]) == {4}
    want = path_kernel_reference(est.module_, est.trajectory_, X, Z)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    if symmetric:
        assert np.array_equal(got, got.T)


def test_device_out_of_memory_in_the_diagonal_retries_with_half_the_tile(
    fitted, monkeypatch
):
    est, X = fitted
    tiles = _out_of_memory_at(monkeypatch, "_diagonal_part", 2)
    with (
        _blocking.device_policy(_SMALL_DEVICE * 8),
        pytest.warns(RuntimeWarning, match="diagonal ran out of CUDA memory"),
    ):
        got = _path.path_kernel_diagonal(est.module_, est.trajectory_, X)
    assert tiles[:2] == [tiles[0]] * 2 and set(tiles[2:]) == {tiles[0] // 2}
    want = np.diag(path_kernel_reference(est.module_, est.trajectory_, X))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_out_of_memory_with_one_row_tiles_is_raised(fitted, monkeypatch):
    est, X = fitted

    def failing(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(_path, "_strip_part", failing)
    with (
        _blocking.device_policy(_SMALL_DEVICE),
        pytest.warns(RuntimeWarning, match="retrying with 1-row tiles"),
        pytest.raises(torch.cuda.OutOfMemoryError, match="CUDA out of memory"),
    ):
        path_kernel(est.module_, est.trajectory_, X)


def _stack_sizes(monkeypatch, name="_stacked_strip_part"):
    """Records the size of every stack of checkpoints a ``name`` task gets."""
    sizes, task = [], getattr(_path, name)

    def recording(shared, r0, r1, stacked, metric=None):
        sizes.append(next(iter(stacked.values())).shape[0])
        return task(shared, r0, r1, stacked, metric)

    monkeypatch.setattr(_path, name, recording)
    return sizes


@pytest.mark.parametrize("Z, trace", [(None, True), ("other", True), (None, False)])
def test_stacked_checkpoints_match_the_reference(fitted, Z, trace, monkeypatch):
    est, X = fitted
    Z = X[:13] + 0.1 if Z == "other" else None
    sizes = _stack_sizes(monkeypatch)
    with _blocking.device_policy(2**30):  # room for all 12 checkpoints at once
        got = path_kernel(est.module_, est.trajectory_, X, Z, trace=trace)
    assert sizes and set(sizes) == {12}
    want = path_kernel_reference(est.module_, est.trajectory_, X, Z, trace=trace)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    if Z is None and trace:
        assert np.array_equal(got, got.T)


def test_checkpoints_are_stacked_only_where_the_budget_holds_them(fitted, monkeypatch):
    est, X = fitted
    sizes = _stack_sizes(monkeypatch)
    with _blocking.device_policy(2**21):  # one 30-row strip, stacks of a few
        small = path_kernel(est.module_, est.trajectory_, X)
    assert sizes and 1 < max(sizes) < 12
    sizes.clear()
    path_kernel(est.module_, est.trajectory_, X)  # the CPU: one per checkpoint
    path_kernel(est.module_, est.trajectory_, X, engine="jacobian")
    assert sizes == []
    want = path_kernel_reference(est.module_, est.trajectory_, X)
    np.testing.assert_allclose(small, want, rtol=1e-10, atol=1e-12)


def _w2_on_meta():
    """W2 (MLP 64-256-256-10) and its parameters on meta tensors."""
    w2 = _mlp(64, 256, 256, 10)
    parameters = {n: p.detach().to("meta") for n, p in w2.named_parameters()}
    bound = select_engine(
        "structured", w2, list(parameters), example=torch.zeros(1, 64), metric=True
    )
    return bound, parameters


def _stacked_kernel_ops(
    monkeypatch, most, metric, n=4096, checkpoints=16, device_sub_blocks=True
):
    """W2's strip of ``n`` meta rows over ``checkpoints``, stacks of ``most``.

    Returns the number of tasks and the operations of the strip's tasks and
    weighted sums (statics cached). The engine is bound under the device
    policy, so that its metric sub-blocks are the device's; with
    ``device_sub_blocks=False`` it is bound before, and sizes them as on the
    CPU (``METRIC_TEMPORARIES``, as before the device sized them).
    """
    policy = _blocking.device_policy(2**37)
    if not device_sub_blocks:
        bound, parameters = _w2_on_meta()
    with policy:
        if device_sub_blocks:
            bound, parameters = _w2_on_meta()
        X_t = torch.empty(n, 64, device="meta")
        metrics = {name: torch.ones_like(p) for name, p in parameters.items()}
        points = [(0.1, lambda: parameters, lambda: metrics if metric else None)]
        points *= checkpoints
        monkeypatch.setattr(_stacks, "MAX_STACKED_CHECKPOINTS", most)
        grid = _path._plan_grid(bound, 10, torch.float32, X_t.device)
        work = _path._Work(bound, X_t, X_t, True, True, (), X_t.device, **grid)
        tasks = _path._checkpoint_tasks(work, points, n)
    counted = Dispatched()
    strip = torch.zeros(n, n, device="meta")
    for checkpoint, weight in zip(tasks.checkpoints, tasks.weights):
        tasks.function(work, 0, n, *checkpoint())  # the statics
        with counted:
            for (a0, a1, b0, b1), part in tasks.function(work, 0, n, *checkpoint()):
                _stacks.add_weighted(strip[a0:a1, b0:b1], part, weight)
    return len(tasks.weights), counted


@pytest.mark.parametrize("metric", [False, True])  # plain; Adam's metric kernel
def test_stacked_checkpoints_dispatch_fewer_operations_per_checkpoint(
    metric, monkeypatch
):
    # One task per checkpoint, as before; then all stacked. (Adam's kernel
    # contracts in row sub-blocks: fewer rows and checkpoints count faster.)
    n, checkpoints = (256, 8) if metric else (4096, 16)
    single, one = _stacked_kernel_ops(monkeypatch, 1, metric, n, checkpoints)
    stacks, stacked = _stacked_kernel_ops(monkeypatch, 16, metric, n, checkpoints)
    assert (single, stacks) == (checkpoints, 1)
    assert one.total >= 4 * stacked.total and stacked.synchronising == []


def test_stacked_checkpoints_in_a_metric_take_device_sized_sub_blocks(monkeypatch):
    # W2's Adam kernel, stacks of 8: sub-blocks sized by the device's budget
    # against the shapes-only METRIC_TEMPORARIES sizing (about 20 rows).
    args = (monkeypatch, 16, True, 1024, 8)
    _, shaped = _stacked_kernel_ops(*args, device_sub_blocks=False)
    _, device = _stacked_kernel_ops(*args, device_sub_blocks=True)
    assert shaped.launches >= 8 * device.launches  # 82.4 and 9.6 per checkpoint
    assert shaped.synchronising == device.synchronising == []


def _stacked_diagonal_ops(monkeypatch, most, metric, n=20_000, checkpoints=16):
    """W2's diagonal of ``n`` meta rows over ``checkpoints``, stacks of ``most``.

    The tasks of ``diagonal_sum`` and their weighted sums, as it adds them.
    """
    bound, parameters = _w2_on_meta()
    metrics = {n: torch.ones_like(p) for n, p in parameters.items()}
    points = [(0.1, lambda: parameters, lambda: metrics if metric else None)]
    points *= checkpoints
    X_t = torch.empty(n, 64, device="meta")
    bytes_per_row = bound.bytes_per_row(10, 4)
    monkeypatch.setattr(_stacks, "MAX_STACKED_CHECKPOINTS", most)
    with _blocking.device_policy(2**40):
        tile = _blocking.tile_within_budget(None, bytes_per_row, X_t.device)
        rows = _path._Rows(bound=bound, X_t=X_t, tile=tile, device=X_t.device)
        blocks = _path.row_blocks(n, tile)
        tasks = _path._diagonal_tasks(rows, points, blocks, bytes_per_row, 1)
    diagonal = torch.zeros(n, dtype=torch.float64, device="meta")
    with Dispatched() as counted:
        for r0, r1 in blocks:
            for checkpoint, weight in zip(tasks.checkpoints, tasks.weights):
                for a0, part in tasks.function(rows, r0, r1, *checkpoint()):
                    if isinstance(weight, float):
                        diagonal[a0 : a0 + tile] += weight * part.double()
                    else:
                        diagonal[a0 : a0 + tile] += _stacks.weighted_sum(weight, part)
    return len(tasks.weights), counted


@pytest.mark.parametrize("metric", [False, True])
def test_stacked_diagonal_dispatches_fewer_operations_per_checkpoint(
    metric, monkeypatch
):
    single, one = _stacked_diagonal_ops(monkeypatch, 1, metric, 8192)
    stacks, stacked = _stacked_diagonal_ops(monkeypatch, 16, metric, 8192)
    assert (single, stacks) == (16, 1)
    assert one.total >= 4 * stacked.total and stacked.synchronising == []


def test_out_of_memory_in_a_stack_retries_with_smaller_stacks(fitted, monkeypatch):
    est, X = fitted
    calls, task = [], _path._stacked_strip_part

    def failing(work, r0, r1, stacked, metric=None):
        calls.append((work.tile, next(iter(stacked.values())).shape[0]))
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return task(work, r0, r1, stacked, metric)

    monkeypatch.setattr(_path, "_stacked_strip_part", failing)
    with (
        _blocking.device_policy(2**30),  # 2048-row tiles, all 12 stacked
        pytest.warns(RuntimeWarning, match="retrying with 1024-row tiles"),
    ):
        got = path_kernel(est.module_, est.trajectory_, X)
    assert calls[0] == (2048, 12)
    assert {tile for tile, _ in calls[1:]} == {1024}
    assert {size for _, size in calls[1:]} == {6}  # 12 // 2
    want = path_kernel_reference(est.module_, est.trajectory_, X)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert np.array_equal(got, got.T)


@pytest.fixture(scope="module")
def fitted_adam():
    """A float64 regressor trained with Adam: 12 kernel nodes, each in a metric."""
    rng = np.random.RandomState(1)
    X = rng.randn(30, 4)
    Y = np.column_stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = PathKernelRegressor(
            (6,), max_iter=12, solver="adam", learning_rate_init=0.01,
            dtype="float64", random_state=0, kernel_nodes=None,
        ).fit(X, Y)  # fmt: skip
    assert est.trajectory_.solver.diagonal
    return est, X


@pytest.mark.parametrize("Z, trace", [(None, True), ("other", True), (None, False)])
def test_stacked_checkpoints_in_a_metric_match_the_reference(
    fitted_adam, Z, trace, monkeypatch
):
    est, X = fitted_adam
    Z = X[:13] + 0.1 if Z == "other" else None
    default = path_kernel(est.module_, est.trajectory_, X, Z, trace=trace)
    sizes = _stack_sizes(monkeypatch)
    with _blocking.device_policy(2**30):  # room for all 12 checkpoints at once
        got = path_kernel(est.module_, est.trajectory_, X, Z, trace=trace)
    assert sizes and set(sizes) == {12}
    np.testing.assert_allclose(got, default, rtol=1e-12, atol=1e-14)
    if Z is None and trace:  # the default is checked against it elsewhere
        want = path_kernel_reference(est.module_, est.trajectory_, X)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    if Z is None and trace:
        assert np.array_equal(got, got.T)


def _recorded_sub_blocks(monkeypatch):
    """``(stack, rows, bytes)`` of every metric sub-block the device sizes."""
    calls, sized = [], _structured.sub_block_rows

    def recording(n_rows, per_row, budget, *, stack=1):
        rows = sized(n_rows, per_row, budget, stack=stack)
        calls.append((stack, rows, n_rows, stack * rows * per_row))
        return rows

    monkeypatch.setattr(_structured, "sub_block_rows", recording)
    return calls


# Stacks of a few checkpoints, sub-blocks of a few rows (the full kernel's
# parts are O * O times larger: it stacks in more memory).
@pytest.mark.parametrize("trace, free_bytes", [(True, 2**21), (False, 2**23)])
def test_stacked_checkpoints_in_a_metric_cut_device_sized_sub_blocks(
    fitted_adam, trace, free_bytes, monkeypatch
):
    est, X = fitted_adam
    sizes, calls = _stack_sizes(monkeypatch), _recorded_sub_blocks(monkeypatch)
    with _blocking.device_policy(free_bytes):
        got = path_kernel(est.module_, est.trajectory_, X, trace=trace)
    assert sizes and 1 < max(sizes) < 12, sizes
    assert any(stack > 1 and 1 < rows < n for stack, rows, n, _ in calls), calls
    quarter = free_bytes // 2 // 4  # the sub-blocks' share of the device budget
    assert all(rows == 1 or total <= quarter for _, rows, _, total in calls)
    want = path_kernel_reference(est.module_, est.trajectory_, X, trace=trace)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_stacked_checkpoints_in_a_metric_retry_with_smaller_sub_blocks(
    fitted_adam, monkeypatch
):
    est, X = fitted_adam
    task, failed = _path._stacked_strip_part, []

    def failing(work, r0, r1, stacked, metric=None):
        if not failed:
            failed.append(work.tile)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return task(work, r0, r1, stacked, metric)

    calls = _recorded_sub_blocks(monkeypatch)
    with _blocking.device_policy(2**21):
        first = path_kernel(est.module_, est.trajectory_, X)
        before = max(total for *_, total in calls)
        calls.clear()
        monkeypatch.setattr(_path, "_stacked_strip_part", failing)
        with pytest.warns(RuntimeWarning, match="ran out of CUDA memory"):
            got = path_kernel(est.module_, est.trajectory_, X)
    # The retry's tile is still larger than the 30 rows: only the stacks and
    # the sub-blocks' share (half of it) can shrink.
    half = 2**21 // 2 // 4 // 2
    assert calls and all(rows == 1 or total <= half for _, rows, _, total in calls)
    assert max(total for *_, total in calls) < before
    want = path_kernel_reference(est.module_, est.trajectory_, X)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(first, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_stacked_diagonal_matches_the_reference(
    fitted, fitted_adam, solver, monkeypatch
):
    est, X = fitted if solver == "sgd" else fitted_adam
    default = _path.path_kernel_diagonal(est.module_, est.trajectory_, X)
    sizes = _stack_sizes(monkeypatch, "_stacked_diagonal_part")
    with _blocking.device_policy(2**19):  # one block of 30 rows, stacks of 3
        got = _path.path_kernel_diagonal(est.module_, est.trajectory_, X)
    assert sizes and 1 < max(sizes) < 12, sizes
    want = np.diag(path_kernel_reference(est.module_, est.trajectory_, X))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got, default, rtol=1e-12, atol=1e-14)
