"""Training with ``torch.optim``: what each solver costs, and sgd against before.

Until issue 13, training applied plain gradient descent by hand
(``p -= eps * (grad + alpha * p)``); now every step goes through a
``torch.optim`` optimiser and the trajectory records what the solver needs
(Adam: its preconditioner, one more flat vector per step). This benchmark
fits the same network on ``load_digits`` (standardized) in one process,
alternating:

- ``sgd``, and ``sgd (by hand)``: the same fit with the optimiser replaced by
  the old hand-written update (``_HandWrittenSGD`` below), the baseline the
  target "sgd without momentum no slower than today" is measured against;
- ``momentum`` (Nesterov, 0.9), ``adam`` and ``adamw``, whose cost is reported
  relative to sgd.

Two settings: full batch (200 steps) and minibatches of 32 (many small
steps, where a per-step overhead shows most). Best of ``--repeats`` runs.
Prints a Markdown table.

Usage::

    python benchmarks/bench_training.py [--hidden 256 256] [--repeats 3]
"""

import argparse
import time
import warnings
from unittest import mock

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import scale

from sklearn_pathkernel import PathKernelClassifier
from sklearn_pathkernel._training._solvers import Solver

SOLVERS = {
    "sgd": dict(solver="sgd", learning_rate_init=0.1),
    "sgd (by hand)": dict(solver="sgd", learning_rate_init=0.1),
    "momentum": dict(solver="sgd", learning_rate_init=0.01, momentum=0.9),
    "adam": dict(solver="adam", learning_rate_init=0.001),
    "adamw": dict(solver="adamw", learning_rate_init=0.001, alpha=0.01),
}
SETTINGS = {
    "full batch, 200 steps": dict(max_iter=200),
    "batch 32, 5 epochs": dict(max_iter=5, batch_size=32),
}


class _HandWrittenSGD:
    """The update training used before torch.optim: ``p -= lr * grad``."""

    def __init__(self, parameters, lr, alpha):
        self.parameters, self.alpha = list(parameters), alpha
        self.param_groups = [{"lr": lr}]
        self.state = {}

    def step(self):
        lr = self.param_groups[0]["lr"]
        with torch.no_grad():
            for p in self.parameters:
                grad = p.grad + self.alpha * p if self.alpha else p.grad
                p.sub_(lr * grad)


def _by_hand(self, parameters, learning_rate):
    return _HandWrittenSGD(parameters, learning_rate, self.alpha)


def fit_seconds(X, y, hidden, name, setting):
    est = PathKernelClassifier(
        hidden,
        tol=0.0,
        n_iter_no_change=10**6,
        random_state=0,
        **SOLVERS[name],
        **SETTINGS[setting],
    )
    patch = (
        mock.patch.object(Solver, "optimizer", _by_hand)
        if name.endswith("(by hand)")
        else mock.patch.object(Solver, "name", Solver.name)  # a no-op patch
    )
    with warnings.catch_warnings(), patch:
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        est.fit(X, y)
        seconds = time.perf_counter() - start
    return seconds, est


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    X, y = load_digits(return_X_y=True)
    X = scale(X)
    hidden = tuple(args.hidden)
    print(
        f"load_digits, 64-{'-'.join(map(str, hidden))}-10 tanh, float32, "
        f"{torch.get_num_threads()} threads, best of {args.repeats}\n"
    )
    print("| setting | solver | seconds | vs sgd | steps | final loss |")
    print("|---|---|---:|---:|---:|---:|")
    for setting in SETTINGS:
        best = {name: np.inf for name in SOLVERS}
        loss, steps = {}, {}
        for _ in range(args.repeats):  # alternate, so that load hits all alike
            for name in SOLVERS:
                seconds, est = fit_seconds(X, y, hidden, name, setting)
                best[name] = min(best[name], seconds)
                loss[name], steps[name] = est.loss_curve_[-1], est.trajectory_.n_steps
        for name in SOLVERS:
            print(
                f"| {setting} | {name} | {best[name]:.2f} | "
                f"{best[name] / best['sgd']:.2f} | {steps[name]} | {loss[name]:.4f} |"
            )


if __name__ == "__main__":
    main()
