"""Blocks of work as joblib tasks, one checkpoint at a time.

The kernel, its diagonal, the decomposition and the features all sum, over
the checkpoints of a path, something computed on a block of rows at one
checkpoint's parameters. Each such (block, checkpoint) is one joblib task,
and :func:`block_parts` is the one skeleton they share: it builds the tasks,
runs them (:func:`run_tasks`) and hands each block's results back in
checkpoint order, for the caller to add up.

- **What a task receives.** ``shared``, the same :class:`Shared` object for
  every task of a call (the engine and its module, the rows), and the small
  arguments of its own: a block's row range and one checkpoint's parameters
  (:func:`compact`). Closures over the trajectory never travel. Under
  joblib's dask backend :func:`run_tasks` broadcasts ``shared`` to every
  worker once per call, so that a worker lost mid-call costs only its tasks,
  which dask runs again elsewhere; left to itself, joblib would scatter it
  to one worker (it does so for an argument that ``dask.sizeof`` finds
  larger than 1 kB, which is why :class:`Shared` reports its tensors' bytes
  in ``__sizeof__``).
- **What a task returns.** Its checkpoint's contribution, not yet weighted
  into the total: the caller adds contributions in checkpoint order, with
  the same operations whatever runs the tasks. Serial runs, threads and
  worker processes therefore give the same bits (docs/design.md, section 8).
- **What a task keeps.** Work that several tasks repeat (the static Gram
  of a block's pairs, at every checkpoint; a checkpoint's random factors,
  in every block) is kept by :meth:`Shared.cached`, one value per thread:
  tasks that need the same value and follow each other on a thread, or on
  a dask worker, which keeps the one scattered object, compute it once.
"""

import sys
import threading
from collections import deque
from contextlib import nullcontext
from itertools import islice

import torch
from joblib import Parallel, delayed, parallel_config
from joblib.parallel import get_active_backend

from ._blocking import limit_threads, threads_per_task


class Shared:
    """What every task of one call shares; travels to a worker once.

    Subclasses are dataclasses of the call's engine, rows and options.
    Nothing here may refer to the trajectory: a task gets its checkpoint as
    an argument.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._compute._tasks import Shared
    >>> shared = Shared()
    >>> shared.rows = torch.zeros(1000)
    >>> shared.__sizeof__() >= 4000  # dask scatters it (more than 1 kB)
    True
    >>> shared.cached("key", lambda: 1), shared.cached("key", lambda: 2)
    (1, 1)
    """

    def cached(self, key, compute):
        """``compute()``, kept for the next call with the same ``key``.

        One value per thread (the last key's), freed with this object: a
        block's statics live while that block's checkpoints run.
        """
        local = self.__dict__.get("_local")
        if local is None:
            local = self.__dict__.setdefault("_local", threading.local())
        entry = getattr(local, "entry", None)
        if entry is None or entry[0] != key:
            local.entry = None  # free the last value before computing the next
            entry = (key, compute())
            local.entry = entry
        return entry[1]

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_local", None)  # a cache is per process
        return state

    def __sizeof__(self):
        return object.__sizeof__(self) + sum(
            _nbytes(value) for value in self.__dict__.values()
        )


def _nbytes(value):
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, torch.nn.Module):
        return sum(t.nbytes for t in value.state_dict().values())
    module = getattr(value, "module", None)  # an engine
    if isinstance(module, torch.nn.Module):
        return _nbytes(module)
    return sys.getsizeof(value)


def compact(tensors):
    """The tensors, each holding only its own numbers.

    A view pickles its whole storage: a checkpoint's tensors are views of a
    flat vector, and after unpickling a trajectory every checkpoint is a
    view of one matrix holding them all. Copies of views travel alone.

    Parameters
    ----------
    tensors : dict of str to torch.Tensor, or None

    Returns
    -------
    tensors : dict of str to torch.Tensor, or None

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._compute._tasks import compact
    >>> whole = torch.zeros(1000)
    >>> part = compact({"w": whole[:10]})["w"]
    >>> part.untyped_storage().nbytes()
    40
    """
    if tensors is None:
        return None
    return {
        name: t if t.untyped_storage().nbytes() == t.nbytes else t.clone()
        for name, t in tensors.items()
    }


def to_device(tensors, device):
    """A task's name -> tensor mapping (or None) moved to ``device``."""
    if tensors is None:
        return None
    return {n: p.to(device) for n, p in tensors.items()}


def run_tasks(function, shared, tasks, *, n_jobs):
    """``function(shared, *task)`` for every task, yielded in order.

    Tasks run through ``joblib.Parallel(n_jobs, prefer="threads")``, so a
    ``joblib.parallel_config`` (dask, loky) chooses where; ``tasks`` is
    consumed lazily, a few ahead of the results. Concurrent tasks share
    torch's threads (``limit_threads``), and so does the caller while it
    adds their results up.

    Parameters
    ----------
    function : callable
        A module-level function, so that it pickles by name.
    shared : Shared
    tasks : iterable of tuple
        Each task's own, small arguments.
    n_jobs : int or None

    Yields
    ------
    result
        ``function(shared, *task)``, in the order of ``tasks``.

    Examples
    --------
    >>> from sklearn_pathkernel._compute._tasks import Shared, run_tasks
    >>> def add(shared, a, b):
    ...     return a + b
    >>> list(run_tasks(add, Shared(), [(1, 2), (3, 4)], n_jobs=2))
    [3, 7]
    """
    with limit_threads(threads_per_task(n_jobs)), _on_every_worker(shared):
        yield from Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator")(
            delayed(function)(shared, *task) for task in tasks
        )


