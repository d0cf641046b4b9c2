"""Tests for CheckpointStore: in memory, on disk, and moving between them."""

import gc
import os

import numpy as np
import pytest
import torch

from sklearn_pathkernel._training import _checkpoints
from sklearn_pathkernel._training._checkpoints import (
    CheckpointStore,
    GrowableArray,
    RecordStore,
)


def _rows(n, d=7):
    return [torch.arange(d, dtype=torch.float32) * (k + 1) + k for k in range(n)]


@pytest.mark.parametrize("on_disk", [False, True])
def test_store_gives_back_what_it_was_given(tmp_path, on_disk):
    store = CheckpointStore(tmp_path if on_disk else None)
    rows = _rows(40)  # past the first capacity of 16: the file grows
    for row in rows:
        store.append(row)
    assert store.on_disk is on_disk and len(store) == 40
    for k, row in enumerate(rows):
        assert torch.equal(store[k], row)
    assert torch.equal(store[-1], rows[-1])
    assert torch.equal(store.matrix(), torch.stack(rows))
    store.truncate(5)
    assert len(store) == 5 and torch.equal(store.matrix(), torch.stack(rows[:5]))
    with pytest.raises(IndexError):
        store[5]


def test_disk_store_is_a_memmap_removed_with_the_store(tmp_path):
    store = CheckpointStore(tmp_path)
    store.append(_rows(1)[0])
    path = store.path
    assert os.path.dirname(path) == str(tmp_path)
    assert isinstance(store._file._data, np.memmap) and not store._rows
    del store
    gc.collect()
    assert not os.path.exists(path)


def test_memory_store_spills_to_disk_past_the_limit(monkeypatch):
    monkeypatch.setattr(_checkpoints, "SPILL_BYTES", 3 * 7 * 4)
    store = CheckpointStore()
    rows = _rows(5)
    for row in rows[:3]:
        store.append(row)
    assert not store.on_disk
    store.append(rows[3])
    store.append(rows[4])
    assert store.on_disk and store.directory is None
    assert torch.equal(store.matrix(), torch.stack(rows))


# -- per-step records -----------------------------------------------------------
def _steps(n, n_outputs=2, dtype=torch.float32):
    """Steps of varying batch lengths, with -0.0 and a NaN to test the bits."""
    steps = []
    for t in range(n):
        b = 1 + t % 4
        g = torch.arange(b * n_outputs, dtype=dtype).view(b, n_outputs) / (t + 3)
        g[0, 0] = -0.0 if t % 2 else float("nan")
        steps.append(
            (0.1 * (t + 1), torch.arange(t, t + b), torch.rand(b, dtype=dtype), g)
        )
    return steps


def _assert_identical(got, want):
    assert got[0] == want[0]
    for a, b in zip(got[1:], want[1:]):
        _assert_same_bits(a, b)


