"""Peak memory of ``kernel(X)`` for n = 20,000 rows and 100 checkpoints.

The claim under test (issue 3): with the MLP 64-256-256-1, the path kernel's
peak memory stays within ``working_memory`` plus the n x n float64 result.
Peak resident memory is sampled every millisecond from /proc, relative to the
process just before the call (the fitted estimator and X already loaded).

Usage::

    python benchmarks/bench_memory.py [--n 20000] [--checkpoints 100]
                                      [--working-memory 1024]
"""

import argparse
import time
import warnings

import numpy as np
from bench_kernel import PeakRSS
from sklearn.exceptions import ConvergenceWarning

from sklearn_pathkernel import PathKernelRegressor


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--checkpoints", type=int, default=100)
    parser.add_argument("--working-memory", type=float, default=1024.0)
    args = parser.parse_args()

    rng = np.random.RandomState(0)
    X = rng.randn(args.n, 64).astype(np.float32)
    y = np.tanh(X[:, :8].sum(axis=1) / 3) + 0.1 * rng.randn(args.n)
    est = PathKernelRegressor(
        (256, 256),
        max_iter=args.checkpoints,
        tol=0,
        working_memory=args.working_memory,
        random_state=0,
        verbose=0,
        quadrature="left",
        kernel_nodes=None,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    fit_seconds = time.perf_counter() - start
    est.set_params(verbose=1)  # print the engine and the blocking
    with PeakRSS() as memory:
        start = time.perf_counter()
        K = est.kernel(X)
        seconds = time.perf_counter() - start
    result_mib = K.nbytes / 2**20
    print(
        f"n={args.n}, checkpoints={len(est.trajectory_)}, fit {fit_seconds:.1f} s, "
        f"kernel {seconds:.1f} s\n"
        f"peak above baseline {memory.mib:.0f} MiB = result {result_mib:.0f} MiB "
        f"+ {memory.mib - result_mib:.0f} MiB of work "
        f"(working_memory {args.working_memory:.0f} MiB)\n"
        f"symmetric: {bool((K == K.T).all())}, min diagonal {K.diagonal().min():.3g}"
    )


if __name__ == "__main__":
    main()