def _on_every_worker(shared):
    """Under joblib's dask backend, ``shared`` sent to every worker up front.

    Left to itself the backend scatters a large argument to one worker;
    data a worker was sent has no recipe to compute it again, so losing
    that worker would fail the call instead of retrying its tasks
    elsewhere. Broadcast, every worker holds a copy, and dask reruns a lost
    worker's tasks on another. Other backends: nothing to do.
    """
    backend, _ = get_active_backend()
    client = getattr(backend, "client", None)
    if client is None or not hasattr(backend, "data_futures"):
        return nullcontext()
    return parallel_config(
        backend="dask",
        client=client,
        scatter=[shared],
        wait_for_workers_timeout=backend.wait_for_workers_timeout,
        **getattr(backend, "submit_kwargs", {}),
    )


def block_parts(
    function, shared, blocks, checkpoints, *, n_jobs, checkpoints_outside=False
):
    """Each block's results over the checkpoints, one task per pair.

    The task of block ``b`` and checkpoint ``c`` is
    ``function(shared, *b, *c())``, run through :func:`run_tasks`; the
    caller adds up what comes back, block by block in checkpoint order, so
    that the same operations run in the same order whatever runs the tasks.

    Parameters
    ----------
    function : callable
        A module-level function, so that it pickles by name.
    shared : Shared
        What every task shares (the engine, the rows).
    blocks : sequence of tuple
        Each block's own arguments, e.g. its row range ``(r0, r1)``.
    checkpoints : sequence of callable
        ``c()`` returns one checkpoint's arguments, a tuple (``()`` for a
        task that walks the whole path). It is called once per task, as the
        task is dispatched, so that only the checkpoints of the tasks in
        flight are loaded.
    n_jobs : int or None
        As for :func:`run_tasks`.
    checkpoints_outside : bool, default=False
        The order of the tasks. False: a block's checkpoints follow each
        other, and a block's results come as one run of
        ``len(checkpoints)``. True: a checkpoint's blocks follow each other
        (what a checkpoint's tasks share, e.g. random factors, is kept
        between them; ``Shared.cached``), and each result comes as a run of
        its own; a block's runs still come in checkpoint order.

    Yields
    ------
    block : tuple
        An element of ``blocks``.
    parts : iterator
        The results of the run, in checkpoint order. What the caller leaves
        of it is skipped before the next run.

    Examples
    --------
    >>> from sklearn_pathkernel._compute._tasks import Shared, block_parts
    >>> def scaled(shared, r0, r1, weight):
    ...     return [weight * row for row in range(r0, r1)]
    >>> blocks, checkpoints = [(0, 2), (2, 3)], [lambda: (1,), lambda: (10,)]
    >>> for block, parts in block_parts(scaled, Shared(), blocks, checkpoints,
    ...                                 n_jobs=2):
    ...     print(block, list(parts))
    (0, 2) [[0, 1], [0, 10]]
    (2, 3) [[2], [20]]
    >>> for block, parts in block_parts(scaled, Shared(), blocks, checkpoints,
    ...                                 n_jobs=None, checkpoints_outside=True):
    ...     print(block, list(parts))
    (0, 2) [[0, 1]]
    (2, 3) [[2]]
    (0, 2) [[0, 10]]
    (2, 3) [[20]]
    """
    if checkpoints_outside:
        pairs = [(b, c) for c in checkpoints for b in blocks]
        runs = [(b, 1) for b, _ in pairs]
    else:
        pairs = [(b, c) for b in blocks for c in checkpoints]
        runs = [(b, len(checkpoints)) for b in blocks]
    tasks = (b + c() for b, c in pairs)
    results = run_tasks(function, shared, tasks, n_jobs=n_jobs)
    for block, length in runs:
        parts = islice(results, length)
        yield block, parts
        deque(parts, maxlen=0)  # what the caller left of this run


def row_blocks(n_rows, tile, tiles_per_block=8):
    """``(r0, r1)`` of each task's rows in row-by-row work: whole tiles.

    Results depend on the tile only; blocks of several tiles keep the tasks
    few enough that dispatching them costs little.

    Examples
    --------
    >>> from sklearn_pathkernel._compute._tasks import row_blocks
    >>> row_blocks(10, 2, tiles_per_block=2)
    [(0, 4), (4, 8), (8, 10)]
    """
    block = tile * tiles_per_block
    return [(r0, min(r0 + block, n_rows)) for r0 in range(0, n_rows, block)]
