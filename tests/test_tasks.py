"""Tasks per block and checkpoint (``_compute/_tasks.py``): threads and a cluster."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from _cluster import local_cluster
from joblib import parallel_config
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning

from sklearn_pathkernel import PathKernelClassifier, PathKernelFeatures
from sklearn_pathkernel._compute import _blocking, _tasks
from sklearn_pathkernel._compute._tasks import (
    Shared,
    block_parts,
    compact,
    row_blocks,
    run_tasks,
)
from sklearn_pathkernel._kernels import _path


def _fit(max_iter, n_rows=300):
    X, y = load_digits(return_X_y=True)
    X, y = X[:n_rows] / 16.0, y[:n_rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # L2 (alpha) exercises the decomposition's bias term on the workers.
        est = PathKernelClassifier(
            (16,), max_iter=max_iter, alpha=1e-3, random_state=0
        ).fit(X, y)
    return est, X, y


@pytest.fixture(scope="module")
def digits():
    return _fit(4)


def _all_four(est, X, y):
    """kernel (both forms), kernel_diagonal, decompose (both forms), features."""
    machine = est.decompose(X[:32])
    exact = est.decompose(X[:16], exact=True, n_nodes=2)
    features = PathKernelFeatures(est, n_components=24, random_state=0)
    return {
        "kernel": est.kernel(X),
        "kernel X, Y": est.kernel(X[:50], X),
        # Not the training rows, whose diagonal the estimator caches.
        "diagonal": est.kernel_diagonal(X[:250]),
        "contributions": machine.contributions,
        "bias": machine.bias,
        "exact contributions": exact.contributions,
        "exact bias": exact.bias,
        "features": features.fit(X, y).transform(X[:100]),
    }


def _assert_bit_identical(got, expected):
    for name in expected:
        assert np.array_equal(got[name], expected[name]), name


@pytest.fixture(scope="module")
def serial(digits):
    return _all_four(*digits)


@pytest.fixture
def small_grid(monkeypatch):
    """64-row tiles, 128-column chunks and a small budget: many strips."""
    monkeypatch.setattr(_blocking, "TILE_ROWS", 64)
    monkeypatch.setattr(_blocking, "CHUNK_COLUMNS", 128)


@pytest.fixture(scope="module")
def cluster():
    with local_cluster() as (_, client):
        yield client


# -- the runner ----------------------------------------------------------------


def test_tasks_run_in_order_whatever_runs_them():
    def square(shared, x):
        return shared.offset + x * x

    shared = Shared()
    shared.offset = 1
    tasks = [(x,) for x in range(20)]
    expected = [1 + x * x for x in range(20)]
    assert list(run_tasks(square, shared, tasks, n_jobs=None)) == expected
    assert list(run_tasks(square, shared, iter(tasks), n_jobs=2)) == expected


def test_cached_keeps_the_last_key_per_thread():
    calls = []

    def compute(value):
        calls.append(value)
        return value

    shared = Shared()
    assert [shared.cached(k, lambda k=k: compute(k)) for k in "aab"] == list("aab")
    assert calls == ["a", "b"]  # "a" computed once while it was the last key
    assert shared.cached("a", lambda: compute("A")) == "A"  # "b" replaced it


def test_shared_objects_travel_without_their_cache_and_report_their_size():
    shared = Shared()
    shared.rows = torch.zeros(1000, dtype=torch.float64)
    shared.cached("key", lambda: torch.zeros(10**6))
    copy = pickle.loads(pickle.dumps(shared))
    assert torch.equal(copy.rows, shared.rows)
    assert "_local" not in copy.__dict__
    # joblib's dask backend scatters arguments that dask.sizeof finds > 1 kB.
    assert shared.__sizeof__() >= 8000


def test_compact_copies_only_views():
    whole = torch.arange(100.0)
    own = torch.arange(5.0)
    out = compact({"view": whole[10:15], "own": own})
    assert out["own"] is own
    assert torch.equal(out["view"], whole[10:15])
    assert out["view"].untyped_storage().nbytes() == 5 * whole.element_size()


def test_row_blocks_are_whole_tiles():
    assert row_blocks(1000, 64) == [(0, 512), (512, 1000)]
    assert row_blocks(5, 64) == [(0, 5)]


# -- the skeleton: blocks x checkpoints ----------------------------------------


def _serial(function, shared, blocks, checkpoints, checkpoints_outside):
    """What :func:`block_parts` stands for: a plain loop, in its task order."""
    if checkpoints_outside:
        return [
            (block, [function(shared, *block, *c())])
            for c in checkpoints
            for block in blocks
        ]
    return [
        (block, [function(shared, *block, *c()) for c in checkpoints])
        for block in blocks
    ]


def _scaled_rows(shared, r0, r1, weight):
    return torch.arange(r0, r1, dtype=torch.float64) * weight + shared.offset


@pytest.mark.parametrize("checkpoints_outside", [False, True])
@pytest.mark.parametrize("n_jobs", [None, 2])
def test_block_parts_is_the_serial_loop(n_jobs, checkpoints_outside):
    shared = Shared()
    shared.offset = 0.5
    blocks = row_blocks(11, 2, tiles_per_block=2)
    loaded = []

    def checkpoint(weight):
        loaded.append(weight)
        return (weight,)

    checkpoints = [lambda w=w: checkpoint(w) for w in (1.0, 0.1, 3.0)]
    got = [
        (block, list(parts))
        for block, parts in block_parts(
            _scaled_rows,
            shared,
            blocks,
            checkpoints,
            n_jobs=n_jobs,
            checkpoints_outside=checkpoints_outside,
        )
    ]
    # One load per task, as it is dispatched.
    assert len(loaded) == len(blocks) * len(checkpoints)
    expected = _serial(_scaled_rows, shared, blocks, checkpoints, checkpoints_outside)
    assert [block for block, _ in got] == [block for block, _ in expected]
    for (_, parts), (_, want) in zip(got, expected):
        assert len(parts) == len(want)
        assert all(torch.equal(a, b) for a, b in zip(parts, want))


def test_block_parts_skips_what_a_caller_leaves_of_a_run():
    blocks, checkpoints = [(0, 1), (1, 2)], [lambda: (1.0,), lambda: (2.0,)]
    shared = Shared()
    shared.offset = 0.0
    runs = block_parts(_scaled_rows, shared, blocks, checkpoints, n_jobs=None)
    firsts = [(block, next(parts)) for block, parts in runs]
    assert [block for block, _ in firsts] == blocks
    assert [float(part[0]) for _, part in firsts] == [0.0, 1.0]  # each block's own


# -- what travels to a worker -------------------------------------------------


def _payloads(monkeypatch, est, X, y):
    """Pickled bytes of the shared object and the largest task, per caller."""
    sizes = {}

    def recording(function, shared, tasks, *, n_jobs):
        tasks = list(tasks)
        sizes[function.__module__, function.__name__] = (
            len(pickle.dumps(shared)),
            max(len(pickle.dumps(task)) for task in tasks),
        )
        return run_tasks(function, shared, tasks, n_jobs=n_jobs)

    # Every caller's tasks go through the one skeleton, block_parts.
    monkeypatch.setattr(_tasks, "run_tasks", recording)
    # Round-tripped: its checkpoints are views of one matrix holding them all.
    est = pickle.loads(pickle.dumps(est))
    est.kernel(X[:30])
    est.kernel_diagonal(X[:30])
    est.decompose(X[:5], exact=True)
    PathKernelFeatures(est, n_components=8, random_state=0).fit(X, y).transform(X)
    return sizes


def test_a_task_receives_one_checkpoint_not_the_trajectory(monkeypatch):
    est, X, y = _fit(2, n_rows=60)
    longer, _, _ = _fit(8, n_rows=60)  # four times the checkpoints
    assert len(longer.trajectory_) == 4 * len(est.trajectory_)
    short = _payloads(monkeypatch, est, X, y)
    long = _payloads(monkeypatch, longer, X, y)
    assert len(short) == 4  # kernel (also the decomposition's), diagonal, ...
    checkpoint_bytes = est.trajectory_.n_parameters * 4
    for key, (shared, task) in short.items():
        # The same sizes whatever the number of checkpoints ...
        assert long[key] == (shared, task), key
        # ... and a task is about one checkpoint (two for the exact form).
        assert task < 2 * checkpoint_bytes + 20_000, key


# -- threads and worker processes: the same bits --------------------------------


def test_threads_give_the_serial_bits(digits, serial):
    est, X, y = digits
    est.set_params(n_jobs=2)
    try:
        _assert_bit_identical(_all_four(est, X, y), serial)
    finally:
        est.set_params(n_jobs=None)


def test_dask_workers_give_the_serial_bits(digits, serial, cluster, monkeypatch):
    from distributed import get_task_stream

    pickled = []
    getstate = Shared.__getstate__

    def counting(self):
        pickled.append(type(self).__name__)
        return getstate(self)

    monkeypatch.setattr(Shared, "__getstate__", counting)
    est, X, y = digits
    est.set_params(n_jobs=2)
    try:
        with parallel_config(backend="dask"), get_task_stream(cluster) as stream:
            got = _all_four(est, X, y)
    finally:
        est.set_params(n_jobs=None)
    _assert_bit_identical(got, serial)
    workers = {task["worker"] for task in stream.data}
    assert len(workers) == 2  # both worker processes computed blocks
    # The shared engine and rows travel once per call, not once per task:
    # two kernels and two decompositions (each with its kernel), one
    # diagonal, one transform; every call has more tasks than checkpoints.
    calls = {"_Work": 4, "_Rows": 1, "_Walk": 2, "_Sketch": 1}
    for name, n_calls in calls.items():
        assert 1 <= pickled.count(name) <= n_calls, (name, pickled)
    assert len(est.trajectory_) > 1


def test_dask_strips_and_tiles_give_the_serial_bits(digits, small_grid, cluster):
    est, X, _ = digits
    module, trajectory = est.module_, est.trajectory_
    expected = _path.path_kernel(module, trajectory, X, working_memory=0.2)
    expected_diagonal = _path.path_kernel_diagonal(module, trajectory, X)
    with parallel_config(backend="dask"):
        got = _path.path_kernel(module, trajectory, X, working_memory=0.2, n_jobs=-1)
        diagonal = _path.path_kernel_diagonal(module, trajectory, X, n_jobs=-1)
    assert np.array_equal(got, expected)
    assert np.array_equal(diagonal, expected_diagonal)
