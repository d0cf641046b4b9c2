"""Time and peak memory of the kernel-machine decomposition (issue 4).

200 query rows against 1000 training rows over 200 full-batch steps, MLP
64-256-256-1 tanh in float64, first-order and exact (4 Gauss-Legendre
nodes), with the structured engine. The output itself is
200 x 1000 x 1 float64 numbers (1.5 MiB); the peak reported is resident
memory above the process before the call, sampled every millisecond.

A second table puts solvers side by side: the same network and data
trained with plain sgd, sgd with momentum and Adam, then decomposed exactly
(sgd on the engines; momentum and Adam by the query-side walk of
``_query_side``, per-example gradients against a ``d x O`` direction per
query). Smaller by default (``--solver-queries``, ``--solver-train``,
``--solver-steps``): the walk costs ``d`` per (query, training row) pair and
step where the structured engine costs the layer widths.

Usage::

    python benchmarks/bench_decompose.py [--queries 200] [--train 1000]
                                         [--steps 200] [--solver-queries 50]
                                         [--solver-train 500] [--solver-steps 50]
                                         [--only-solvers]
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
    parser.add_argument("--solver-queries", type=int, default=50)
    parser.add_argument("--solver-train", type=int, default=500)
    parser.add_argument("--solver-steps", type=int, default=50)
    parser.add_argument("--only-solvers", action="store_true")
    args = parser.parse_args()
    if not args.only_solvers:
        forms(args)
    solvers(args)


def _data(n_train, n_queries):
    rng = np.random.RandomState(0)
    X = rng.randn(n_train + n_queries, 64)
    y = np.tanh(X[:, :8].sum(axis=1) / 3) + 0.1 * rng.randn(len(X))
    return X[:n_train], y[:n_train], X[n_train:]


def _fit(X, y, steps, **params):
    est = PathKernelRegressor(
        (256, 256),
        max_iter=steps,
        tol=0,
        dtype="float64",
        random_state=0,
        quadrature="left",
        kernel_nodes=None,
        **params,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


def solvers(args):
    """Exact decomposition of one network trained by three solvers."""
    X_train, y_train, X_query = _data(args.solver_train, args.solver_queries)
    fits = {
        "sgd": {"learning_rate_init": 0.05},
        "sgd, momentum 0.9": {"learning_rate_init": 0.005, "momentum": 0.9},
        "adam": {"solver": "adam", "learning_rate_init": 1e-3},
    }
    fitted = {
        name: _fit(X_train, y_train, args.solver_steps, **p) for name, p in fits.items()
    }
    print(
        f"\n{args.solver_queries} queries x {args.solver_train} training rows x "
        f"{args.solver_steps} full-batch steps, MLP 64-256-256-1 tanh, float64, "
        "exact (4 nodes), loss-weighted kernel (the path kernel not timed)\n"
    )
    print("| solver | seconds | x sgd | peak MiB | max rel. error |")
    print("|---|---:|---:|---:|---:|")
    for est in fitted.values():
        est.decompose(X_query[:2], exact=True, kernel="loss_weighted")  # warm-up
    base = None
    for name, est in fitted.items():
        with PeakRSS() as memory:
            start = time.perf_counter()
            machine = est.decompose(X_query, exact=True, kernel="loss_weighted")
            seconds = time.perf_counter() - start
        base = base or seconds
        print(
            f"| {name} | {seconds:.1f} | {seconds / base:.1f} | {memory.mib:.0f} | "
            f"{machine.error['max_rel']:.1e} |"
        )


def forms(args):
    """First-order and exact decomposition of one sgd-trained network."""

    X_train, y_train, X_query = _data(args.train, args.queries)
    est = _fit(X_train, y_train, args.steps, learning_rate_init=0.05)
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
