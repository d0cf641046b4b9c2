"""Strips reaching the result: at once on the CPU, through a copier on CUDA.

The CUDA copier's ordering is tested here on the CPU with a fake copier
whose copies complete only when the test says so (or when waited for); the
real copier runs in tests/test_cuda.py.
"""

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from sklearn_pathkernel import PathKernelRegressor, path_kernel
from sklearn_pathkernel._compute import _blocking
from sklearn_pathkernel._compute._result import open_result
from sklearn_pathkernel._compute._transfer import IN_FLIGHT, StripWriter
from sklearn_pathkernel._kernels import _path


class FakeCopy:
    """A copy that lands its bytes only when finished (by the test or a wait)."""

    def __init__(self, strip, target):
        self.strip, self.target, self.landed = strip.clone(), target, False

    def done(self):
        return self.landed

    def wait(self):
        self.finish()

    def finish(self):
        if not self.landed:
            self.target.copy_(self.strip)
            self.landed = True


class FakeCopier:
    """Hands out NaN-filled buffers (a write before the copy shows) and FakeCopys."""

    def __init__(self):
        self.allocations, self.copies = [], []

    def allocate(self, numel):
        self.allocations.append(numel)
        return torch.full((numel,), float("nan"), dtype=torch.float64)

    def start(self, strip, target):
        self.copies.append(FakeCopy(strip, target))
        return self.copies[-1]


def _result(shape=(6, 5), dtype=np.float64, out=None):
    return open_result(
        out, shape, dtype=dtype, fingerprint=lambda: "t", what="K", remedy=""
    )


def _strips(rows=2, n=6, m=5, symmetric=True, seed=0):
    """``(strip, r0, r1, c_start)`` for each strip of an n x m kernel."""
    generator = torch.Generator().manual_seed(seed)
    strips = []
    for r0 in range(0, n, rows):
        c_start = r0 if symmetric else 0
        strip = torch.randn(rows, m - c_start, dtype=torch.float64, generator=generator)
        strips.append((strip, r0, r0 + rows, c_start))
    return strips


