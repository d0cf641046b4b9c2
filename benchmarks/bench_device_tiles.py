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

``--overlap`` times instead how a finished strip reaches the result
(``_compute/_transfer.py``): the path kernel of the same network (random
checkpoints, ``--overlap-rows`` rows, ``--checkpoints``) with the
``StripWriter`` against the write it replaced (``strip.cpu()``, written and
marked at once), alternating in one process, best of ``--repeats``; and the
hand-ins alone (strips already computed). On the CPU both are the same
synchronous write, so the ratio measures the component's own overhead; on a
CUDA device it is the overlap's gain.

Usage::

    python benchmarks/bench_device_tiles.py [--rows 4096 20000] [--free-gib 16 130]
    python benchmarks/bench_device_tiles.py --overlap [--device cuda]
        [--overlap-rows 20000] [--checkpoints 8] [--repeats 3]
"""

import argparse
import collections
import time
from contextlib import nullcontext

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sklearn_pathkernel._compute import _blocking
from sklearn_pathkernel._compute._result import open_result
from sklearn_pathkernel._compute._transfer import StripWriter
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


class PlainWriter:
    """The write ``StripWriter`` replaced: ``strip.cpu()``, written and marked."""

    def __init__(self, result, device, n_strips=None):
        self.result = result

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        pass

    def put(self, strip, r0, r1, c_start):
        self.result.array[r0:r1, c_start:] = strip.cpu().numpy()
        self.result.mark_done(r0, r1)


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best(runs, repeats, device):
    """Best seconds of each of ``runs`` (name -> callable), alternating, the
    order reversed every other repeat (what runs first pays for warming up).

    CPU seconds of this process on the CPU (a shared machine's load does not
    count), wall seconds on a GPU (what the overlap saves is waiting).
    """
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    best = dict.fromkeys(runs, float("inf"))
    for repeat in range(repeats):
        order = list(runs.items())
        for name, run in order if repeat % 2 == 0 else reversed(order):  # ABBA
            _synchronize(device)
            start = clock()
            run()
            _synchronize(device)
            best[name] = min(best[name], clock() - start)
    return best


def clock_name(device):
    return "wall s" if device.type == "cuda" else "CPU s"


def overlap(net, device, n, n_checkpoints, repeats):
    """The kernel, and the hand-ins alone, with each writer; prints ratios."""
    net = net.to(device)
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(n, 64, generator=generator).to(device)
    points = [
        (
            0.1,
            lambda k=k: {
                name: p.detach() + 0.01 * k for name, p in net.named_parameters()
            },
            lambda: None,
        )
        for k in range(n_checkpoints)
    ]
    names = [name for name, _ in net.named_parameters()]

    def kernel(writer):
        def run():
            before, _path.StripWriter = _path.StripWriter, writer
            try:
                _path.weighted_kernel_sum(net, points, X, parameter_names=names)
            finally:
                _path.StripWriter = before

        return run

    strips = [
        torch.randn(512, n - r0, dtype=torch.float64, generator=generator).to(device)
        for r0 in range(0, n, 512)
    ]
    result = open_result(
        None, (n, n), dtype=np.float64, fingerprint=None, what="K", remedy=""
    )

    def hand_ins(writer):
        def run():
            with writer(result, device) as sink:
                for k, strip in enumerate(strips):
                    r0 = 512 * k
                    sink.put(strip, r0, min(r0 + 512, n), r0)

        return run

    for what, make in (("kernel", kernel), ("hand-ins", hand_ins)):
        best = _best(
            {"plain": make(PlainWriter), "StripWriter": make(StripWriter)},
            repeats,
            device,
        )
        print(
            f"{what:8s} n={n} on {device.type} ({clock_name(device)}): "
            f"plain write {best['plain']:.3f} s, "
            f"StripWriter {best['StripWriter']:.3f} s "
            f"({best['StripWriter'] / best['plain']:.2f}x)"
        )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[4096, 20000])
    parser.add_argument("--free-gib", type=float, nargs="+", default=[16, 130])
    parser.add_argument(
        "--work",
        nargs="+",
        default=["kernel", "stacked", "diagonal", "sketch", "decompose"],
    )
    parser.add_argument("--overlap", action="store_true", help="time strip writes")
    parser.add_argument("--device", default="cpu", help="for --overlap")
    parser.add_argument("--overlap-rows", type=int, default=4096)
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 256),
        torch.nn.Tanh(),
        torch.nn.Linear(256, 256),
        torch.nn.Tanh(),
        torch.nn.Linear(256, 10),
    )
    if args.overlap:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error(f"--device {args.device}: torch finds no CUDA device.")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
        overlap(net, device, args.overlap_rows, args.checkpoints, args.repeats)
        return
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