def _assert_same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("on_disk", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_record_store_gives_back_every_step_bit_for_bit(tmp_path, on_disk, dtype):
    store = RecordStore(tmp_path if on_disk else None)
    steps = _steps(30, dtype=dtype)  # 75 rows, past the first capacity
    for step in steps:
        store.append(step)
    assert store.on_disk is on_disk and len(store) == 30
    for t, step in enumerate(steps):
        _assert_identical(store[t], step)
    _assert_identical(store[-1], steps[-1])
    np.testing.assert_array_equal(store.step_sizes(), [s[0] for s in steps])
    store.truncate(7)
    assert len(store) == 7 and len(store._rows) == sum(len(s[1]) for s in steps[:7])
    store.append(steps[29])
    _assert_identical(store[7], steps[29])
    with pytest.raises(IndexError):
        store[8]


def test_record_store_packs_and_extends_in_the_pickled_form(tmp_path):
    steps = _steps(9)
    store = RecordStore()
    for step in steps:
        store.append(step)
    sizes, lengths, *fields = store.packed()
    assert sizes == [s[0] for s in steps] and lengths == [len(s[1]) for s in steps]
    for k, field in enumerate(fields, start=1):
        _assert_same_bits(field, torch.cat([s[k] for s in steps]))
    again = RecordStore(tmp_path)
    again.extend(*store.packed())
    assert again.on_disk
    for t, step in enumerate(steps):
        _assert_identical(again[t], step)
    assert RecordStore().packed() == ([], [], None, None, None)


def test_record_store_refuses_a_step_of_another_shape():
    store = RecordStore()
    store.append(_steps(1, n_outputs=2)[0])
    with pytest.raises(ValueError, match="records"):
        store.append(_steps(1, n_outputs=3)[0])


def test_record_store_spills_past_the_limit_and_its_file_goes_with_it(monkeypatch):
    steps = _steps(8)
    row_bytes = 8 + 4 + 2 * 4  # index, weight, two derivatives
    monkeypatch.setattr(_checkpoints, "SPILL_BYTES", 6 * row_bytes)
    store = RecordStore()
    for step in steps[:3]:  # 1 + 2 + 3 = 6 rows: still in memory
        store.append(step)
    assert not store.on_disk
    for step in steps[3:]:
        store.append(step)
    assert store.on_disk and store.directory is None
    assert isinstance(store._rows._data, np.memmap)
    assert os.path.basename(store.path).startswith("records-")
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    for t, step in enumerate(steps):
        _assert_identical(store[t], step)
    path = store.path
    del store
    gc.collect()
    assert not os.path.exists(path)


def test_to_disk_before_the_first_step_takes_effect_at_it(tmp_path):
    store = RecordStore()
    store.to_disk()
    assert not store.on_disk
    store.append(_steps(1)[0])
    assert store.on_disk


def test_growable_array_in_memory_and_on_disk(tmp_path):
    memory = GrowableArray(np.float32, (3,))
    memory.extend(np.arange(60, dtype=np.float32).reshape(20, 3))
    memory.extend(np.ones((100, 3), np.float32))  # more than twice at once
    disk = memory.to_file("x-", tmp_path)
    assert isinstance(disk._data, np.memmap) and len(disk) == 120
    np.testing.assert_array_equal(disk.view(), memory.view())
    disk.truncate(20)
    np.testing.assert_array_equal(disk.view(), np.arange(60).reshape(20, 3))


@pytest.mark.parametrize("store", [CheckpointStore, RecordStore])
def test_a_directory_that_is_a_file_is_refused_by_name(tmp_path, store):
    a_file = tmp_path / "taken"
    a_file.write_text("")
    for path in [a_file, a_file / "below"]:
        with pytest.raises(ValueError, match=r"trajectory_dir='.*taken.*' is a file"):
            store(path)
    store(tmp_path / "new" / "dir")
    assert (tmp_path / "new" / "dir").is_dir()


def test_record_store_packs_pending_steps_in_groups_and_reads_them_all(monkeypatch):
    # Steps wait as tensors, PENDING_STEPS at a time; reads, lengths and the
    # packed form see every step, pending or packed, bit for bit.
    monkeypatch.setattr(_checkpoints, "PENDING_STEPS", 4)
    steps = _steps(10)
    store = RecordStore()
    for t, step in enumerate(steps):
        store.append(step)
        assert len(store) == t + 1
        assert len(store._steps) == (t + 1) // 4 * 4  # packed in fours
    for t in range(10):
        _assert_identical(store[t], steps[t])
    sizes, lengths, *_ = store.packed()
    assert sizes == [step[0] for step in steps]
    assert lengths == [len(step[1]) for step in steps]


@pytest.mark.parametrize("on_disk", [False, True])
def test_shift_batches_moves_the_later_steps_rows_only(tmp_path, on_disk):
    """A continued path's steps index rows after the ones already there."""
    store = RecordStore(tmp_path if on_disk else None)
    steps = _steps(9)
    for step in steps[:5]:
        store.append(step)
    store.flush()
    for step in steps[5:]:  # some still pending: the shift packs them first
        store.append(step)
    store.shift_batches(5, 100)
    for t, step in enumerate(steps):
        want = step[1] + (100 if t >= 5 else 0)
        assert torch.equal(store[t][1], want), t
        _assert_same_bits(store[t][3], step[3])  # the rest untouched
    store.shift_batches(9, 7)  # no step from there: nothing to do
    assert torch.equal(store[8][1], steps[8][1] + 100)
