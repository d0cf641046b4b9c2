"""Operations a hooks-engine checkpoint dispatches under the device policy (issue 21).

For workloads (a)-(d) of ``bench_hooks.py`` (random weights: counts do not
depend on the values), on ``--rows`` rows forced onto the device grid
(``_compute._blocking.device_policy``, free memory of an H200): the grid's
tile, and per checkpoint (one tile: one state, one contraction of the
symmetric kernel) the torch operations, launches (views excluded) and
operations that wait for the host (``tests/_dispatch.py``), for the traced
kernel, the full ``O x O`` kernel, the traced kernel in an Adam-like
metric and the diagonal. "before" is the route of the CPU's fixed grid
(ghost sub-blocks of ``GHOST_SCRATCH`` numbers, an embedding's matching
tokens searched), restored by treating the rows as the CPU's; "after" the
device route, its embedding's token matches found once per call by the
engine's ``static`` (not counted per checkpoint). Meta tensors where every
operation allows them; (b) searches its tokens, which needs values: real
rows there.

Then CPU seconds of a checkpoint, both routes side by side in one process
(real rows, ``--threads`` threads).

Usage::

    python benchmarks/bench_hooks_counts.py                 # counts + times
    python benchmarks/bench_hooks_counts.py --rows 2048 8192 --time-rows 1024
"""

import argparse
import collections
import contextlib
import os
import sys
import time

import torch

from sklearn_pathkernel._compute import _blocking
from sklearn_pathkernel.engines import select_engine
from sklearn_pathkernel.engines._hooks import _ghost

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from _dispatch import Dispatched  # noqa: E402
from bench_hooks import Bag, Encoder, ResidualMLP, cnn  # noqa: E402

H200_FREE = 140 * 2**30
MODES = ("traced", "full", "metric", "diagonal")


def network(name):
    """The workload's module (eval mode, seeded weights) and one example row."""
    torch.manual_seed(0)
    if name == "a":
        return cnn().eval(), torch.randn(1, 1, 8, 8)
    if name == "b":
        return Bag().eval(), torch.randint(0, 5000, (1, 32))
    if name == "c":
        return Encoder().eval(), torch.randn(1, 16, 64)
    return ResidualMLP().eval(), torch.randn(1, 64)


def rows_like(example, n, device):
    gen = torch.Generator().manual_seed(1)
    if example.dtype == torch.long:
        X = torch.randint(0, 5000, (n, *example.shape[1:]), generator=gen)
    else:
        X = torch.randn(n, *example.shape[1:], generator=gen)
    return X.to(device)


@contextlib.contextmanager
def route(before):
    """The CPU grid's route (``before``) or the device's, on any tensors."""
    if not before:
        yield
        return
    on_device = _ghost.on_device
    _ghost.on_device = lambda tensor: False
    try:
        yield
    finally:
        _ghost.on_device = on_device


def checkpoint(engine, params, X, mode, metric, static=None):
    """One checkpoint's work on one tile: its state and what the mode takes."""
    with torch.no_grad():
        state = engine.state(params, X, metric=metric if mode == "metric" else None)
        if mode == "diagonal":
            return engine.diagonal(state, X)
        return engine.contract(state, state, trace=mode != "full", static=static)


def static_of(engine, X, before):
    """The pair's static, once per call (the old route had none)."""
    with torch.no_grad():
        return None if before else engine.static(X, X)


def counted(name, n, mode, before):
    """``(tile, ops, launches, waits)`` of one checkpoint on ``n`` rows."""
    module, example = network(name)
    real = name == "b" and mode != "diagonal"  # searches tokens
    device = "cpu" if real else "meta"
    params = {k: p.detach().to(device) for k, p in module.named_parameters()}
    metric = {k: torch.rand_like(p) + 0.5 for k, p in params.items()}
    engine = select_engine("hooks", module, list(params), example=example)
    with _blocking.device_policy(H200_FREE):
        tile, _ = _blocking.grid(
            engine.bytes_per_row(engine.plan.n_outputs, 4), torch.device("cpu")
        )
        X = rows_like(example, min(n, tile), device)
        with route(before):
            static = static_of(engine, X, before) if mode != "diagonal" else None
            with Dispatched() as ops:
                checkpoint(engine, params, X, mode, metric, static)
    return tile, ops.total, ops.launches, collections.Counter(ops.synchronising)


def seconds(name, n, mode, before, repeats):
    module, example = network(name)
    params = {k: p.detach() for k, p in module.named_parameters()}
    metric = {k: torch.rand_like(p) + 0.5 for k, p in params.items()}
    engine = select_engine("hooks", module, list(params), example=example)
    X = rows_like(example, n, "cpu")
    best = float("inf")
    with _blocking.device_policy(H200_FREE), route(before):
        static = static_of(engine, X, before)  # once per call
        for _ in range(repeats):
            start = time.process_time()
            checkpoint(engine, params, X, mode, metric, static)
            best = min(best, time.process_time() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=["a", "b", "c", "d"])
    parser.add_argument("--rows", nargs="*", type=int, default=[2048, 8192])
    parser.add_argument("--modes", nargs="*", default=list(MODES))
    parser.add_argument("--time-rows", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"load {os.getloadavg()[0]:.1f}; device policy with "
        f"{H200_FREE / 2**30:.0f} GiB free\n"
    )
    print(
        "| workload | rows | tile | mode | ops before | ops after "
        "| launches before | launches after | ratio | waits after |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---|")
    for name in args.only:
        for n in args.rows:
            for mode in args.modes:
                tile, ops0, launches0, _ = counted(name, n, mode, True)
                _, ops1, launches1, waits = counted(name, n, mode, False)
                print(
                    f"| ({name}) | {n} | {tile} | {mode} | {ops0:,} | {ops1:,} | "
                    f"{launches0:,} | {launches1:,} | {launches0 / launches1:.1f}x | "
                    f"{dict(waits) or 'none'} |"
                )
    print(
        f"\nCPU seconds (process time, best of {args.repeats}) of one checkpoint "
        f"on {args.time_rows} real rows, both routes in this process:\n"
    )
    print("| workload | mode | before s | after s | after / before |")
    print("|---|---|---:|---:|---:|")
    for name in args.only:
        for mode in args.modes:
            s0 = seconds(name, args.time_rows, mode, True, args.repeats)
            s1 = seconds(name, args.time_rows, mode, False, args.repeats)
            print(f"| ({name}) | {mode} | {s0:.3f} | {s1:.3f} | {s1 / s0:.2f} |")


if __name__ == "__main__":
    main()
