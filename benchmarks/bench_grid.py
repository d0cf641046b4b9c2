"""What the fixed tile grid costs: W2 with the grid against one big product.

Since issue 7 every kernel entry comes out of a product of one row tile
(256 rows) against one column chunk (2048 columns), so that results are
bit-identical whatever ``working_memory`` and ``n_jobs`` are. This times
W2 of ``bench_kernel.py`` (``load_digits``, MLP 64-256-256-10 tanh, 50
checkpoints, symmetric) with the default grid and with the grid switched off
(one tile and one chunk as large as the data: the fewest, largest
products), interleaved, best of ``--repeats``, in the same process, and
reports the ratio and each one's fraction of the FLOP bound. It also checks
that the default grid gives the same bits under three budgets.

Usage::

    python benchmarks/bench_grid.py [--repeats 3] [--checkpoints 50]
"""

import argparse
import os
import sys
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

from sklearn_pathkernel import PathKernelClassifier, path_kernel
from sklearn_pathkernel._compute import _blocking

sys.path.insert(0, os.path.dirname(__file__))
from bench_kernel import matmul_rate, structured_flops  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoints", type=int, default=50)
    args = parser.parse_args()

    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    clf = PathKernelClassifier(
        (256, 256),
        max_iter=args.checkpoints,
        tol=0,
        random_state=0,
        quadrature="left",
        kernel_nodes=None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    module, trajectory = clf.module_, clf.trajectory_
    path_kernel(module, trajectory, X[:64])  # warm-up

    grid = (_blocking.TILE_ROWS, _blocking.CHUNK_COLUMNS)

    def with_grid(tile, chunk):
        _blocking.TILE_ROWS, _blocking.CHUNK_COLUMNS = tile, chunk
        try:
            return path_kernel(module, trajectory, X)
        finally:
            _blocking.TILE_ROWS, _blocking.CHUNK_COLUMNS = grid

    n = len(X)
    best = {"grid": np.inf, "off": np.inf}
    results = {}
    rate = matmul_rate("cpu")
    for _ in range(args.repeats):
        for name, sizes in (("grid", grid), ("off", (n, n))):
            seconds, results[name] = timed(lambda sizes=sizes: with_grid(*sizes))
            best[name] = min(best[name], seconds)
    rate = max(rate, matmul_rate("cpu"))
    flops = structured_flops([64, 256, 256, 10], n, n, args.checkpoints, True)

    budgets = [None, 64, 16]
    same = all(
        np.array_equal(
            path_kernel(module, trajectory, X, working_memory=memory), results["grid"]
        )
        for memory in budgets
    )
    difference = (
        np.abs(results["grid"] - results["off"]).max() / np.abs(results["off"]).max()
    )

    print(
        f"W2: load_digits n={n}, MLP 64-256-256-10 tanh, {args.checkpoints} "
        f"checkpoints; matmul rate {rate / 1e9:.1f} GFLOP/s; FLOP bound "
        f"{flops / 1e9:.0f} GFLOP; best of {args.repeats}, interleaved\n"
    )
    print("| products | seconds | of FLOP bound |")
    print("|---|---:|---:|")
    print(
        f"| grid: {grid[0]}-row tiles x {grid[1]}-column chunks | "
        f"{best['grid']:.2f} | {flops / best['grid'] / rate:.1%} |"
    )
    print(
        f"| no grid: one {n} x {n} product per layer | {best['off']:.2f} | "
        f"{flops / best['off'] / rate:.1%} |"
    )
    print(f"\ngrid / no grid: {best['grid'] / best['off']:.2f}x the time")
    print(f"bit-identical under working_memory {budgets}: {same}")
    print(f"max rel. difference grid vs no grid: {difference:.1e}")


if __name__ == "__main__":
    main()
