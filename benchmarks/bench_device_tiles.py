"""Torch operations per checkpoint of W2's work: the CPU grid against the device grid.

Issue 21 items 2 and 4, measurable without a GPU: a ``TorchDispatchMode``
counts the operations that one checkpoint's tasks dispatch over every row
block for a W2-shaped network (MLP 64-256-256-10 tanh, structured engine,
float32), on meta tensors so that nothing is computed:

- ``kernel``: the symmetric path kernel's strips (``_strip_part``, statics
  cached);
- ``stacked``: the same with 16 checkpoints, stacked on the device grid as
  many at a time as the budget holds (``_checkpoint_tasks``,
  ``_stacked_strip_part``), the strip's weighted sums included;
- ``diagonal``: ``path_kernel_diagonal``'s tiles (``_diagonal_part``);
- ``sketch``: ``path_features``' Kronecker sketch, 100 components
  (``_sketch_part``, the checkpoint's factors drawn beforehand);
- ``decompose``: the first-order decomposition's engine route
  (``_checkpoint_part``) of the query rows against 5,000 training rows, one
  step of a 128-row batch per checkpoint (the static Gram cached).

The device grid is forced on with ``device_policy`` and a free-memory figure.
Every operation is a kernel launch on a GPU; the counts also list any
operation that would wait for the device (``_local_scalar_dense``, ``item``,
``nonzero``, a copy to the host).

Usage::

    python benchmarks/bench_device_tiles.py [--rows 4096 20000] [--free-gib 16 130]
"""

import argparse
import collections
from contextlib import nullcontext

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sklearn_pathkernel._compute import _blocking
from sklearn_pathkernel._explain import _decompose
from sklearn_pathkernel._kernels import _features, _path
from sklearn_pathkernel._training._trajectory import Step
from sklearn_pathkernel.engines import select_engine

WAITS = {"_local_scalar_dense", "item", "nonzero", "masked_select", "_unique2"}
# Operations that only describe memory already there: no kernel launch on a GPU.
VIEWS = {
    "view", "_unsafe_view", "expand", "permute", "transpose", "t", "slice",
    "unsqueeze", "squeeze", "select", "as_strided", "alias", "detach", "_reshape_alias",
}  # fmt: skip
N_TRAIN, BATCH, COMPONENTS = 5000, 128, 100


class Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _counted(calls):
    """Runs each call twice, counting the second: what a block caches
    (``Shared.cached``: its statics, the checkpoint's factors) is computed
    once per call, not at every checkpoint."""
    counter = Counter()
    for call in calls:
        call()
        with counter:
            call()
    return counter.ops


def kernel(bound, params, X):
    grid = _path._plan_grid(bound, 10, torch.float32, X.device)
    work = _path._Work(bound, X, X, True, True, (), X.device, **grid)
    blocks = _path._row_blocks(work, None)
    calls = [lambda b=b: _path._strip_part(work, *b, params, None) for b in blocks]
    return work.tile, _counted(calls)


def kernel_stacked(bound, params, X, n_checkpoints=16):
    """The kernel's strips with its checkpoints stacked (``_checkpoint_tasks``).

    Counts each strip's tasks and the strip's weighted sums, per checkpoint.
    """
    grid = _path._plan_grid(bound, 10, torch.float32, X.device)
    work = _path._Work(bound, X, X, True, True, (), X.device, **grid)
    blocks = _path._row_blocks(work, None)
    points = [(0.1, lambda: params, lambda: None)] * n_checkpoints
    tasks = _path._checkpoint_tasks(work, points, max(b - a for a, b in blocks))
    counter = Counter()
    for r0, r1 in blocks:
        strip = torch.zeros(r1 - r0, X.shape[0], device=X.device)
        for checkpoint, weight in zip(tasks.checkpoints, tasks.weights):
            tasks.function(work, r0, r1, *checkpoint())  # the statics
            with counter:
                for (a0, a1, b0, b1), part in tasks.function(
                    work, r0, r1, *checkpoint()
                ):
                    _path._add_weighted(strip[a0 - r0 : a1 - r0, b0:b1], part, weight)
    stacked = len(points) // len(tasks.weights)
    ops = collections.Counter(
        {name: count / n_checkpoints for name, count in counter.ops.items()}
    )
    return f"{work.tile}, {stacked} stacked", ops


