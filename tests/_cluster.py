"""A two-process dask cluster for the tests that run tasks on one."""

from contextlib import contextmanager

import pytest


@contextmanager
def local_cluster():
    """``(cluster, client)``: two worker processes of one thread each.

    The package is imported on the workers up front, so that the first task
    does not pay for it.
    """
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            dashboard_address=None,
            silence_logs=50,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.run(__import__, "sklearn_pathkernel")
        yield cluster, client
