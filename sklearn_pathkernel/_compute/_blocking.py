"""How work is cut into blocks and how many threads each block may use.

Used by the kernels, the decomposition, the features and the command line.
Two decisions live here:

- **The tile grid.** Work is cut on a fixed grid, so that every kernel entry
  comes out of matrix products of the same shapes whatever
  ``working_memory`` or ``n_jobs`` are: BLAS rounding depends on operand
  shapes (MKL's float64 GEMM gives other bits for the same entry when the
  number of columns changes), and a fixed grid is what makes results
  bit-identical across block sizes. Row tiles hold :data:`TILE_ROWS` rows
  and column chunks :data:`CHUNK_COLUMNS` columns; both shrink, by powers of
  two, only for networks whose per-row state is large: a property of the
  network and engine, never of the budget. Square 512-row tiles keep the
  products large and let a symmetric kernel skip all but
  ``(1 + 512 / n) / 2`` of them (``benchmarks/bench_grid.py``).
  ``working_memory`` only decides how many whole tiles one block holds.
  On a CUDA device the grid is the device's (:func:`grid` with a
  ``device``): square tiles of up to :data:`DEVICE_TILE_ROWS` rows, so that
  a GPU gets a few large products instead of thousands of launches, within
  :data:`DEVICE_MEMORY_FRACTION` of the device's free memory. There the
  bits are the same for every budget given the device and the tile shape.
  Contractions that cut a tile into row sub-blocks (Adam's metric kernel)
  size them there from the same budget (:func:`sub_block_rows`).
- **Threads.** Concurrent blocks split torch's threads between them, so
  that ``n_jobs`` tasks never run ``n_jobs`` times as many threads as there
  are cores.
"""

import warnings
from contextlib import contextmanager

import torch
from joblib import effective_n_jobs
from sklearn import get_config
from threadpoolctl import threadpool_limits

TILE_ROWS = 512
CHUNK_COLUMNS = 512
# Largest engine state of one column chunk; wider networks get narrower chunks.
CHUNK_STATE_BYTES = 128 * 2**20
# On a CUDA device: the largest square tile, and the share of the device's
# free memory (torch.cuda.mem_get_info) that one call's work may take. A
# quarter of that share bounds one tile pair's states and temporaries, so
# that a strip holds several tiles.
DEVICE_TILE_ROWS = 8192
DEVICE_MEMORY_FRACTION = 0.5

# Free bytes that stand in for a CUDA device's (see device_policy), or None.
_forced_free_bytes = None
# By how much halve_on_device_oom has shrunk the tile of the try running now
# (1: a first try). Process-wide, as the tasks run in worker threads:
# sub_block_rows shrinks its share by it.
_retry_shrink = 1


@contextmanager
def device_policy(free_bytes):
    """Cut work on every device as on a CUDA device with ``free_bytes`` free.

    For tests and benchmarks without a GPU: the device grid's shapes and
    operation counts can be measured on the CPU. Process-wide while inside.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._compute._blocking import device_policy, grid
    >>> with device_policy(2**34):
    ...     grid(1000, device=torch.device("cpu"))
    (8192, 8192)
    >>> grid(1000, device=torch.device("cpu"))
    (512, 512)
    """
    global _forced_free_bytes
    before, _forced_free_bytes = _forced_free_bytes, int(free_bytes)
    try:
        yield
    finally:
        _forced_free_bytes = before


def device_budget(device):
    """Bytes a call may take on ``device``; None on the CPU (its grid is fixed).

    :data:`DEVICE_MEMORY_FRACTION` of the free memory that
    ``torch.cuda.mem_get_info`` reports (or that :func:`device_policy` forces).

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._compute._blocking import device_budget
    >>> device_budget(torch.device("cpu")) is None
    True
    """
    if device is None:
        return None
    free = _forced_free_bytes
    if free is None and torch.device(device).type == "cuda":
        free = torch.cuda.mem_get_info(torch.device(device))[0]
    return None if free is None else int(DEVICE_MEMORY_FRACTION * free)


def strip_memory(working_memory, device):
    """The MiB one block may take: ``working_memory``, at most the device's share.

    Parameters
    ----------
    working_memory : float or None
        The budget in MiB; scikit-learn's ``working_memory`` setting when None.
    device : torch.device or None
        Where the block lives; a CUDA device caps it at :func:`device_budget`.

    Returns
    -------
    working_memory : float

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._compute._blocking import device_policy, strip_memory
    >>> strip_memory(64, torch.device("cpu"))
    64
    >>> with device_policy(2**21):  # 2 MiB free: half of it
    ...     strip_memory(64, torch.device("cpu"))
    1.0
    """
    if working_memory is None:
        working_memory = get_config()["working_memory"]
    budget = device_budget(device)
    return working_memory if budget is None else min(working_memory, budget / 2**20)


