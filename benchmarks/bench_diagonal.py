"""The kernel's diagonal row by row against the diagonal of 128-row kernels.

``kernel_diagonal`` and the "mean_diagonal" / "cosine" normalisations need
``K_path(x, x)`` for every row. Every engine computes it row by row
(``Engine.diagonal``: no product between rows); the baseline is the old
way, the diagonal of the symmetric kernels of 128-row tiles. Both are timed
side by side in one process, best of ``--repeats``, on ``load_digits`` (MLP
64-64-10 tanh, float64, 60 checkpoints, as in the demo): the structured
engine on all rows, the NTK-vector-product engine (slow either way) on the
first ``--ntk-rows`` rows and 10 checkpoints. Reports the ratios and the
largest relative differences.

Usage::

    python benchmarks/bench_diagonal.py [--repeats 3] [--ntk-rows 256]
"""

import argparse
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

from sklearn_pathkernel import PathKernelClassifier, path_kernel
from sklearn_pathkernel._kernels._path import path_kernel_diagonal


def best_of(repeats, fn):
    seconds, result = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds = min(seconds, time.perf_counter() - start)
    return seconds, result


def diagonal_of_tiles(module, trajectory, X, engine, tile=128):
    """The baseline: the diagonal of the symmetric kernels of ``tile`` rows."""
    return np.concatenate(
        [
            np.diag(path_kernel(module, trajectory, X[r0 : r0 + tile], engine=engine))
            for r0 in range(0, len(X), tile)
        ]
    )


def compare(label, repeats, module, trajectory, X, engine):
    rows, by_rows = best_of(
        repeats, lambda: path_kernel_diagonal(module, trajectory, X, engine=engine)
    )
    tiles, by_tiles = best_of(
        repeats, lambda: diagonal_of_tiles(module, trajectory, X, engine)
    )
    difference = np.abs(by_rows - by_tiles).max() / np.abs(by_tiles).max()
    print(
        f"| {label} | {len(X)} | {len(trajectory)} | {rows:.3f} | {tiles:.3f} "
        f"| {rows / tiles:.2f}x | {difference:.1e} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ntk-rows", type=int, default=256)
    args = parser.parse_args()
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    fits = {}
    for max_iter in (60, 10):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fits[max_iter] = PathKernelClassifier(
                (64,),
                learning_rate_init=0.5,
                max_iter=max_iter,
                tol=0,
                dtype="float64",
                random_state=0,
                quadrature="left",
                kernel_nodes=None,
            ).fit(X, y)
    print(f"load_digits, MLP 64-64-10 tanh, float64, best of {args.repeats}\n")
    print(
        "| engine | rows | checkpoints | row by row (s) | 128-row kernels (s) "
        "| ratio | max rel. diff. |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    clf = fits[60]
    compare("structured", args.repeats, clf.module_, clf.trajectory_, X, "structured")
    clf = fits[10]
    compare(
        "ntk_vp",
        args.repeats,
        clf.module_,
        clf.trajectory_,
        X[: args.ntk_rows],
        "ntk_vp",
    )


if __name__ == "__main__":
    main()