def _reference(result, strips):
    """Today's write, plainly: the strip on the host, then marked done."""
    for strip, r0, r1, c_start in strips:
        result.array[r0:r1, c_start:] = strip.cpu().numpy()
        result.mark_done(r0, r1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("on_disk", [False, True])
def test_the_cpu_writes_the_bits_of_a_plain_write(tmp_path, dtype, on_disk):
    strips = _strips(symmetric=not on_disk)
    mine, plain = (
        _result(dtype=dtype, out=tmp_path / f"{name}.npy" if on_disk else None)
        for name in ("mine", "plain")
    )
    with mine, plain:
        with StripWriter(mine, torch.device("cpu")) as writer:
            for strip in strips:
                writer.put(*strip)
        _reference(plain, strips)
        assert np.array_equal(np.asarray(mine.array), np.asarray(plain.array))
        assert mine._done == plain._done  # the same rows and checksums


def test_the_cpu_writes_each_strip_at_once_without_a_copy():
    class Recorded:
        def __setitem__(self, key, value):
            self.key, self.value = key, value

    result = _result()
    result.array = Recorded()
    strip, r0, r1, c_start = _strips()[1]
    with StripWriter(result, torch.device("cpu")) as writer:
        writer.put(strip, r0, r1, c_start)
        assert result.is_done(r0, r1)  # before the writer is left
    # The strip's own memory goes into the result's assignment: no copy.
    assert np.shares_memory(result.array.value, strip.numpy())
    assert result.array.key == (slice(r0, r1), slice(c_start, None))


def test_a_strip_is_written_and_marked_only_once_its_copy_completed():
    copier, result = FakeCopier(), _result()
    strips = _strips()
    writer = StripWriter(result, torch.device("cpu"), copier=copier)
    writer.put(*strips[0])
    assert not result.is_done(0, 2) and not result.array.any()
    writer.put(*strips[1])  # waits for the first strip's copy, writes it
    assert copier.copies[0].landed and not copier.copies[1].landed
    assert result.is_done(0, 2) and not result.is_done(2, 4)
    assert np.array_equal(result.array[0:2, 0:], strips[0][0].numpy())
    assert not result.array[2:].any()
    writer.drain()
    assert result.is_done(2, 4) and not writer._pending


def test_strips_land_in_the_order_handed_in_with_the_right_bits():
    copier, result, plain = FakeCopier(), _result(), _result()
    strips = _strips()
    with StripWriter(result, torch.device("cpu"), copier=copier) as writer:
        for strip in strips:
            writer.put(*strip)
            # A later copy completing first does not overtake an earlier one.
            copier.copies[-1].finish()
            assert len(writer._pending) == IN_FLIGHT
    assert [r0 for r0, _, _ in result._done] == [0, 2, 4]
    _reference(plain, strips)
    assert np.array_equal(result.array, plain.array)


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("arrived", [False, True])
def test_an_exception_marks_only_strips_whose_bytes_arrived(exception, arrived):
    copier, result = FakeCopier(), _result()
    strips = _strips()
    with pytest.raises(exception):
        with StripWriter(result, torch.device("cpu"), copier=copier) as writer:
            for strip in strips:
                writer.put(*strip)  # the first two written, the last in flight
            if arrived:
                copier.copies[-1].finish()
            raise exception
    assert [r0 for r0, _, _ in result._done] == ([0, 2, 4] if arrived else [0, 2])
    plain = _result()
    _reference(plain, strips[: 3 if arrived else 2])
    assert np.array_equal(result.array, plain.array)


def test_an_interrupted_wait_leaves_its_strip_unmarked():
    class Stuck(FakeCopy):
        def wait(self):
            raise KeyboardInterrupt

    copier, result = FakeCopier(), _result()
    copier.start = lambda strip, target: Stuck(strip, target)
    with pytest.raises(KeyboardInterrupt):
        with StripWriter(result, torch.device("cpu"), copier=copier) as writer:
            for strip in _strips():
                writer.put(*strip)
    assert result._done == [] and not result.array.any()


def test_a_device_that_cannot_answer_has_every_strip_in_flight_dropped():
    class Broken(FakeCopy):
        def done(self):
            raise RuntimeError("CUDA error: an illegal memory access")

    copier, result = FakeCopier(), _result()
    copier.start = lambda strip, target: Broken(strip, target)
    writer = StripWriter(result, torch.device("cpu"), copier=copier)
    with pytest.raises(ValueError, match="the original"):
        with writer:
            writer.put(*_strips()[0])
            raise ValueError("the original")
    assert result._done == [] and not writer._pending


def test_buffers_are_reused_and_grown_only_for_a_larger_strip():
    copier, result = FakeCopier(), _result(shape=(12, 5))
    strips = _strips(n=12, symmetric=False)
    with StripWriter(result, torch.device("cpu"), copier=copier) as writer:
        for strip in strips[:4]:  # same size: two buffers, then reuse
            writer.put(*strip)
        assert copier.allocations == [10, 10]
        writer.put(strips[4][0][:1], 8, 9, 0)  # smaller: reused
        writer.put(torch.ones(3, 5, dtype=torch.float64), 9, 12, 0)  # larger
    assert copier.allocations == [10, 10, 15]
    assert np.array_equal(result.array[9:], np.ones((3, 5)))


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.RandomState(0)
    X = rng.randn(20, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = PathKernelRegressor(
            (6,), max_iter=4, dtype="float64", random_state=0
        ).fit(X, np.sin(X[:, 0]))
    return est.module_, est.trajectory_, X


@pytest.mark.parametrize("trace", [True, False])
def test_the_kernel_through_a_copier_has_the_bits_of_the_cpu_write(
    fitted, monkeypatch, tmp_path, trace
):
    # The wiring in _run_strips: the copier's route gives the same kernel,
    # every strip written and marked, file and sidecar included.
    module, trajectory, X = fitted
    monkeypatch.setattr(_blocking, "TILE_ROWS", 4)
    monkeypatch.setattr(_blocking, "CHUNK_COLUMNS", 8)
    options = {"working_memory": 1e-4, "trace": trace}
    plain = path_kernel(module, trajectory, X, **options)
    copiers = []

    def writer(result, device, n_strips):
        copiers.append(FakeCopier())
        return StripWriter(result, device, copier=copiers[-1])

    monkeypatch.setattr(_path, "StripWriter", writer)
    on_disk = path_kernel(module, trajectory, X, out=tmp_path / "K.npy", **options)
    assert np.array_equal(np.asarray(on_disk), plain)
    assert len(copiers[0].copies) == 5  # 20 rows in strips of 4 rows


def test_a_single_strip_is_written_at_once_on_every_device():
    # Nothing to overlap it with: no side stream, no pinned buffers.
    result = _result()
    assert StripWriter(result, torch.device("cuda"), n_strips=1)._copier is None
    assert StripWriter(result, torch.device("cpu"), n_strips=3)._copier is None
    strip, r0, r1, c_start = _strips()[0]
    with StripWriter(result, torch.device("cuda"), n_strips=1) as writer:
        writer.put(strip, r0, r1, c_start)
        assert result.is_done(r0, r1)
