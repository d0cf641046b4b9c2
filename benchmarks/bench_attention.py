"""Workload (c) of ``bench_hooks.py``: where a checkpoint's time goes.

One ``TransformerEncoderLayer`` (d_model 64, 4 heads, feed-forward 128),
mean-pooled into one output, n = 500 sequences of length 16 (the same
trained trajectory as ``bench_hooks.py --only c``). Three ways to the same
traced path kernel, run in turns in one process, best of ``--repeats``
(the machine is shared: the best run is the least disturbed one):

- ``hooks``: the layer-hook engine with attention's own rule
  (``engines/_attention.py``);
- ``hooks, attention by fallback``: the same engine with attention sent to
  the per-layer ``torch.func`` fallback, as before that rule (the rule's
  alternative, switched here by patching ``_attention.rule_of``);
- ``jacobian``: per-example Jacobians by ``torch.func``.

Each run's seconds are split into the engine's ``state`` calls (per-example
gradients) and its ``contract`` calls (the Gram of the tiles), so the table
shows how much of a checkpoint is the Gram, which every exact engine pays
here: at 16 positions every layer is cheaper instantiated, so the Gram is
``d = 33,537`` numbers per pair of rows for the hooks engine and the
Jacobian engine alike.

Usage::

    python benchmarks/bench_attention.py               # plain, then in a metric
    python benchmarks/bench_attention.py --repeats 3 --checkpoints 2
"""

import argparse
import os
import sys
import time
import warnings

import numpy as np

from sklearn_pathkernel.engines import HookEngine, JacobianEngine
from sklearn_pathkernel.engines._hooks import _attention

sys.path.insert(0, os.path.dirname(__file__))
import bench_hooks  # noqa: E402


class _Split:
    """Seconds spent in the engines' ``state`` and ``contract`` calls."""

    def __init__(self):
        self.seconds = {"state": 0.0, "contract": 0.0}
        self.originals = []

    def __enter__(self):
        for cls in (HookEngine, JacobianEngine):
            for name in self.seconds:
                original = getattr(cls, name)
                self.originals.append((cls, name, original))
                setattr(cls, name, self._timed(name, original))
        return self

    def _timed(self, name, original):
        def method(engine, *args, **kwargs):
            start = time.perf_counter()
            try:
                return original(engine, *args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start

        return method

    def __exit__(self, *exc):
        for cls, name, original in self.originals:
            setattr(cls, name, original)


_RULE = _attention.rule_of


def _fallback_rule(layer):
    _RULE(layer)  # the same refusals
    return "fallback"


def run(module, trajectory, X, how, checkpoints, metric):
    """One kernel, its seconds and their split: (K, total, state, contract)."""
    engine = "jacobian" if how == "jacobian" else "hooks"
    if how == "fallback":
        _attention.rule_of = _fallback_rule
    try:
        with _Split() as split:
            start = time.perf_counter()
            K = bench_hooks.kernel(module, trajectory, X, engine, checkpoints, metric)
            total = time.perf_counter() - start
    finally:
        _attention.rule_of = _RULE
    return K, total, split.seconds["state"], split.seconds["contract"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--checkpoints", type=int, default=1)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # vmap's "performance drop" notes
    module, X, trajectory = bench_hooks.trained("c", False)
    k = min(args.checkpoints, len(trajectory.weights))
    labels = {
        "hooks": "hooks",
        "fallback": "hooks, attention by fallback",
        "jacobian": "jacobian",
    }
    for title, metric in (
        ("plain", None),
        ("Adam-like metric", bench_hooks.adam_like_metric(module)),
    ):
        kernels = {how: run(module, trajectory, X, how, k, metric)[0] for how in labels}
        best = {}
        for _ in range(args.repeats):
            for how in labels:
                result = run(module, trajectory, X, how, k, metric)[1:]
                if how not in best or result[0] < best[how][0]:
                    best[how] = result
        scale = np.abs(kernels["hooks"]).max()
        print(
            f"\n### (c) {title}: n = {len(X)}, {k} checkpoint(s), "
            f"best of {args.repeats}\n"
        )
        print(
            "| engine | seconds | states s | contracts s | jacobian / this "
            "| max rel. diff. |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for how, label in labels.items():
            total, state, contract = best[how]
            diff = np.abs(kernels[how] - kernels["hooks"]).max() / scale
            print(
                f"| {label} | {total:.3f} | {state:.3f} | {contract:.3f} "
                f"| {best['jacobian'][0] / total:.2f}x | {diff:.1e} |"
            )


if __name__ == "__main__":
    main()
