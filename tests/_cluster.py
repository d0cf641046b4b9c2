"""Worker processes for the tests: a two-process dask cluster, and
processes forked from a server that has imported torch and the package."""

import multiprocessing.forkserver
import sys
import traceback
from contextlib import contextmanager, redirect_stderr, redirect_stdout

import pytest

# What a worker needs before its first task: imported once, in the fork
# server, instead of once per worker process (torch and scikit-learn take
# seconds of CPU each time a fresh interpreter imports them).
PRELOAD = [
    "distributed",
    "torch",
    "sklearn",
    "sklearn_pathkernel._estimators",
    "sklearn_pathkernel._kernel_approximation",
    "sklearn_pathkernel._kernels._path",
    "sklearn_pathkernel._explain._decompose",
]


@contextmanager
def forkserver(preload=PRELOAD):
    """Worker processes forked from a server that has imported ``preload``.

    Each worker is still a process of its own: what it computes on travels
    to it pickled, and its results come back pickled, as from a fresh
    interpreter. The server is stopped on exit (one server per block, so
    that each block's processes are accounted to, and reaped by, this one).
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    try:
        yield context
    finally:
        multiprocessing.forkserver._forkserver._stop()


def run_script(source, argv, stdout, stderr):
    """Run ``source`` as ``__main__`` with ``sys.argv = argv`` in this process,
    its output written to the files ``stdout`` and ``stderr``.

    The target of a process forked from :func:`forkserver`: a script that
    would otherwise start an interpreter of its own.
    """
    import torch

    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 would for a new interpreter
    sys.argv = list(argv)
    with (
        open(stdout, "w") as out,
        open(stderr, "w") as err,
        redirect_stdout(out),
        redirect_stderr(err),
    ):
        try:
            exec(compile(source, argv[0], "exec"), {"__name__": "__main__"})
        except BaseException:
            traceback.print_exc()
            raise


@contextmanager
def local_cluster():
    """``(cluster, client)``: two worker processes of one thread each.

    The workers are forked from a server that has imported the package's
    modules, so that neither the start nor the first task pays for the
    imports.
    """
    distributed = pytest.importorskip("distributed")
    dask = pytest.importorskip("dask")
    method = {"distributed.worker.multiprocessing-method": "forkserver"}
    with dask.config.set(method):
        # distributed sets its own preload the first time it asks for the
        # context; asking first makes ours the one the server starts with.
        distributed.utils.get_mp_context()
        with (
            forkserver(),
            distributed.LocalCluster(
                n_workers=2,
                processes=True,
                threads_per_worker=1,
                dashboard_address=None,
                silence_logs=50,
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            yield cluster, client
