"""Time and peak memory of the kernel-machine decomposition (issue 4).

200 query rows against 1000 training rows over 200 full-batch steps, MLP
64-256-256-1 tanh in float64, first-order and exact (4 Gauss-Legendre
nodes), with the structured engine. The output itself is
200 x 1000 x 1 float64 numbers (1.5 MiB); the peak reported is resident
memory above the process before the call, sampled every millisecond.

Usage::

    python benchmarks/bench_decompose.py [--queries 200] [--train 1000]
                                         [--steps 200]
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
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    rng = np.random.RandomState(0)
    X = rng.randn(args.train + args.queries, 64)
    y = np.tanh(X[:, :8].sum(axis=1) / 3) + 0.1 * rng.randn(len(X))
    X_train, y_train, X_query = X[: args.train], y[: args.train], X[args.train :]
    est = PathKernelRegressor(
        (256, 256),
        learning_rate_init=0.05,
        max_iter=args.steps,
        tol=0,
        dtype="float64",
        random_state=0,
        quadrature="left",
        kernel_nodes=None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X_train, y_train)
    est.decompose(X_query[:2])  # warm-up
    print(
        f"{args.queries} queries x {args.train} training rows x "
        f"{est.trajectory_.n_steps} steps, MLP 64-256-256-1 tanh, float64\n"
    )
    print("| form | seconds | peak MiB | max rel. error |")
    print("|---|---:|---:|---:|")
    for exact in (False, True):
        with PeakRSS() as memory:
            start = time.perf_counter()
            machine = est.decompose(X_query, exact=exact)
            seconds = time.perf_counter() - start
        form = "exact, 4 nodes" if exact else "first-order"
        print(
            f"| {form} | {seconds:.1f} | {memory.mib:.0f} | "
            f"{machine.error['max_rel']:.1e} |"
        )


if __name__ == "__main__":
    main()
