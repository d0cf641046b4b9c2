"""The exact decomposition across relu kinks against shared nodes (issue 25).

The issue's setting: ``load_digits`` (pixels / 16, all 1,797 rows trained),
MLP 64-64-10 relu, 60 full-batch sgd steps at 0.5, float64. One torch
thread; every form decomposes the same query rows in one process, side by
side, and the cost is CPU seconds (``time.process_time``: the work done,
whatever else runs on the machine), best of ``--repeats``.

Forms: today's 4, 8 and 16 shared nodes per step (``kinks=False``), and the
kink-aware exact form (``kinks="auto"``): on the engines (plain sgd on the
structured engine, one node per piece on this one-hidden-layer chain) and,
forced, by the backward walk (the route of momentum, Adam and engines whose
states cannot follow per-row points). For the kink-aware forms the table
also gives the share of the time spent finding the kinks and the pieces per
query and step.

A second table times the kink search alone, patterns by a batched forward
(``RowPoints``) against ``torch.func.vmap`` with a parameter copy per row.
A third (``--deeper``) repeats the comparison on 2 and 3 hidden layers of 64
at 0.2, and with Adam.

Usage::

    python benchmarks/bench_kinks.py [--queries 100] [--repeats 2] [--deeper]
                                     [--deeper-queries 8]
"""

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning

from sklearn_pathkernel import PathKernelClassifier
from sklearn_pathkernel._explain import _decompose, _kinks, _query_side


def _fit(X, y, layers=(64,), learning_rate=0.5, **params):
    params = {"max_iter": 60, **params}
    est = PathKernelClassifier(
        layers,
        activation="relu",
        learning_rate_init=learning_rate,
        tol=0,
        dtype="float64",
        random_state=0,
        **params,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


class _Spy:
    """CPU seconds spent in ``segment_kinks``, and the kinks it found."""

    def __init__(self):
        self.seconds, self.kinks, self.searches = 0.0, 0, 0

    def __enter__(self):
        self.original = _kinks.segment_kinks

        def timed(*args, **kwargs):
            start = time.process_time()
            kinks = self.original(*args, **kwargs)
            self.seconds += time.process_time() - start
            self.kinks += int((kinks < 1).sum())
            self.searches += kinks.shape[0]
            return kinks

        for module in (_decompose, _query_side):
            module.segment_kinks = timed
        return self

    def __exit__(self, *exc):
        for module in (_decompose, _query_side):
            module.segment_kinks = self.original


def _run(est, X, repeats, walk=False, **options):
    """Best CPU seconds of ``repeats`` decompositions, the machine, the spy."""
    original = _decompose._engine_takes_row_points
    if walk:  # the walk, as for an engine whose states cannot follow rows
        _decompose._engine_takes_row_points = lambda *args: False
    try:
        best = None
        for _ in range(repeats):
            with _Spy() as spy:
                start = time.process_time()
                machine = est.decompose(X, exact=True, **options)
                seconds = time.process_time() - start
            if best is None or seconds < best[0]:
                best = (seconds, machine, spy)
    finally:
        _decompose._engine_takes_row_points = original
    return best


def forms(est, X, repeats, label):
    print(f"\n{label}: {len(X)} queries, CPU seconds per query (best of {repeats})\n")
    print("| form | s / query | x 4 nodes | max rel. error | kink search | pieces |")
    print("|---|---:|---:|---:|---:|---:|")
    base = None
    runs = [(f"{n} shared nodes", {"n_nodes": n, "kinks": False}) for n in (4, 8, 16)]
    runs += [("kinks, engines", {}), ("kinks, walk", {"walk": True})]
    for name, options in runs:
        seconds, machine, spy = _run(est, X, repeats, **options)
        base = base or seconds
        share = f"{spy.seconds / seconds:.0%}" if spy.searches else ""
        pieces = f"{1 + spy.kinks / spy.searches:.2f}" if spy.searches else ""
        print(
            f"| {name} | {seconds / len(X):.3f} | {seconds / base:.2f} | "
            f"{machine.error['max_rel']:.1e} | {share} | {pieces} |"
        )


def search(est, X, repeats):
    """The kink search alone: batched forward against a vmap per row."""
    traj = est.trajectory_
    steps = range(0, traj.n_steps, 6)
    print(
        f"\nKink search alone, {len(X)} queries x {len(steps)} steps, "
        f"CPU seconds (best of {repeats})\n"
    )
    print("| patterns by | seconds | x batched | same kinks |")
    print("|---|---:|---:|---|")
    found, base = {}, None
    for batched in (True, False):
        best = None
        for _ in range(repeats):
            start = time.process_time()
            found[batched] = [
                _kinks.segment_kinks(
                    est.module_,
                    traj.parameters(t),
                    _query_side.parameters_after(traj, t),
                    X,
                    batched=batched,
                )
                for t in steps
            ]
            seconds = time.process_time() - start
            best = seconds if best is None else min(best, seconds)
        base = base or best
        same = all(
            a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=1e-12)
            for a, b in zip(found[True], found[batched])
        )
        name = "batched forward (RowPoints)" if batched else "vmap, a copy per row"
        print(f"| {name} | {best:.2f} | {best / base:.1f} | {same} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--deeper", action="store_true")
    parser.add_argument("--deeper-queries", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    Xq = torch.tensor(X[: args.queries])
    est = _fit(X, y)
    est.decompose(X[:2], exact=True)  # warm-up
    label = "digits, 64 relu, 60 full-batch sgd steps at 0.5, float64"
    forms(est, X[: args.queries], args.repeats, label)
    search(est, Xq, args.repeats)
    if args.deeper:
        for layers in [(64, 64), (64, 64, 64)]:
            est = _fit(X, y, layers, 0.2)
            label = f"digits, {len(layers)} x 64 relu, 60 steps at 0.2"
            forms(est, X[: args.deeper_queries], args.repeats, label)
        est = _fit(X, y, (64,), 0.01, solver="adam", batch_size=300, max_iter=10)
        label = "digits, 64 relu, Adam 0.01, 10 epochs of 6 minibatches"
        forms(est, X[: args.deeper_queries], args.repeats, label)
    print(f"\nnumpy {np.__version__}, torch {torch.__version__}, 1 thread")


if __name__ == "__main__":
    main()
