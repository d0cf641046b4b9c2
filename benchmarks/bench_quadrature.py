"""Fewer checkpoints by quadrature: nodes kept, kernel time and error.

On ``load_digits`` (standardized), a 64-256-256-10 tanh classifier is
trained once per case with every step stored (``record_every=1``), and once
more with ``quadrature="adaptive"`` (the only rule that training decides).
For each rule the path kernel of the first ``--rows`` rows is computed
through ``Trajectory.with_quadrature`` on the same stored path, side by side
in one process, and compared with the every-step kernel
``sum_t eps_t K_{w_t}`` (``with_quadrature("left")``, every checkpoint a
node): relative Frobenius error, nodes visited, seconds, and the ratio of
the every-step kernel's seconds to the rule's.

Cases: 200 full-batch steps (the issue's target: at most a tenth of the
steps as nodes, within 1e-3), and the issue's minibatch trap (batch 32,
20 epochs: 1,140 steps). The adaptive run's training time is compared with
a plain run's (best of two each), to price its probe kernel. Timings on a
shared host are noisy; the errors are not. Prints Markdown tables.

Usage::

    python benchmarks/bench_quadrature.py [--rows 200] [--cases full minibatch]
"""

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import scale

from sklearn_pathkernel import PathKernelClassifier
from sklearn_pathkernel._kernels._path import path_kernel
from sklearn_pathkernel._model._network import forward, trainable_parameters
from sklearn_pathkernel._training._probe import KernelProbe

CASES = {
    "full": {"max_iter": 200},
    "minibatch": {"max_iter": 20, "batch_size": 32},
}
RULES = [
    ("left", 0.1),
    ("trapezoid", 0.1),
    ("simpson", 0.1),
    ("trapezoid", 0.05),
    ("simpson", 0.05),
    ("simpson", 0.025),
]


def fit(X, y, **options):
    est = PathKernelClassifier(
        (256, 256), tol=0.0, n_iter_no_change=10**6, random_state=0, **options
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    return est, time.perf_counter() - start


def timed_kernel(est, trajectory, X):
    start = time.perf_counter()
    K = path_kernel(est.module_, trajectory, X)
    return K, time.perf_counter() - start


def case(name, X, y, rows):
    options = CASES[name]
    est, plain_seconds = fit(X, y, **options)
    plain_seconds = min(plain_seconds, fit(X, y, **options)[1])  # best of two
    trajectory = est.trajectory_
    reference, reference_seconds = timed_kernel(
        est, trajectory.with_quadrature("left"), X[:rows]
    )
    norm = np.linalg.norm(reference)
    print(
        f"\n### {name}: {trajectory.n_steps} steps, {rows} x {rows} kernel, "
        f"every-step kernel {reference_seconds:.1f} s\n"
    )
    print("| rule | kernel_nodes | nodes | seconds | speed-up | rel. error |")
    print("|---|---:|---:|---:|---:|---:|")
    for rule, fraction in RULES:
        view = trajectory.with_quadrature(rule, fraction)
        K, seconds = timed_kernel(est, view, X[:rows])
        error = np.linalg.norm(K - reference) / norm
        print(
            f"| {rule} | {fraction} | {len(view.kernel_nodes())} | {seconds:.2f} | "
            f"{reference_seconds / seconds:.1f}x | {error:.1e} |"
        )
    for tol in (0.05, 0.02):
        adaptive, adaptive_seconds = fit(
            X, y, quadrature="adaptive", adaptive_tol=tol, **options
        )
        adaptive_seconds = min(
            adaptive_seconds,
            fit(X, y, quadrature="adaptive", adaptive_tol=tol, **options)[1],
        )
        # Same seed, same path: the probe reads the parameters, changes nothing.
        assert np.array_equal(
            adaptive.trajectory_.flat_parameters(-1), trajectory.flat_parameters(-1)
        )
        view = adaptive.trajectory_
        K, seconds = timed_kernel(adaptive, view, X[:rows])
        error = np.linalg.norm(K - reference) / norm
        print(
            f"| adaptive (tol {tol}; training {adaptive_seconds / plain_seconds:.2f}x)"
            f" | | {len(view.kernel_nodes())} | {seconds:.2f} | "
            f"{reference_seconds / seconds:.1f}x | {error:.1e} |"
        )


def best_seconds(function, repeats=30):
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def probe_cost(X, y):
    """The probe's seconds per step next to a step's forward and backward."""
    est, _ = fit(X, y, max_iter=2)
    module = est.module_
    named = dict(trainable_parameters(module))
    X_t = torch.as_tensor(X, dtype=torch.float32)
    probe = KernelProbe(module, list(named), X_t, 0.05)
    parameters = {n: p.detach() for n, p in named.items()}
    probe_seconds = best_seconds(lambda: probe.moved(parameters))
    print("\n### probe kernel (8 rows) against one training step\n")
    print("| batch | step seconds | probe seconds | probe / step |")
    print("|---:|---:|---:|---:|")
    for batch in (32, len(X)):
        rows = X_t[:batch]

        def step(rows=rows):
            out = forward(module, rows)
            torch.autograd.grad(out.sum(), list(named.values()))

        seconds = best_seconds(step)
        print(
            f"| {batch} | {seconds * 1e3:.2f} ms | {probe_seconds * 1e3:.2f} ms | "
            f"{probe_seconds / seconds:.2f} |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--probe-only", action="store_true")
    args = parser.parse_args()
    X, y = load_digits(return_X_y=True)
    X = scale(X)
    probe_cost(X, y)
    if args.probe_only:
        return
    for name in args.cases:
        case(name, X, y, args.rows)


if __name__ == "__main__":
    main()
