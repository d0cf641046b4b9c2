"""The tile grid, row budgets and thread limits."""

import torch

from sklearn_pathkernel._compute import _blocking


def test_working_memory_groups_whole_tiles():
    assert _blocking.rows_within_budget(1, 2**10, 5000, multiple_of=256) == 1024
    assert _blocking.rows_within_budget(1e-6, 2**10, 5000, multiple_of=256) == 256
    assert _blocking.rows_within_budget(1, 2**10, 100, multiple_of=256) == 100
    assert _blocking.rows_within_budget(1, 2**10, 5000, fixed_bytes=2**19) == 512


def test_row_tiles_are_powers_of_two_within_the_budget():
    assert _blocking.tile_within_budget(None, 1000) == _blocking.TILE_ROWS
    assert _blocking.tile_within_budget(1, 2**20 // 100) == 64  # 100 rows fit
    assert _blocking.tile_within_budget(1e-9, 10**9) == 1


def test_grid_shrinks_only_for_large_states():
    assert _blocking.grid(4 * 1000) == (512, 512)
    tile, chunk = _blocking.grid(2 * 10**6)
    assert chunk * 2 * 10**6 <= _blocking.CHUNK_STATE_BYTES
    assert tile <= chunk and chunk & (chunk - 1) == 0


def test_tasks_share_the_threads_torch_was_given():
    total = torch.get_num_threads()
    assert _blocking.threads_per_task(None) is None
    assert _blocking.threads_per_task(1) is None
    assert _blocking.threads_per_task(2) == max(1, total // 2)


def test_limit_threads_restores_the_count_even_on_error():
    total = torch.get_num_threads()
    try:
        with _blocking.limit_threads(1):
            assert torch.get_num_threads() == 1
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert torch.get_num_threads() == total
    with _blocking.limit_threads(None):
        assert torch.get_num_threads() == total