def grid(state_bytes, device=None, *, entry_bytes=8):
    """``(tile, chunk)``: rows per row tile and columns per column chunk.

    Parameters
    ----------
    state_bytes : int
        Bytes of engine state per row.
    device : torch.device, default=None
        Where the work runs. The CPU's grid (and None's) is fixed; a CUDA
        device gets square tiles of up to :data:`DEVICE_TILE_ROWS` rows
        within a quarter of :func:`device_budget`.
    entry_bytes : int, default=8
        Bytes per entry of one tile pair's product; on a device the grid
        budgets three such temporaries.

    Returns
    -------
    tile, chunk : int
        Powers of two: ``tile <= chunk <= CHUNK_COLUMNS`` on the CPU,
        ``tile == chunk <= DEVICE_TILE_ROWS`` on a device.

    Examples
    --------
    >>> from sklearn_pathkernel._compute._blocking import grid
    >>> grid(1000), grid(2**20)
    ((512, 512), (128, 128))
    """
    budget = device_budget(device)
    if budget is not None:
        tile = DEVICE_TILE_ROWS
        while tile > 1 and (
            2 * tile * state_bytes + 3 * tile * tile * entry_bytes > budget // 4
        ):
            tile //= 2
        return tile, tile
    chunk = CHUNK_COLUMNS
    while chunk > 1 and chunk * state_bytes > CHUNK_STATE_BYTES:
        chunk //= 2
    return min(TILE_ROWS, chunk), chunk


