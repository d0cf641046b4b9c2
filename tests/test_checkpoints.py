"""Tests for CheckpointStore: in memory, on disk, and moving between them."""

import gc
import os

import numpy as np
import pytest
import torch

from sklearn_pathkernel._training import _checkpoints
from sklearn_pathkernel._training._checkpoints import CheckpointStore


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