def diagonal(bound, params, X):
    tile = _blocking.tile_within_budget(None, bound.bytes_per_row(10, 4), X.device)
    rows = _path._Rows(bound=bound, X_t=X, tile=tile, device=X.device)
    blocks = _path.row_blocks(X.shape[0], tile)
    return tile, _counted(
        [lambda b=b: _path._diagonal_part(rows, *b, params, None) for b in blocks]
    )


def sketch(bound, params, X):
    shapes = bound.sketch_shapes(10)
    tile, groups = _features.plan(bound, shapes, 10, 4, COMPONENTS, None, X.device)
    work = _features._Sketch(bound, X, tile, X.device, shapes, groups, COMPONENTS, 0)
    blocks = _features.row_blocks(X.shape[0], tile)
    return tile, _counted(
        [
            lambda b=b: _features._sketch_part(work, *b, 0, 1.0, params, None)
            for b in blocks
        ]
    )


def decompose(bound, params, X, net):
    X_train = torch.empty(N_TRAIN, X.shape[1], device=X.device)
    per_row = bound.bytes_per_row(10, 4) * 2 + N_TRAIN * 10 * (16 + 3 * 4)
    block = _blocking.tile_within_budget(None, per_row, X.device)
    walk = _decompose._Walk(net, bound, X_train, X, [0.0], [1.0], 0.0)
    step = Step(
        0.1,
        torch.arange(BATCH),
        torch.full((BATCH,), 1.0 / BATCH, device=X.device),
        torch.empty(BATCH, 10, device=X.device),
    )
    blocks = _decompose.row_blocks(X.shape[0], block, tiles_per_block=1)
    calls = [
        lambda b=b: _decompose._checkpoint_part(walk, *b, params, [(step, None)])
        for b in blocks
    ]
    return block, _counted(calls)


WORK = {
    "kernel": kernel,
    "stacked": kernel_stacked,
    "diagonal": diagonal,
    "sketch": sketch,
}


def per_checkpoint(net, what, n, free_bytes):
    X = torch.empty(n, 64, device="meta")
    params = {k: p.detach().to("meta") for k, p in net.named_parameters()}
    bound = select_engine("structured", net, list(params), example=torch.zeros(1, 64))
    with _blocking.device_policy(free_bytes) if free_bytes else nullcontext():
        if what == "decompose":
            return decompose(bound, params, X, net)
        return WORK[what](bound, params, X)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[4096, 20000])
    parser.add_argument("--free-gib", type=float, nargs="+", default=[16, 130])
    parser.add_argument(
        "--work",
        nargs="+",
        default=["kernel", "stacked", "diagonal", "sketch", "decompose"],
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 256),
        torch.nn.Tanh(),
        torch.nn.Linear(256, 256),
        torch.nn.Tanh(),
        torch.nn.Linear(256, 10),
    )
    for what in args.work:
        for n in args.rows:
            for free in [None, *args.free_gib]:
                tile, ops = per_checkpoint(net, what, n, free and int(free * 2**30))
                policy = "CPU grid" if free is None else f"device, {free:g} GiB free"
                waits = sum(ops[w] for w in WAITS)
                launches = sum(c for o, c in ops.items() if o not in VIEWS)
                print(
                    f"{what:9s} n={n:6d} {policy:24s} tile {tile!s:>5}: "
                    f"{sum(ops.values()):6g} ops/checkpoint "
                    f"({launches:g} not views), "
                    f"{ops['mm'] + ops['addmm'] + ops['bmm']:g} matmuls, "
                    f"{waits} synchronising"
                )


if __name__ == "__main__":
    main()
