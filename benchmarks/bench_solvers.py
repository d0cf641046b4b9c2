"""The path kernel of an Adam-trained network: structured against jacobian.

Adam's path kernel takes each node's term in a diagonal metric,
``K = sum_s p_s J_s diag(M_s) J_s^T`` (docs/design.md, section 12). The
structured engine no longer has two Grams per layer there but ``h_l`` of
them (docs/design.md, section 7.3); the Jacobian engine scales its
Jacobians by ``sqrt(M_s)`` and pays what it always pays. Both run side by
side in one process, float32, on the same trajectory: ``load_digits``
(n = 1797, 10 logits), MLP 64-256-256-10 tanh, ``solver="adam"``, 200
full-batch steps, 50 kernel nodes (Simpson's rule).

The Jacobian engine needs ``2 O d = 1.7`` MFLOP per pair of rows and node
(``d = 85,002``): it runs on the first ``--rows`` rows and the first
``--jacobian-nodes`` nodes only, next to the structured engine on exactly
the same rows and nodes (that is the speed-up), and its time for all nodes
is that scaled linearly (the cost is linear in the nodes). The structured
engine also runs on all nodes, and the sgd form of the kernel (the same
path without its metric, structured) shows what the metric costs.

FLOPs are those of the products between rows for one triangle of the
symmetric kernel (states excluded: ``2 d (1 + O)`` per row and node for
both engines, and much more for the Jacobian engine, which recomputes its
column states for every strip).

Usage::

    python benchmarks/bench_solvers.py                 # 256 rows, 5 nodes
    python benchmarks/bench_solvers.py --quick         # a smoke test
"""

import argparse
import os
import sys
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

from sklearn_pathkernel import PathKernelClassifier
from sklearn_pathkernel._kernels._path import kernel_points, weighted_kernel_sum

sys.path.insert(0, os.path.dirname(__file__))
from bench_kernel import matmul_rate  # noqa: E402

WIDTHS = [64, 256, 256, 10]


def metric_flops(widths, pairs):
    """FLOPs of the structured engine's products in a metric, per node.

    A hidden layer: ``2 h_l (h_{l-1} + 1)`` for ``G_A``, ``2 O h_l`` for
    ``G_D`` and ``2 h_l`` for their product and sum, per pair; the output
    layer (identity signals): one Gram in ``M``'s column sums,
    ``2 (h_{L-1} + 1)``.
    """
    n_outputs, per_pair = widths[-1], 0
    for layer, (h_in, h_out) in enumerate(zip(widths[:-1], widths[1:])):
        if layer == len(widths) - 2:
            per_pair += 2 * (h_in + 1)
        else:
            per_pair += 2 * h_out * (h_in + 1 + n_outputs + 1)
    return pairs * per_pair


def sgd_flops(widths, pairs, nodes):
    """FLOPs of the structured engine's products without a metric.

    Per pair and node: ``2 (h_{l-1} + 1)`` for each input Gram but the
    first layer's (the same at every node: once), ``2 O h_l`` for each
    signal Gram but the output layer's (the identity), 2 for the product.
    """
    n_outputs, per_pair = widths[-1], 0
    last = len(widths) - 2
    for layer, (h_in, h_out) in enumerate(zip(widths[:-1], widths[1:])):
        per_pair += 0 if layer == 0 else 2 * (h_in + 1)
        per_pair += 0 if layer == last else 2 * n_outputs * h_out
        per_pair += 2
    return pairs * (nodes * per_pair + 2 * (widths[0] + 1))


def jacobian_flops(widths, pairs):
    """FLOPs of the Jacobian engine's products: ``2 O d`` per pair and node."""
    d = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))
    return pairs * 2 * widths[-1] * d


def timed(fn, repeats=1):
    """Best of ``repeats`` (a shared machine) and the last result."""
    seconds, result = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds = min(seconds, time.perf_counter() - start)
    return seconds, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--jacobian-nodes", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.jacobian_nodes, args.repeats = 32, 1, 1
    torch.manual_seed(0)
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    clf = PathKernelClassifier(
        (256, 256),
        solver="adam",
        learning_rate_init=1e-3,
        max_iter=200,
        tol=0,
        kernel_nodes=50,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    module, trajectory = clf.module_, clf.trajectory_
    points = kernel_points(trajectory)
    assert len(points) == 50 and trajectory.kernel_metric_at(0) is not None
    rows = X[: args.rows]
    names = trajectory.parameter_names
    rate = matmul_rate("cpu")

    def kernel(engine, nodes, metric=True):
        chosen = [
            (w, load, load_metric if metric else lambda: None)
            for w, load, load_metric in nodes
        ]
        return weighted_kernel_sum(
            module, chosen, rows, engine=engine, parameter_names=names
        )

    first = points[: args.jacobian_nodes]
    kernel("structured", first[:1])  # warm-up
    # Interleaved, so that a burst of load on the shared host hits both.
    structured, jacobian, plain = np.inf, np.inf, np.inf
    for _ in range(args.repeats):
        seconds, K_structured = timed(lambda: kernel("structured", first))
        structured = min(structured, seconds)
        seconds, K_plain = timed(lambda: kernel("structured", first, metric=False))
        plain = min(plain, seconds)
    seconds, K_jacobian = timed(lambda: kernel("jacobian", first))
    jacobian = min(jacobian, seconds)
    seconds, K_structured = timed(lambda: kernel("structured", first))
    structured = min(structured, seconds)
    every, _ = timed(lambda: kernel("structured", points), repeats=args.repeats)
    rate = max(rate, matmul_rate("cpu"))  # the better of before and after

    difference = np.abs(K_structured - K_jacobian).max() / np.abs(K_jacobian).max()
    n, k = len(rows), len(first)
    pairs = n * (n + 1) / 2
    flops = {
        "structured": metric_flops(WIDTHS, pairs * k),
        "jacobian": jacobian_flops(WIDTHS, pairs * k),
        "plain": sgd_flops(WIDTHS, pairs, k),
    }
    print(
        f"\n### Adam path kernel, load_digits (first {n} rows), MLP "
        f"64-256-256-10 tanh, float32, {k} of the 50 nodes "
        f"(matmul rate next to it: {rate / 1e9:.1f} GFLOP/s)\n"
    )
    print(
        "| kernel | engine | seconds | vs jacobian | max rel. diff. "
        "| GFLOP (products) | of matmul rate |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, engine, seconds, key, diff in [
        ("Adam", "jacobian", jacobian, "jacobian", "-"),
        ("Adam", "structured", structured, "structured", f"{difference:.1e}"),
        ("sgd form, same path", "structured", plain, "plain", "-"),
    ]:
        print(
            f"| {label} | {engine} | {seconds:.3f} | {jacobian / seconds:.1f}x "
            f"| {diff} | {flops[key] / 1e9:.2f} "
            f"| {flops[key] / seconds / rate:.1%} |"
        )
    print(
        f"\nAll 50 nodes on the same {n} rows: structured {every:.2f} s, "
        f"jacobian about {jacobian * 50 / k:.0f} s ({k} nodes timed, "
        f"x{50 / k:g}). The metric against the sgd form: "
        f"{flops['structured'] / flops['plain']:.1f}x the FLOPs, "
        f"{structured / plain:.1f}x the time."
    )


if __name__ == "__main__":
    main()