def halve_on_device_oom(attempt, tile, *, what):
    """``attempt(tile)``, again with half the tile after a CUDA out-of-memory error.

    Device memory is shared: what was free when the grid was chosen may
    have been taken since. ``attempt`` must start its work afresh (whatever
    it wrote before the error is either complete, e.g. a kernel strip
    recorded as done, or thrown away); each retry warns, and a one-row tile
    that still runs out re-raises the error. While a retry runs,
    :func:`sub_block_rows` shrinks its share as much as the tile shrank.

    Parameters
    ----------
    attempt : callable
        ``attempt(tile)`` does the work with row tiles of ``tile`` rows.
    tile : int
        The first try's tile.
    what : str
        Names the work in the warning.

    Examples
    --------
    >>> import torch, warnings
    >>> from sklearn_pathkernel._compute._blocking import halve_on_device_oom
    >>> def attempt(tile):
    ...     if tile > 2:
    ...         raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
    ...     return tile
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     halve_on_device_oom(attempt, 8, what="The kernel")
    2
    >>> print(caught[0].message)  # doctest: +ELLIPSIS
    The kernel ran out of CUDA memory with 8-row tiles; retrying with 4-row ...
    """
    global _retry_shrink
    first = tile
    while True:
        before, _retry_shrink = _retry_shrink, _retry_shrink * (first // tile)
        try:
            return attempt(tile)
        except torch.cuda.OutOfMemoryError:
            if tile <= 1:
                raise
            warnings.warn(
                f"{what} ran out of CUDA memory with {tile}-row tiles; retrying "
                f"with {tile // 2}-row tiles (other processes may have taken the "
                "memory it found free). Lower working_memory or free device "
                "memory to avoid the retry.",
                RuntimeWarning,
                stacklevel=3,
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # what the failed try left cached
            tile //= 2
        finally:
            _retry_shrink = before


def rows_within_budget(
    working_memory, bytes_per_row, n_rows, *, fixed_bytes=0, multiple_of=1
):
    """How many rows of ``bytes_per_row`` fit ``working_memory`` MiB.

    Parameters
    ----------
    working_memory : float or None
        The budget in MiB; scikit-learn's ``working_memory`` setting when None.
    bytes_per_row : int
        What one more row costs.
    n_rows : int
        Rows there are; the answer never exceeds it.
    fixed_bytes : int, default=0
        Spent whatever the number of rows.
    multiple_of : int, default=1
        The work's tile: the answer is a multiple of it, and at least one
        tile even when that exceeds the budget.

    Returns
    -------
    rows : int

    Examples
    --------
    >>> from sklearn_pathkernel._compute._blocking import rows_within_budget
    >>> rows_within_budget(1, 1024, 10_000), rows_within_budget(1, 1024, 100)
    (1024, 100)
    >>> rows_within_budget(1, 1024, 10_000, multiple_of=300)
    900
    """
    if working_memory is None:
        working_memory = get_config()["working_memory"]
    rows = int(max(0.0, working_memory * 2**20 - fixed_bytes) // bytes_per_row)
    rows = max(multiple_of, rows // multiple_of * multiple_of)
    return max(1, min(rows, n_rows))


def tile_within_budget(working_memory, bytes_per_row, device=None):
    """Rows per block for row-by-row work: ``TILE_ROWS``, or a power of two fewer.

    The block fixes the shapes of every product, hence the rounding; taking
    it from this short list, not straight from the budget, keeps results
    bit-identical across every budget that holds a full tile. On a CUDA
    device (``device``, as for :func:`grid`) the tile is the device's: up to
    :data:`DEVICE_TILE_ROWS` rows within a quarter of :func:`device_budget`,
    whatever ``working_memory`` says, so that a GPU gets a few large
    products per checkpoint.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._compute._blocking import (
    ...     device_policy, tile_within_budget)
    >>> tile_within_budget(None, 1000), tile_within_budget(1, 2**20 // 100)
    (512, 64)
    >>> with device_policy(2**34):
    ...     tile_within_budget(1, 1000, torch.device("cpu"))
    8192
    """
    budget = device_budget(device)
    if budget is not None:
        tile = DEVICE_TILE_ROWS
        while tile > 1 and tile * bytes_per_row > budget // 4:
            tile //= 2
        return tile
    rows = rows_within_budget(working_memory, bytes_per_row, TILE_ROWS)
    return 1 << (rows.bit_length() - 1)


def sub_block_rows(n_rows, per_row, budget, *, stack=1):
    """Rows per sub-block of a tile pair's temporaries, under the device policy.

    Some contractions (Adam's metric kernel, ``engines/_structured.py``) cut
    a tile's rows into sub-blocks whose temporaries take ``per_row`` bytes a
    row. Under the device policy the sub-block temporaries of a task may
    take a quarter of ``budget`` (the grid's tiles and the checkpoint
    stacks take the two others): the checkpoints of its stack share it, so
    ``stack * rows * per_row`` stays within it whatever the stack; during a
    retry of :func:`halve_on_device_oom` the quarter shrinks as the tile did.

    Parameters
    ----------
    n_rows : int
        Rows of the tile to cut; the answer never exceeds it.
    per_row : int
        Bytes of temporaries per row of a sub-block, for one checkpoint.
    budget : int
        :func:`device_budget`, read once for the call: the rows depend on
        it, the tile's shape and the stack, never on ``working_memory``.
    stack : int, default=1
        Checkpoints contracted at once (``torch.func.vmap``).

    Returns
    -------
    rows : int
        A power of two, or ``n_rows`` when all of them fit; at least 1.

    Examples
    --------
    >>> from sklearn_pathkernel._compute._blocking import sub_block_rows
    >>> sub_block_rows(4096, 2**20, 2**36)  # 16 GiB hold 16,384 rows
    4096
    >>> sub_block_rows(4096, 2**20, 2**36, stack=16)  # 1,024 rows each
    1024
    >>> sub_block_rows(4096, 3 * 2**20, 2**36, stack=16)  # 341: a power of two
    256
    """
    share = budget // 4 // _retry_shrink
    rows = max(1, share // max(1, stack * per_row))
    if rows >= n_rows:
        return max(1, n_rows)
    return 1 << (rows.bit_length() - 1)


def threads_per_task(n_jobs):
    """Threads each of ``n_jobs`` concurrent tasks may use, or None for all.

    torch (OpenMP, MKL) would otherwise give every task all the cores.
    Splitting torch's thread count between the workers keeps the total at
    what torch was set to use (``torch.set_num_threads``).

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._compute._blocking import threads_per_task
    >>> threads_per_task(None) is None and threads_per_task(1) is None
    True
    >>> threads_per_task(2) == max(1, torch.get_num_threads() // 2)
    True
    """
    workers = effective_n_jobs(n_jobs)
    if workers <= 1:
        return None
    return max(1, torch.get_num_threads() // workers)


@contextmanager
def limit_threads(threads):
    """Let torch and the BLAS use ``threads`` threads inside the block.

    Used around parallel kernel blocks and by the command line's
    ``--threads``. Set process-wide (torch keeps one thread count that every
    new worker thread starts from) and restored afterwards; None changes
    nothing. Process-based joblib backends already give each worker its
    share.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._compute._blocking import limit_threads
    >>> before = torch.get_num_threads()
    >>> with limit_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before)
