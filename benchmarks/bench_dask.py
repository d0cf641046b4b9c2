"""The same kernel serially, on one dask worker process and on two.

Workload: W2 of ``bench_kernel.py`` (``load_digits``, n = 1797, MLP
64-256-256-10 tanh) with ``--checkpoints`` checkpoints, symmetric, traced.
Three ways, interleaved, best of ``--repeats``, in one process:

- serial: ``n_jobs=None``, the tasks one after the other in this process,
  on 2 torch threads and on 1;
- 2 workers: ``joblib.parallel_config(backend="dask")`` on a
  ``LocalCluster(n_workers=2, processes=True, threads_per_worker=1)``,
  ``n_jobs=2``. Each worker runs torch on one thread (dask sets
  ``OMP_NUM_THREADS=1`` in its workers);
- 1 worker: joblib runs the tasks of a cluster with one thread in all in
  the caller (its effective ``n_jobs`` is 1), so the same tasks are
  submitted to a one-worker cluster directly and their seconds summed.

It reports the seconds, the speed-up of two workers over one and over a
serial run on one thread, and whether each result is bit-identical to the
serial one.

``--before REV`` also times this revision's serial kernel, diagonal,
decomposition and features against those of git revision ``REV`` (its
package extracted with ``git archive`` and imported under another name),
interleaved in this process: what cutting the work into one task per block
and checkpoint costs a serial run.

Usage::

    python benchmarks/bench_dask.py [--checkpoints 20] [--repeats 3]
    python benchmarks/bench_dask.py --before 01cf30d [--cpu-time]
"""

import argparse
import importlib
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings

import numpy as np
import torch
from joblib import parallel_config
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

import sklearn_pathkernel
from sklearn_pathkernel import PathKernelClassifier, path_kernel
from sklearn_pathkernel._compute import _tasks
from sklearn_pathkernel._kernels import _path

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def timed(fn, clock=time.perf_counter):
    start = clock()
    result = fn()
    return clock() - start, result


