"""Results too large for memory are refused before they are allocated."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from sklearn_pathkernel import PathKernelRegressor
from sklearn_pathkernel._compute import _memory
from sklearn_pathkernel._explain import _decompose
from sklearn_pathkernel._kernels import _path


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.RandomState(0)
    X = rng.randn(20, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = PathKernelRegressor((4,), max_iter=3, random_state=0).fit(X, X[:, 0])
    return est, X


@pytest.fixture
def little_memory(monkeypatch):
    """Pretend 1 KiB is available: a 20 x 20 float64 kernel needs 3.1 KiB."""
    monkeypatch.setattr(_memory, "available_memory", lambda: 1024)


def test_available_memory_is_what_the_operating_system_reports():
    import psutil

    available = _memory.available_memory()
    # Read twice around ours: allocations elsewhere move it a little.
    assert 0 < available <= 2 * psutil.virtual_memory().available


def test_small_results_pass():
    _memory.check_result_fits((3, 4), what="x", remedy="y")


def test_kernel_too_large_fails_before_allocating(fitted, little_memory, monkeypatch):
    est, X = fitted

    real_zeros = np.zeros

    def no_allocation(shape, *args, **kwargs):
        # np.zeros is numpy's own: only the kernel's (20, 20) must not happen.
        if tuple(np.atleast_1d(shape)) == (20, 20):
            raise AssertionError("allocated before checking")
        return real_zeros(shape, *args, **kwargs)

    monkeypatch.setattr(_path.np, "zeros", no_allocation)
    message = (
        r"The path kernel of shape \(20, 20\) needs 0\.0 GiB, more than the "
        r"0\.0 GiB of memory available\. Write it to disk.*row blocks.*"
        r"PathKernelFeatures\(n_components=\.\.\.\)"
    )
    with pytest.raises(MemoryError, match=message):
        est.kernel(X)


def test_full_output_kernel_suggests_tracing(fitted, little_memory):
    est, X = fitted
    with pytest.raises(MemoryError, match=r"\(20, 12, 1, 1\).*trace=True"):
        _path.path_kernel(est.module_, est.trajectory_, X, X[:12], trace=False)


def test_decomposition_too_large_fails_before_the_work(
    fitted, little_memory, monkeypatch
):
    est, X = fitted
    monkeypatch.setattr(_decompose, "kernel_sum", None)  # never reached
    with pytest.raises(
        MemoryError,
        match=r"contributions of shape \(15, 20, 1\).*decompose\(X\[i:j\]\)",
    ):
        est.decompose(X[:15])


def test_the_message_gives_the_size(monkeypatch):
    monkeypatch.setattr(_memory, "available_memory", lambda: 2 * 2**30)
    with pytest.raises(MemoryError, match=r"needs 7\.5 GiB, more than the 2\.0 GiB"):
        _memory.check_result_fits((10**6, 10**3), what="K", remedy="")
