"""Torch operations per checkpoint of W2's kernel: the CPU grid against the device grid.

Issue 21 item 4, measurable without a GPU: a ``TorchDispatchMode`` counts the
operations that one checkpoint's strips (``_strip_part``, statics cached)
dispatch for a W2-shaped kernel (MLP 64-256-256-10 tanh, structured engine,
float32, symmetric), on meta tensors so that nothing is computed. The device
grid is forced on with ``device_policy`` and a free-memory figure. Every
operation is a kernel launch on a GPU; the counts also list any operation that
would wait for the device (``_local_scalar_dense``, ``item``, a copy to the host).

Usage::

    python benchmarks/bench_device_tiles.py [--rows 4096 20000] [--free-gib 16 130]
"""

import argparse
import collections
from contextlib import nullcontext

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sklearn_pathkernel._compute import _blocking
from sklearn_pathkernel._kernels import _path
from sklearn_pathkernel.engines import select_engine

WAITS = {"_local_scalar_dense", "item"}


class Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def per_checkpoint(net, n, free_bytes):
    X = torch.empty(n, 64, device="meta")
    params = {k: p.detach().to("meta") for k, p in net.named_parameters()}
    bound = select_engine("structured", net, list(params), example=torch.zeros(1, 64))
    with _blocking.device_policy(free_bytes) if free_bytes else nullcontext():
        grid = _path._plan_grid(bound, 10, torch.float32, X.device)
        work = _path._Work(bound, X, X, True, True, (), X.device, **grid)
        blocks = _path._row_blocks(work, None)
    counter = Counter()
    for r0, r1 in blocks:
        _path._strip_part(work, r0, r1, params, None)
        with counter:
            _path._strip_part(work, r0, r1, params, None)
    return work.tile, len(blocks), counter.ops


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[4096, 20000])
    parser.add_argument("--free-gib", type=float, nargs="+", default=[16, 130])
    args = parser.parse_args()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 256),
        torch.nn.Tanh(),
        torch.nn.Linear(256, 256),
        torch.nn.Tanh(),
        torch.nn.Linear(256, 10),
    )
    for n in args.rows:
        for free in [None, *args.free_gib]:
            tile, strips, ops = per_checkpoint(net, n, free and int(free * 2**30))
            policy = "CPU grid" if free is None else f"device grid, {free:g} GiB free"
            waits = sum(ops[w] for w in WAITS)
            print(
                f"n={n:6d} {policy:28s} tile {tile:5d}, {strips} strip(s): "
                f"{sum(ops.values()):6d} ops/checkpoint, {ops['mm'] + ops['addmm']} "
                f"matmuls, {waits} synchronising"
            )


if __name__ == "__main__":
    main()
