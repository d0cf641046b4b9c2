"""Kernels written to disk strip by strip, and resumed after an interruption."""

import os
import warnings
from collections import namedtuple

import numpy as np
import pytest
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