def fitted(checkpoints):
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    clf = PathKernelClassifier(
        (256, 256),
        activation="tanh",
        max_iter=checkpoints,
        tol=0,
        kernel_nodes=None,  # the kernel visits every stored step
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    return clf, X, y


def serial_on(threads, run):
    """``run()`` in this process with ``threads`` torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run()
    finally:
        torch.set_num_threads(previous)


def _task_seconds(work, task):
    start = time.perf_counter()
    _path._strip_part(work, *task)
    return time.perf_counter() - start


def workers(args, clf, X):
    from distributed import Client, LocalCluster

    module, trajectory = clf.module_, clf.trajectory_
    clients = {}
    for n in (1, 2):
        cluster = LocalCluster(
            n_workers=n,
            processes=True,
            threads_per_worker=1,
            dashboard_address=None,
            silence_logs=50,
        )
        clients[n] = Client(cluster, set_as_default=False)

    def on_two():
        with parallel_config(backend="dask", client=clients[2]):
            return path_kernel(module, trajectory, X, n_jobs=2)

    with parallel_config(backend="dask", client=clients[2]):
        path_kernel(module, trajectory, X[:64], n_jobs=2)  # imports, warm-up
    runs = {
        "serial, 2 torch threads": lambda: serial_on(2, kernel_of(clf, X)),
        "serial, 1 torch thread": lambda: serial_on(1, kernel_of(clf, X)),
        "2 worker processes, 1 thread each": on_two,
    }
    best = dict.fromkeys(runs, np.inf)
    results = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            seconds, results[name] = timed(run)
            best[name] = min(best[name], seconds)
    # One worker process: joblib runs a one-thread cluster's tasks in the
    # caller (effective n_jobs 1), so the worker gets them directly.
    work, tasks = tasks_of(clf, X)
    scattered = clients[1].scatter(work)
    one = sum(
        clients[1].submit(_task_seconds, scattered, task, pure=False).result()
        for task in tasks
    )
    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # quiet close
    for client in clients.values():
        cluster = client.cluster
        client.close()
        cluster.close()
    reference = results["serial, 2 torch threads"]
    print(
        f"W2: load_digits n={len(X)}, MLP 64-256-256-10 tanh, "
        f"{len(trajectory.kernel_nodes())} checkpoints, symmetric, traced; best of "
        f"{args.repeats}, interleaved\n"
    )
    print("| run | seconds | bit-identical to serial |")
    print("|---|---:|---|")
    for name in runs:
        same = np.array_equal(results[name], reference)
        print(f"| {name} | {best[name]:.2f} | {same} |")
    print(f"| 1 worker process (sum of its task times) | {one:.2f} | |")
    two = best["2 worker processes, 1 thread each"]
    print(
        f"\n2 workers vs 1 worker: {one / two:.2f}x; vs serial on 1 thread: "
        f"{best['serial, 1 torch thread'] / two:.2f}x"
    )


def kernel_of(clf, X):
    return lambda: path_kernel(clf.module_, clf.trajectory_, X)


def tasks_of(clf, X):
    """The shared object and the tasks of the serial kernel, as it makes them."""
    captured = {}
    real = _tasks.run_tasks

    def spy(function, shared, tasks, *, n_jobs):
        captured["shared"], captured["tasks"] = shared, list(tasks)
        return real(function, shared, captured["tasks"], n_jobs=n_jobs)

    _tasks.run_tasks = spy
    try:
        path_kernel(clf.module_, clf.trajectory_, X)
    finally:
        _tasks.run_tasks = real
    return captured["shared"], captured["tasks"]


def before(args, clf, X, y):
    """Serial times of this revision against those of ``args.before``."""
    folder = tempfile.mkdtemp()
    archive = os.path.join(folder, "before.tar")
    subprocess.run(
        ["git", "archive", "-o", archive, args.before, "sklearn_pathkernel"],
        cwd=ROOT,
        check=True,
    )
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    # Imports inside the package are relative: it loads under another name.
    os.rename(
        os.path.join(folder, "sklearn_pathkernel"),
        os.path.join(folder, "sklearn_pathkernel_before"),
    )
    sys.path.insert(0, folder)
    packages = {
        "before": importlib.import_module("sklearn_pathkernel_before"),
        "after": sklearn_pathkernel,
    }
    module, trajectory = clf.module_, clf.trajectory_
    X_train = torch.as_tensor(X, dtype=torch.float32)

    def function(package, name, old_module):
        """``name`` from the package, or from its module in older revisions."""
        if hasattr(package, name):
            return getattr(package, name)
        module = importlib.import_module(f"{package.__name__}.{old_module}")
        return getattr(module, name)

    def work(package):
        diagonal = function(package, "path_kernel_diagonal", "_path")
        decompose = function(package, "decompose_path", "_decompose")
        features = function(package, "path_features", "_features")
        return {
            "kernel (W2)": lambda: package.path_kernel(module, trajectory, X),
            "kernel_diagonal, 1797 rows": lambda: diagonal(module, trajectory, X),
            "decompose, 64 queries": lambda: (
                decompose(module, trajectory, X_train, X_train[:64]).contributions
            ),
            "features, m=1024, 1797 rows": lambda: features(
                module, trajectory, X, n_components=1024, seed=0
            )[0],
        }

    works = {name: work(package) for name, package in packages.items()}
    # On a busy host, one thread's CPU time varies less than wall time.
    clock = time.perf_counter
    if args.cpu_time:
        torch.set_num_threads(1)
        clock = time.process_time
    best = {(name, w): np.inf for name in works for w in works[name]}
    results = {}
    for _ in range(args.repeats):
        for w in works["after"]:
            for name in works:
                seconds, results[name, w] = timed(works[name][w], clock)
                best[name, w] = min(best[name, w], seconds)
    print(
        f"\nSerial, before ({args.before}) and after, interleaved, best of "
        f"{args.repeats}, {len(trajectory)} checkpoints"
        + (", CPU seconds on one thread" if args.cpu_time else "")
        + "\n"
    )
    print("| work | before s | after s | after / before | same bits |")
    print("|---|---:|---:|---:|---|")
    for w in works["after"]:
        b, a = best["before", w], best["after", w]
        same = np.array_equal(results["before", w], results["after", w])
        print(f"| {w} | {b:.2f} | {a:.2f} | {a / b:.3f} | {same} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--before", help="git revision to compare the serial times with"
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="with --before: one torch thread, CPU seconds (for a busy host)",
    )
    args = parser.parse_args()
    clf, X, y = fitted(args.checkpoints)
    if args.before:
        before(args, clf, X, y)
    else:
        workers(args, clf, X)


if __name__ == "__main__":
    main()
