"""The tile grid, row budgets and thread limits."""

import pytest
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


def test_device_grid_is_square_and_large_within_the_device_budget():
    cpu = torch.device("cpu")
    assert _blocking.grid(4 * 1000, cpu) == (512, 512)  # the CPU keeps its grid
    with _blocking.device_policy(2**34):
        assert _blocking.grid(4 * 1000, cpu) == (8192, 8192)
        assert _blocking.grid(4 * 1000) == (512, 512)  # no device: the CPU's
        tile, chunk = _blocking.grid(2**20, cpu, entry_bytes=4)
        assert tile == chunk and tile & (tile - 1) == 0
        quarter = _blocking.device_budget(cpu) // 4
        assert 2 * tile * 2**20 + 12 * tile**2 <= quarter  # states and products
        assert 2 * (2 * tile) * 2**20 + 12 * (2 * tile) ** 2 > quarter
    assert _blocking.device_budget(cpu) is None  # restored


def test_device_budget_is_a_fraction_of_the_free_memory():
    cpu = torch.device("cpu")
    with _blocking.device_policy(2**30):
        assert _blocking.device_budget(cpu) == _blocking.DEVICE_MEMORY_FRACTION * 2**30
        assert _blocking.strip_memory(None, cpu) == 512  # below the 1024 MiB default
        assert _blocking.strip_memory(100, cpu) == 100
    assert _blocking.strip_memory(None, cpu) == 1024
    assert _blocking.device_budget(None) is None


def test_a_cuda_device_reads_its_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2**34, 2**37))
    cuda = torch.device("cuda", 0)
    assert _blocking.device_budget(cuda) == 2**33
    assert _blocking.grid(4 * 1000, cuda) == (8192, 8192)


def test_sub_blocks_share_a_quarter_of_the_device_budget_across_the_stack():
    quarter = 2**30 // 4
    for stack in (1, 3, 16):
        for per_row in (1, 1000, 2**20, 2**31):
            rows = _blocking.sub_block_rows(10_000, per_row, 2**30, stack=stack)
            fits = stack * rows * per_row <= quarter
            assert rows == 10_000 and fits or rows & (rows - 1) == 0
            # The largest power of two that fits: twice as many would not.
            assert fits and stack * 2 * rows * per_row > quarter or rows in (1, 10_000)
    assert _blocking.sub_block_rows(10_000, 2**31, 2**30) == 1  # never none
    assert _blocking.sub_block_rows(8, 1, 2**30, stack=16) == 8  # never more


def test_a_retry_shrinks_the_sub_blocks_as_it_shrinks_the_tile():
    seen = []

    def attempt(tile):
        seen.append((tile, _blocking.sub_block_rows(4096, 2**20, 2**34)))
        if tile > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return tile

    with pytest.warns(RuntimeWarning, match="ran out of CUDA memory"):
        assert _blocking.halve_on_device_oom(attempt, 8, what="The kernel") == 2
    # 4 GiB hold 4,096 rows of 1 MiB; half and a quarter of it on the retries.
    assert seen == [(8, 4096), (4, 2048), (2, 1024)]
    assert _blocking.sub_block_rows(4096, 2**20, 2**34) == 4096  # and after
