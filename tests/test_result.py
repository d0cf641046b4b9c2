"""Kernels written to disk strip by strip, and resumed after an interruption."""

import contextlib
import json
import os
import signal
import socket
import time
import warnings
from collections import namedtuple

import filelock
import numpy as np
import pytest
from _cluster import forkserver, run_script
from sklearn.exceptions import ConvergenceWarning

from sklearn_pathkernel import PathKernelRegressor
from sklearn_pathkernel import path_kernel as _path_kernel
from sklearn_pathkernel._compute import _blocking, _result
from sklearn_pathkernel._kernels import _path

Fitted = namedtuple("Fitted", "module trajectory X")
_REAL_PART = _path._strip_part


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.RandomState(0)
    X = rng.randn(30, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = PathKernelRegressor(
            (8,), max_iter=6, dtype="float64", random_state=0
        ).fit(X, np.sin(X[:, 0]))
    return Fitted(est.module_, est.trajectory_, X)


@pytest.fixture
def small_grid(monkeypatch):
    """4-row tiles and 8-column chunks: 30 rows make many strips."""
    monkeypatch.setattr(_blocking, "TILE_ROWS", 4)
    monkeypatch.setattr(_blocking, "CHUNK_COLUMNS", 8)


def path_kernel(fitted, Y=None, **options):
    return _path_kernel(fitted.module, fitted.trajectory, fitted.X, Y, **options)


@pytest.mark.parametrize("symmetric", [True, False])
def test_a_file_holds_the_same_bits_as_memory(fitted, small_grid, tmp_path, symmetric):
    Y = None if symmetric else fitted.X[:11] * 0.5
    in_memory = path_kernel(fitted, Y, working_memory=1e-4)
    path = tmp_path / "K.npy"
    on_disk = path_kernel(fitted, Y, working_memory=1e-4, out=path)
    assert isinstance(on_disk, np.memmap)
    assert np.array_equal(np.load(path), in_memory)
    assert not os.path.exists(f"{path}.progress.json")  # complete: no sidecar


def test_float32_result_is_the_float64_kernel_rounded_once(fitted, tmp_path):
    K = path_kernel(fitted)
    K32 = path_kernel(fitted, out=tmp_path / "K.npy", dtype=np.float32)
    assert K32.dtype == np.float32
    assert np.array_equal(np.asarray(K32), K.astype(np.float32))
    assert os.path.getsize(tmp_path / "K.npy") < K.nbytes * 0.6


def test_an_array_is_filled_in_place(fitted):
    out = np.full((30, 30), np.nan)
    assert path_kernel(fitted, out=out) is out
    assert np.array_equal(out, path_kernel(fitted))


def _interrupt_after(monkeypatch, n_strips, n_checkpoints):
    """Let ``n_strips`` strips finish, then raise KeyboardInterrupt; count tasks.

    A strip is one task per kernel node (``_strip_part``): ``n_checkpoints``.
    """
    calls = []

    def part(work, r0, r1, parameters, metric):
        calls.append((r0, r1))
        if n_strips is not None and len(calls) > n_strips * n_checkpoints:
            raise KeyboardInterrupt
        return _REAL_PART(work, r0, r1, parameters, metric)

    monkeypatch.setattr(_path, "_strip_part", part)
    return calls


@pytest.mark.parametrize("symmetric", [True, False])
def test_an_interrupted_kernel_resumes_where_it_stopped(
    fitted, small_grid, tmp_path, monkeypatch, symmetric
):
    Y = None if symmetric else fitted.X[:11] * 0.5
    expected = path_kernel(fitted, Y, working_memory=1e-4)
    path = tmp_path / "K.npy"
    _interrupt_after(monkeypatch, 3, len(fitted.trajectory.kernel_nodes()))
    with pytest.raises(KeyboardInterrupt):
        path_kernel(fitted, Y, working_memory=1e-4, out=path)
    assert os.path.exists(f"{path}.progress.json")

    calls = _interrupt_after(monkeypatch, None, None)
    # Another budget on resume: whole rows of the same grid, so the same bits.
    K = path_kernel(fitted, Y, working_memory=2e-4, out=path)
    assert 0 < len(calls) and all(r0 >= 12 for r0, _ in calls)  # 3 strips of 4
    assert np.array_equal(np.asarray(K), expected)
    assert not os.path.exists(f"{path}.progress.json")


def test_another_call_never_resumes_a_file_it_did_not_start(
    fitted, small_grid, tmp_path, monkeypatch
):
    path = tmp_path / "K.npy"
    _interrupt_after(monkeypatch, 2, len(fitted.trajectory.kernel_nodes()))
    with pytest.raises(KeyboardInterrupt):
        path_kernel(fitted, working_memory=1e-4, out=path)
    calls = _interrupt_after(monkeypatch, None, None)
    other = Fitted(fitted.module, fitted.trajectory, fitted.X + 1.0)
    K = path_kernel(other, working_memory=1e-4, out=path)
    assert calls[0][0] == 0  # started afresh
    assert np.array_equal(np.asarray(K), path_kernel(other))


def test_the_disk_must_hold_the_kernel(fitted, tmp_path, monkeypatch):
    monkeypatch.setattr(
        _result.shutil,
        "disk_usage",
        lambda folder: namedtuple("Usage", "total used free")(10, 10, 1000),
    )
    with pytest.raises(OSError, match=r"needs 0\.0 GiB on disk.*dtype=np\.float32"):
        path_kernel(fitted, out=tmp_path / "K.npy")


@pytest.mark.parametrize(
    "out, dtype, error, message",
    [
        (np.zeros((3, 3)), np.float64, ValueError, r"out must have shape \(30, 30\)"),
        (np.zeros((30, 30), np.float32), np.float64, ValueError, "and dtype float64"),
        ([[0.0]], np.float64, TypeError, "out must be None, a path"),
        (None, np.int64, ValueError, "dtype must be float32 or float64"),
        ("/no/such/folder/K.npy", np.float64, ValueError, "folder /no/such/folder"),
    ],
)
def test_bad_out_is_refused(fitted, out, dtype, error, message):
    with pytest.raises(error, match=message):
        path_kernel(fitted, out=out, dtype=dtype)


# -- one writer per file, and resuming only what can be proven ----------------


def _interrupted(fitted, path, monkeypatch, n_strips=3):
    """A file left by a call interrupted after ``n_strips`` strips of 4 rows."""
    _interrupt_after(monkeypatch, n_strips, len(fitted.trajectory.kernel_nodes()))
    with pytest.raises(KeyboardInterrupt):
        path_kernel(fitted, working_memory=1e-4, out=path)
    return _interrupt_after(monkeypatch, None, None)


def test_a_short_file_under_a_valid_sidecar_is_computed_afresh(
    fitted, small_grid, tmp_path, monkeypatch
):
    expected = path_kernel(fitted, working_memory=1e-4)
    path = tmp_path / "K.npy"
    calls = _interrupted(fitted, path, monkeypatch)
    os.truncate(path, os.path.getsize(path) // 2)  # NumPy would pad it with zeros
    with pytest.warns(UserWarning, match=r"K\.npy does not match its progress file "):
        K = path_kernel(fitted, working_memory=1e-4, out=path)
    assert calls[0][0] == 0  # started afresh
    assert np.array_equal(np.asarray(K), expected)


def test_a_strip_whose_bytes_changed_is_computed_again(
    fitted, small_grid, tmp_path, monkeypatch
):
    expected = path_kernel(fitted, working_memory=1e-4)
    path = tmp_path / "K.npy"
    calls = _interrupted(fitted, path, monkeypatch)
    K = np.load(path, mmap_mode="r+")
    K[5, 10] += 1.0  # rows 4:8, above the diagonal: in the strip's checksum
    K[1, 0] += 1.0  # below the diagonal: the mirror overwrites it anyway
    K.flush()
    del K
    with pytest.warns(UserWarning, match=r"rows 4:8 of .*K\.npy do not match their"):
        K = path_kernel(fitted, working_memory=1e-4, out=path)
    assert {r0 for r0, _ in calls} == {4, 12, 16, 20, 24, 28}  # not 0:4 nor 8:12
    assert np.array_equal(np.asarray(K), expected)


@pytest.mark.parametrize(
    "sidecar",
    [
        "[1, 2]",
        "5",
        '{"format": "%(format)s", "done": "x"}',
        '{"format": "%(format)s", "fingerprint": 7, "done": []}',
        '{"format": "%(format)s", "fingerprint": "f", "done": [[0, 999, 1]]}',
        '{"format": "%(format)s", "fingerprint": "f", "done": [[0, 4, true]]}',
        '{"format": "sklearn_pathkernel kernel progress", "done": [[0, 4]]}',
        '{"format": ',
    ],
)
def test_a_damaged_sidecar_means_computing_afresh(
    fitted, small_grid, tmp_path, monkeypatch, sidecar
):
    path = tmp_path / "K.npy"
    calls = _interrupted(fitted, path, monkeypatch)
    with open(f"{path}.progress.json", "w") as file:
        file.write(sidecar % {"format": _result._FORMAT})
    with pytest.warns(UserWarning, match=r"progress file .*K\.npy\.progress\.json is"):
        K = path_kernel(fitted, working_memory=1e-4, out=path)
    assert calls[0][0] == 0
    assert np.array_equal(np.asarray(K), path_kernel(fitted))


def _lock_is_free(path):
    lock = filelock.FileLock(f"{path}.lock", timeout=0)
    with lock:
        pass
    return not os.path.exists(f"{path}.lock.holder")


def test_the_lock_is_released_however_the_call_ends(
    fitted, small_grid, tmp_path, monkeypatch
):
    path = tmp_path / "K.npy"
    monkeypatch.setattr(_result, "LOCK_TIMEOUT", 0)  # the next call: at once
    path_kernel(fitted, out=path)
    assert _lock_is_free(path)

    def broken(*args):
        raise RuntimeError("a strip fails")

    monkeypatch.setattr(_path, "_strip_part", broken)
    with pytest.raises(RuntimeError, match="a strip fails"):
        path_kernel(fitted, Y=fitted.X[:5], out=path)
    assert _lock_is_free(path)
    monkeypatch.setattr(_path, "_strip_part", _REAL_PART)
    K = path_kernel(fitted, Y=fitted.X[:5], out=path)
    assert np.array_equal(np.asarray(K), path_kernel(fitted, Y=fitted.X[:5]))


def test_a_file_in_use_is_refused_after_the_timeout(fitted, tmp_path, monkeypatch):
    path = tmp_path / "K.npy"
    monkeypatch.setattr(_result, "LOCK_TIMEOUT", 0.2)
    with _result.open_result(
        path, (2, 2), dtype=np.float64, fingerprint=lambda: "", what="", remedy=""
    ):
        message = (
            rf"out: .*K\.npy is being written by another call \(pid {os.getpid()} "
            rf"on {socket.gethostname()}, which holds .*K\.npy\.lock\); gave up "
            r"after waiting 0\.2 s"
        )
        with pytest.raises(TimeoutError, match=message):
            path_kernel(fitted, out=path)
    assert _lock_is_free(path)
    assert not os.path.exists("/no/such")  # a missing folder is not created


# -- real processes: SIGKILL, and two calls on one file -----------------------

_SCRIPT = """
import json, os, sys, time, warnings
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn_pathkernel import PathKernelRegressor, path_kernel
from sklearn_pathkernel._compute import _blocking, _result
from sklearn_pathkernel._kernels import _path

out, folder, n_processes = sys.argv[1], sys.argv[2], int(sys.argv[3])
timeout, pause, *shifts = map(float, sys.argv[4:])
_blocking.TILE_ROWS, _blocking.CHUNK_COLUMNS = 4, 8
_result.LOCK_TIMEOUT = timeout
X0 = np.random.RandomState(0).randn(30, 4)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    est = PathKernelRegressor((8,), max_iter=6, dtype="float64", random_state=0)
    est.fit(X0, np.sin(X0[:, 0]))
real = _path._strip_part
for turn, shift in enumerate(shifts):
    X, times = X0 + shift, []
    expected = path_kernel(est.module_, est.trajectory_, X, working_memory=1e-4)

    def slow(*args):
        times.append(time.time())
        time.sleep(pause)  # long enough for the others to find the file locked
        return real(*args)

    _path._strip_part = slow
    barrier = os.path.join(folder, str(turn))
    os.makedirs(barrier, exist_ok=True)
    open(os.path.join(barrier, str(os.getpid())), "w").close()
    while len(os.listdir(barrier)) < n_processes:
        time.sleep(0.005)
    K = path_kernel(est.module_, est.trajectory_, X, working_memory=1e-4, out=out)
    equal = bool(np.array_equal(np.asarray(K), expected))
    _path._strip_part = real
    print(json.dumps({"equal": equal, "times": times}), flush=True)
"""


# What a writing process imports, once for the module: each test's process
# is forked from a server that has imported it, instead of starting an
# interpreter that imports torch and scikit-learn for seconds of CPU.
_PRELOAD = [
    "_cluster",
    "sklearn.exceptions",
    "sklearn_pathkernel._estimators",
    "sklearn_pathkernel._kernels._path",
    "sklearn_pathkernel._compute._result",
]


@pytest.fixture(scope="module")
def server():
    with forkserver(_PRELOAD) as context:
        yield context


def _start(server, tmp_path, shifts, *, others=1, pause=0.02):
    """A process that writes ``K(X + shift)`` to ``tmp_path / "K.npy"`` for
    each shift in turn.

    It starts each kernel when ``others`` more processes are ready for that
    turn too, and reports whether it got the bits of the kernel computed in
    memory, and when its strips ran.
    """
    script = str(tmp_path / "write_kernel.py")
    arguments = [tmp_path / "K.npy", tmp_path / "ready", 1 + others, 60, pause]
    argv = [script, *map(str, arguments + list(shifts))]
    output = (str(tmp_path / "stdout.txt"), str(tmp_path / "stderr.txt"))
    process = server.Process(target=run_script, args=(_SCRIPT, argv, *output))
    process.output = output
    process.start()
    return process


def _reports(process, returncode=0):
    """What the process printed, once it is over."""
    try:
        process.join(timeout=120)
    finally:
        process.kill()
        process.join()
    out, err = (open(name).read() for name in process.output)
    assert process.exitcode == returncode, err
    return [json.loads(line) for line in out.splitlines()]


def _write_here(fitted, path, monkeypatch, turn, pause=0.02):
    """This process's turn at writing ``path``, started with the other one."""
    expected, times = path_kernel(fitted), []

    def slow(*args):
        times.append(time.time())
        time.sleep(pause)
        return _REAL_PART(*args)

    monkeypatch.setattr(_path, "_strip_part", slow)
    barrier = path.parent / "ready" / str(turn)
    barrier.mkdir(parents=True, exist_ok=True)
    (barrier / str(os.getpid())).touch()
    deadline = time.time() + 120
    while len(os.listdir(barrier)) < 2 and time.time() < deadline:
        time.sleep(0.005)
    K = path_kernel(fitted, working_memory=1e-4, out=path)
    monkeypatch.setattr(_path, "_strip_part", _REAL_PART)
    return {"equal": np.array_equal(np.asarray(K), expected), "times": times}


@pytest.mark.slow  # another process: ~5 s, more under load
def test_two_processes_writing_one_file_take_turns(
    fitted, small_grid, server, tmp_path, monkeypatch
):
    # First another process writes other rows, then the same call as here:
    # each waits for the other's lock; none crashes or gets a wrong kernel.
    process = _start(server, tmp_path, [1.0, 0.0])
    try:
        here = [_write_here(fitted, tmp_path / "K.npy", monkeypatch, t) for t in (0, 1)]
    finally:
        there = _reports(process)
    for mine, theirs in zip(here, there):
        assert mine["equal"] and theirs["equal"]
        # One writer at a time: their strips never overlap in time.
        (_, end), (start, _) = sorted(
            (times[0], times[-1]) for times in (mine["times"], theirs["times"])
        )
        assert end < start


def test_a_killed_process_is_refused_then_resumed_bit_for_bit(
    fitted, small_grid, server, tmp_path, monkeypatch
):
    expected = path_kernel(fitted, working_memory=1e-4)
    process = _start(server, tmp_path, [0.0], others=0, pause=0.1)  # ~1.7 s of strips
    sidecar = tmp_path / "K.npy.progress.json"
    done = []
    # A deadline, not a count of polls: a loaded machine may take a minute
    # to start the other interpreter.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError):
            done = json.loads(sidecar.read_text())["done"]
        if len(done) >= 2 or process.exitcode is not None:
            break
        time.sleep(0.01)
    # While it writes, another process's call waits, then gives up.
    monkeypatch.setattr(_result, "LOCK_TIMEOUT", 0.1)
    holder = rf"\(pid {process.pid} on {socket.gethostname()}, which holds"
    with pytest.raises(TimeoutError, match=holder):
        path_kernel(fitted, working_memory=1e-4, out=tmp_path / "K.npy")
    process.kill()  # SIGKILL
    _reports(process, returncode=-signal.SIGKILL)
    assert len(done) >= 2

    calls = _interrupt_after(monkeypatch, None, None)
    monkeypatch.setattr(_result, "LOCK_TIMEOUT", 0)  # the dead process's lock is free
    K = path_kernel(fitted, working_memory=1e-4, out=tmp_path / "K.npy")
    assert np.array_equal(np.asarray(K), expected)
    assert 0 < len(calls) and not {r0 for r0, _, _ in done} & {r0 for r0, _ in calls}
