"""Operations per checkpoint with and without checkpoint stacks (W2 shapes).

Counted, not timed: a ``TorchDispatchMode`` (``tests/_dispatch.py``) counts
every operation the tasks dispatch, on meta tensors, under the device tile
policy forced on the CPU, for one checkpoint per task against stacks of 16.
"Launches" leave out views and other host-only operations, which launch
nothing on a GPU. The count helpers are the tests' own (``tests/test_path.py``,
``test_features.py``, ``test_decompose.py``), so the table and the tests
measure the same thing.

``--metric`` compares, for Adam's metric kernel, the row sub-blocks sized by
the device's budget (``sub_block_rows``) with the shapes-only sizing they had
before (``METRIC_TEMPORARIES``: the engine bound outside the device policy),
one task per checkpoint and stacks of 16. ``--timing`` times instead, on
real rows, the metric kernel under the forced device policy against the CPU
grid (one thread, CPU seconds, alternating in one process, best of
``--repeats``), and the policy with the shapes-only sub-blocks, to tell the
sub-blocks' share of the difference from the stacks'.

Run from the repository root::

    python benchmarks/bench_stack_counts.py [--metric] [--timing]
"""

import argparse
import pathlib
import sys
import time
import warnings
from contextlib import nullcontext

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from sklearn_pathkernel import PathKernelRegressor, path_kernel
from sklearn_pathkernel._compute._blocking import device_policy
from sklearn_pathkernel.engines import _structured

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "tests"))

import test_decompose  # noqa: E402
import test_features  # noqa: E402
import test_path  # noqa: E402
from _pytest.monkeypatch import MonkeyPatch  # noqa: E402


def _rows():
    patch = MonkeyPatch()
    try:
        for metric in (False, True):
            name = "Adam metric" if metric else "plain"
            _, one = test_path._stacked_kernel_ops(patch, 1, metric)
            _, stack = test_path._stacked_kernel_ops(patch, 16, metric)
            yield f"path kernel, {name}, 4,096 rows", one, stack
        for metric in (False, True):
            name = "Adam metric" if metric else "plain"
            _, one = test_path._stacked_diagonal_ops(patch, 1, metric)
            _, stack = test_path._stacked_diagonal_ops(patch, 16, metric)
            yield f"kernel_diagonal, {name}, 20,000 rows", one, stack
    finally:
        patch.undo()
    one = test_features._stacked_sketch_ops(16, False)
    stack = test_features._stacked_sketch_ops(16, True)
    yield "features (Kronecker sketch, m = 100), 20,000 rows", one, stack
    for exact in (False, True):
        name = "exact, 2 nodes" if exact else "first order"
        one = test_decompose._w2_decomposition_ops(1, exact)
        stack = test_decompose._w2_decomposition_ops(16, exact)
        yield f"decomposition, {name}, 2,048 x 1,797 rows", one, stack


def _metric_rows():
    """Adam's metric kernel, 4,096 rows: the old sizing, then the device's."""
    patch = MonkeyPatch()
    try:
        for device in (False, True):
            name = "device budget" if device else "METRIC_TEMPORARIES (before)"
            _, one = test_path._stacked_kernel_ops(
                patch, 1, True, device_sub_blocks=device
            )
            _, stack = test_path._stacked_kernel_ops(
                patch, 16, True, device_sub_blocks=device
            )
            yield (
                f"path kernel, Adam metric, 4,096 rows, sub-blocks: {name}",
                one,
                stack,
            )
    finally:
        patch.undo()


def _kernel_seconds(est, X, policy, sizing):
    """CPU seconds of one metric kernel: the CPU grid, or ``policy`` free bytes.

    ``sizing`` "device" binds the engine under the policy (its sub-blocks
    take the device budget's quarter); "shapes" hides the budget from the
    engine, which then sizes them as on the CPU (``METRIC_TEMPORARIES``).
    """
    real = _structured.device_budget
    if sizing == "shapes":
        _structured.device_budget = lambda device: None
    try:
        start = time.process_time()
        with device_policy(policy) if policy else nullcontext():
            K = path_kernel(est.module_, est.trajectory_, X)
        return time.process_time() - start, K
    finally:
        _structured.device_budget = real


def _timing(n_rows, hidden, nodes, repeats, free_bytes):
    """The metric kernel's CPU seconds: the CPU grid, then the forced device policy."""
    torch.set_num_threads(1)
    rng = np.random.RandomState(0)
    X = rng.randn(n_rows, 64).astype(np.float32)
    y = np.sin(X[:, :10])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = PathKernelRegressor(
            hidden, solver="adam", max_iter=2, kernel_nodes=nodes, random_state=0
        ).fit(X, y)
    cases = {
        "cpu grid": (None, "device"),
        "policy, device sub-blocks": (free_bytes, "device"),
        "policy, shapes-only sub-blocks": (free_bytes, "shapes"),
    }
    best, results = dict.fromkeys(cases, np.inf), {}
    for _ in range(repeats):  # alternating, in one process
        for name, (policy, sizing) in cases.items():
            seconds, results[name] = _kernel_seconds(est, X, policy, sizing)
            best[name] = min(best[name], seconds)
    cpu = results["cpu grid"]
    gap = max(np.abs(K - cpu).max() for K in results.values()) / np.abs(cpu).max()
    base = best["cpu grid"]
    print(
        f"| {n_rows} rows, MLP 64-{'-'.join(map(str, hidden))}-10, "
        f"{len(est.trajectory_.kernel_nodes())} nodes | {base:.3f} s | "
        + " | ".join(
            f"{best[n]:.3f} s ({base / best[n]:.2f}x)" for n in list(cases)[1:]
        )
        + f" | {gap:.1e} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--metric", action="store_true")
    parser.add_argument("--timing", action="store_true")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--free-gib", type=float, default=4.0)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.timing:
        print(
            "| metric kernel (float32, 1 thread, CPU seconds, best of "
            f"{args.repeats}) | CPU grid | device policy forced | the policy with "
            "shapes-only sub-blocks | max relative gap |"
        )
        print("|---|---:|---:|---:|---:|")
        for hidden in ((256, 256), (64, 64)):
            _timing(args.rows, hidden, 4, args.repeats, int(args.free_gib * 2**30))
        return
    print(
        "| work (W2, float32, 16 checkpoints, device policy) | ops/checkpoint, "
        "one each | stack of 16 | ratio | launches, one each | stack of 16 | "
        "ratio | host waits |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, a, b in _metric_rows() if args.metric else _rows():
        waits = "none" if not (a.synchronising or b.synchronising) else "some"
        print(
            f"| {name} | {a.total / 16:.1f} | {b.total / 16:.1f} | "
            f"{a.total / b.total:.1f}x | {a.launches / 16:.1f} | "
            f"{b.launches / 16:.1f} | {a.launches / b.launches:.1f}x | {waits} |"
        )


if __name__ == "__main__":
    main()
