"""The same kernel serially, on one dask worker process and on two.

Workload: W2 of ``bench_kernel.py`` (``load_digits``, n = 1797, MLP
64-256-256-10 tanh) with ``--checkpoints`` checkpoints, symmetric, traced.
Three ways, interleaved, best of ``--repeats``, in one process:

- serial: ``n_jobs=None``, the tasks one after the other in this process
  with all of torch's threads;
- 1 worker / 2 workers: ``joblib.parallel_config(backend="dask")`` on a
  ``LocalCluster(n_workers=1 or 2, processes=True, threads_per_worker=1)``,
  ``n_jobs=-1``. Each worker runs torch on one thread (dask sets
  ``OMP_NUM_THREADS=1`` in its workers).

It reports the seconds, the speed-up of two workers over one, and whether
each result is bit-identical to the serial one.

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

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def timed(fn, clock=time.perf_counter):
    start = clock()
    result = fn()
    return clock() - start, result


def fitted(checkpoints):
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    clf = PathKernelClassifier(
        (256, 256), activation="tanh", max_iter=checkpoints, tol=0, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    return clf, X, y


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

    def on(n):
        with parallel_config(backend="dask", client=clients[n]):
            return path_kernel(module, trajectory, X, n_jobs=-1)

    serial = path_kernel(module, trajectory, X[:64])  # warm-up
    for n in clients:
        with parallel_config(backend="dask", client=clients[n]):
            path_kernel(module, trajectory, X[:64], n_jobs=-1)  # imports, warm-up
    runs = {
        "serial (this process)": lambda: path_kernel(module, trajectory, X),
        "1 worker process": lambda: on(1),
        "2 worker processes": lambda: on(2),
    }
    best = dict.fromkeys(runs, np.inf)
    results = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            seconds, results[name] = timed(run)
            best[name] = min(best[name], seconds)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # quiet close
    for client in clients.values():
        cluster = client.cluster
        client.close()
        cluster.close()
    serial = results["serial (this process)"]
    print(
        f"W2: load_digits n={len(X)}, MLP 64-256-256-10 tanh, "
        f"{len(trajectory)} checkpoints, symmetric, traced; best of "
        f"{args.repeats}, interleaved\n"
    )
    print("| run | seconds | bit-identical to serial |")
    print("|---|---:|---|")
    for name in runs:
        same = np.array_equal(results[name], serial)
        print(f"| {name} | {best[name]:.2f} | {same} |")
    speedup = best["1 worker process"] / best["2 worker processes"]
    print(f"\n2 workers vs 1: {speedup:.2f}x faster")


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

    def work(package):
        path = importlib.import_module(package.__name__ + "._path")
        decompose = importlib.import_module(package.__name__ + "._decompose")
        features = importlib.import_module(package.__name__ + "._features")
        return {
            "kernel (W2)": lambda: path.path_kernel(module, trajectory, X),
            "kernel_diagonal, 1797 rows": lambda: path.path_kernel_diagonal(
                module, trajectory, X
            ),
            "decompose, 64 queries": lambda: (
                decompose.decompose_path(
                    module, trajectory, X_train, X_train[:64]
                ).contributions
            ),
            "features, m=1024, 1797 rows": lambda: features.path_features(
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
