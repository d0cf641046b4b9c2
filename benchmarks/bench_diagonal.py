"""The kernel's diagonal row by row against the diagonal of 128-row kernels.

``kernel_diagonal`` and the "mean_diagonal" / "cosine" normalisations need
``K_path(x, x)`` for every row. The structured and jacobian engines now
compute it row by row (no product between rows); the NTK-vector-product
engine keeps the old way, the diagonal of the symmetric kernels of 128-row
tiles. This times both ways side by side in one process, best of
``--repeats``, on ``load_digits`` (MLP 64-64-10 tanh, float64, 60
checkpoints, as in the demo) and reports the ratio and the largest relative
difference.

Usage::

    python benchmarks/bench_diagonal.py [--repeats 3]
"""

import argparse
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

from sklearn_pathkernel import PathKernelClassifier
from sklearn_pathkernel._path import _diagonal_of_tiles, path_kernel_diagonal


def best_of(repeats, fn):
    seconds, result = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds = min(seconds, time.perf_counter() - start)
    return seconds, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = PathKernelClassifier(
            (64,),
            learning_rate=0.5,
            max_iter=60,
            tol=0,
            dtype="float64",
            random_state=0,
        ).fit(X, y)
    module, trajectory = clf.module_, clf.trajectory_
    print(
        f"load_digits n={len(X)}, MLP 64-64-10 tanh, float64, "
        f"{len(trajectory)} checkpoints, best of {args.repeats}\n"
    )
    print("| diagonal | seconds |")
    print("|---|---:|")
    rows, by_rows = best_of(
        args.repeats, lambda: path_kernel_diagonal(module, trajectory, X)
    )
    tiles, by_tiles = best_of(
        args.repeats,
        lambda: _diagonal_of_tiles(module, trajectory, X, "auto", None, None, None),
    )
    print(f"| row by row (structured engine) | {rows:.3f} |")
    print(f"| diagonal of 128-row kernels | {tiles:.3f} |")
    difference = np.abs(by_rows - by_tiles).max() / np.abs(by_tiles).max()
    print(
        f"\nrow by row takes {rows / tiles:.2f}x the time; "
        f"max rel. difference {difference:.1e}"
    )


if __name__ == "__main__":
    main()
