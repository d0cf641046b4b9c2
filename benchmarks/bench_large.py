"""End to end at n = 200,000: a linear model on path-kernel features.

The question a user with a large table asks: can the path kernel's feature
maps carry a kernel machine to 200,000 rows on a laptop-sized machine? Rows
come from ``make_classification`` (64 features, two classes, 20 informative,
1% label noise); the last 10,000 generated rows are the test set for every
method. One network, ``PathKernelClassifier((64,), max_iter=100,
record_every=10)`` (10 checkpoints, float32, full batch), is trained inside
each pipeline's ``fit``; then:

- ``features``: ``PathKernelFeatures(n_components=1024,
  normalize="mean_diagonal")`` then ``LinearSVC`` on all 200,000 training rows;
- ``nystroem``: ``PathKernelNystroem(n_components=1024,
  normalize="mean_diagonal")`` then ``LinearSVC`` on all 200,000 rows;
- ``exact``: ``PathKernelTransformer(normalize="mean_diagonal")`` then
  ``SVC(kernel="precomputed")`` on the first 10,000 training rows only (the
  200,000-row kernel would be 298 GiB).

Each runs in a fresh subprocess so that its peak resident memory
(``ru_maxrss``) is its own; the table gives the seconds of ``fit`` (network
training, features, linear model), of scoring the test rows, the peak RSS,
the test accuracy, and the trained network's own test accuracy. The
baseline the numbers are read against is the exact kernel machine on the
subset, run the same way.

Usage::

    python benchmarks/bench_large.py [--n 200000] [--components 1024]
"""

import argparse
import json
import os
import platform
import subprocess
import sys

_CHILD = r"""
import json, resource, sys, time, warnings
import numpy as np
import torch
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC, LinearSVC
from sklearn_pathkernel import (
    PathKernelClassifier, PathKernelFeatures, PathKernelNystroem,
    PathKernelTransformer,
)

method, n, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
n_test = 10_000
X, y = make_classification(
    n_samples=n + n_test, n_features=64, n_informative=20, flip_y=0.01,
    random_state=0,
)
X = X.astype(np.float32)
X_train, y_train, X_test, y_test = X[:n], y[:n], X[n:], y[n:]
if method == "exact":
    X_train, y_train = X_train[:10_000], y_train[:10_000]
net = PathKernelClassifier((64,), max_iter=100, record_every=10, random_state=0)
if method == "features":
    pipe = make_pipeline(
        PathKernelFeatures(net, n_components=m, normalize="mean_diagonal",
                           random_state=0),
        LinearSVC(),
    )
elif method == "nystroem":
    pipe = make_pipeline(
        PathKernelNystroem(net, n_components=m, normalize="mean_diagonal",
                           random_state=0),
        LinearSVC(),
    )
else:
    pipe = make_pipeline(
        PathKernelTransformer(net, normalize="mean_diagonal"),
        SVC(kernel="precomputed"),
    )
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    start = time.perf_counter()
    pipe.fit(X_train, y_train)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    accuracy = pipe.score(X_test, y_test)
    score_seconds = time.perf_counter() - start
network = pipe[0].estimator_
print(json.dumps({
    "method": method,
    "n_train": len(X_train),
    "fit_seconds": fit_seconds,
    "score_seconds": score_seconds,
    "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "accuracy": accuracy,
    "network_accuracy": network.score(X_test, y_test),
    "checkpoints": len(network.trajectory_),
    "threads": torch.get_num_threads(),
}))
"""


def run(method, n, m):
    """One method in a fresh process; its JSON line."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, method, str(n), str(m)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--components", type=int, default=1024)
    parser.add_argument(
        "--methods", nargs="+", default=["exact", "features", "nystroem"]
    )
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"n = {args.n:,}, n_components = {args.components}"
    )
    print(
        "| method | training rows | fit (s) | score 10,000 rows (s) | total (s) "
        "| peak RSS (MiB) | accuracy | network accuracy |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method in args.methods:
        r = run(method, args.n, args.components)
        total = r["fit_seconds"] + r["score_seconds"]
        print(
            f"| {method} | {r['n_train']:,} | {r['fit_seconds']:.1f} "
            f"| {r['score_seconds']:.1f} | {total:.1f} | {r['peak_mib']:.0f} "
            f"| {r['accuracy']:.4f} | {r['network_accuracy']:.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
