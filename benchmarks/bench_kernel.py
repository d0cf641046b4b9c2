"""Time the Jacobian engines side by side, in one process, on the same paths.

Workloads (issue 3):

- W1: tangent kernel at one checkpoint, MLP 64-256-256-1 tanh, n = 1000.
- W2: path kernel on ``load_digits`` (n = 1797, 10 logits), MLP 64-256-256-10
  tanh, 50 checkpoints.
- W3: MLP 64-256-256-10 tanh, n = 500, one checkpoint, traced and full
  (n x n x 10 x 10) kernels.

Engines: (a) "jacobian" (torch.func vmap + jacrev, contracted), (b) "ntk_vp"
(NTK-vector products), (c) "structured", (d) a per-example autograd loop
(the test oracle; small n only). For each: seconds, peak memory above the
process baseline (RSS sampled every millisecond), the largest relative
difference to the reference (the autograd loop where it runs, else the
Jacobian engine), and the fraction of the structured method's FLOP lower
bound reached, against this machine's float32 matmul rate measured in the
same run.

Usage::

    python benchmarks/bench_kernel.py            # all workloads
    python benchmarks/bench_kernel.py --quick    # smaller sizes, a smoke test
"""

import argparse
import os
import platform
import sys
import threading
import time
import warnings
from unittest import mock

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

from sklearn_pathkernel import PathKernelClassifier, path_kernel, tangent_kernel
from sklearn_pathkernel._kernels._path import kernel_points, weighted_kernel_sum
from sklearn_pathkernel._model._network import make_mlp
from sklearn_pathkernel._training._loop import TrainingOptions, train
from sklearn_pathkernel._training._losses import SOFTMAX_CROSS_ENTROPY
from sklearn_pathkernel._training._trajectory import Trajectory

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from _oracle import tangent_kernel_reference  # noqa: E402

# Where the engines run; --device cuda moves the networks and data there.
DEVICE = torch.device("cpu")


class PeakRSS:
    """Peak memory above the level at entry: host RSS sampled in a thread, or
    the CUDA allocator's peak when the benchmark runs on a GPU."""

    def __enter__(self):
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._cuda_base = torch.cuda.memory_allocated()
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def mib(self):
        if DEVICE.type == "cuda":
            return (torch.cuda.max_memory_allocated() - self._cuda_base) / 2**20
        return (self.peak - self.base) / 2**20


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def matmul_rate(device, size=2048, repeats=10):
    """Measured float32 matmul FLOP/s on ``device``."""
    A = torch.randn(size, size, device=device)
    A @ A
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        A @ A
    _sync(device)
    return repeats * 2 * size**3 / (time.perf_counter() - start)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def structured_flops(widths, n, m, n_checkpoints, symmetric, trace=True):
    """FLOPs the structured method needs: its Gram products and its states.

    Per pair of rows and checkpoint, each layer costs ``2 (h_in + 1)`` for the
    input Gram (the first layer's once for all checkpoints) and
    ``2 O h_out`` for the signal Gram (``2 O^2 h_out`` for the full kernel;
    nothing for the output layer, whose signals are the identity), plus 2 for
    the elementwise product and sum. Symmetric kernels count one
    triangle. States: a forward pass (``2 d`` per row) and the backward pass
    of O signals (``2 O d`` per row), for the rows of X and of Y.
    """
    n_outputs = widths[-1]
    pairs = n * (n + 1) / 2 if symmetric else n * m
    rows = n if symmetric else n + m
    d = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))
    per_pair = 0.0
    last = len(widths) - 2
    for layer, (h_in, h_out) in enumerate(zip(widths[:-1], widths[1:])):
        input_gram = 0 if layer == 0 else 2 * (h_in + 1)
        # The output layer's signals are the identity: no product needed.
        signal = (
            0 if layer == last else 2 * (n_outputs if trace else n_outputs**2) * h_out
        )
        per_pair += input_gram + signal + 2
    first_layer = 2 * (widths[0] + 1) * pairs
    states = rows * 2 * d * (1 + n_outputs)
    return n_checkpoints * (pairs * per_pair + states) + first_layer


def run(label, fn, reference=None, repeats=1):
    """Best of ``repeats`` timings (this is a shared machine), peak memory."""
    seconds = np.inf
    with PeakRSS() as memory:
        for _ in range(repeats):
            start = time.perf_counter()
            K = fn()
            seconds = min(seconds, time.perf_counter() - start)
    error = (
        float(np.abs(K - reference).max() / np.abs(reference).max())
        if reference is not None
        else float("nan")
    )
    return {
        "label": label,
        "seconds": seconds,
        "peak_mib": memory.mib,
        "rel_error": error,
        "K": K,
    }


def report(title, rows, flops, rate):
    print(f"\n### {title}\n")
    print(f"structured FLOP lower bound: {flops / 1e9:.2f} GFLOP\n")
    print("| engine | seconds | peak MiB | max rel. diff. | of FLOP bound | vs (a) |")
    print("|---|---:|---:|---:|---:|---:|")
    base = next((r["seconds"] for r in rows if r["label"].startswith("(a)")), None)
    for r in rows:
        fraction = flops / r["seconds"] / rate
        speedup = f"{base / r['seconds']:.1f}x" if base else "-"
        print(
            f"| {r['label']} | {r['seconds']:.3f} | {r['peak_mib']:.0f} | "
            f"{r['rel_error']:.1e} | {fraction:.1%} | {speedup} |"
        )


def w1(rate, n, loop_n):
    gen = torch.Generator().manual_seed(0)
    net = make_mlp(64, 1, (256, 256), "tanh", generator=gen).to(DEVICE)
    X = torch.randn(n, 64, generator=gen).to(DEVICE)
    params = {k: v.detach() for k, v in net.named_parameters()}
    tangent_kernel(net, params, X[:8], engine="structured")  # warm-up
    rows = [
        run(
            "(c) structured",
            lambda: tangent_kernel(net, params, X, engine="structured"),
            repeats=5,
        )
    ]
    reference = rows[0]["K"]
    rows.append(
        run(
            "(a) jacobian",
            lambda: tangent_kernel(net, params, X, engine="jacobian"),
            reference,
        )
    )
    rows.append(
        run(
            "(b) ntk_vp",
            lambda: tangent_kernel(net, params, X, engine="ntk_vp"),
            reference,
        )
    )
    rows[0]["rel_error"] = rows[1]["rel_error"]
    loop = run(
        f"(d) autograd loop, n={loop_n}",
        lambda: tangent_kernel_reference(net, params, X[:loop_n]),
        reference[:loop_n, :loop_n],
    )
    small = run(
        "(c)", lambda: tangent_kernel(net, params, X[:loop_n], engine="structured")
    )
    report(
        f"W1: tangent kernel, MLP 64-256-256-1 tanh, n={n}",
        rows,
        structured_flops([64, 256, 256, 1], n, n, 1, True),
        rate,
    )
    print(
        f"\n(d) per-example autograd loop (one backward pass per row and output, "
        f"then one contraction) on the first {loop_n} rows only: "
        f"{loop['seconds']:.3f} s against {small['seconds']:.4f} s for (c) on the "
        f"same rows ({loop['seconds'] / small['seconds']:.0f}x); max rel. diff. "
        f"to (c) {loop['rel_error']:.1e}."
    )


def w2(rate, n_checkpoints, jacobian_checkpoints):
    """W2. (a) needs about 2.7 TFLOP per checkpoint here (O d = 850,000
    numbers per pair of rows), so it runs on the first ``jacobian_checkpoints``
    only, next to (c) on the same checkpoints, and its time is scaled linearly
    to all of them (cost is linear in the number of checkpoints; the scaling
    table checks that for (c))."""
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    clf = PathKernelClassifier(
        (256, 256),
        max_iter=n_checkpoints,
        tol=0,
        device=DEVICE,
        random_state=0,
        quadrature="left",
        kernel_nodes=None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    module, trajectory = clf.module_, clf.trajectory_
    assert len(trajectory) == n_checkpoints
    path_kernel(module, trajectory, X[:64], engine="structured")  # warm-up
    rate = matmul_rate(DEVICE)  # again, next to the measurement it scales
    rows = [
        run("(c) structured", lambda: path_kernel(module, trajectory, X), repeats=3)
    ]

    def first_checkpoints(engine):
        return weighted_kernel_sum(
            module,
            kernel_points(trajectory)[:jacobian_checkpoints],
            X,
            engine=engine,
            parameter_names=trajectory.parameter_names,
        )

    partial = run("(c)", lambda: first_checkpoints("structured"))
    jac = run("(a)", lambda: first_checkpoints("jacobian"), partial["K"])
    rows[0]["rel_error"] = jac["rel_error"]
    jac["seconds"] *= n_checkpoints / jacobian_checkpoints
    jac["label"] = (
        f"(a) jacobian ({jacobian_checkpoints} checkpoint timed, "
        f"x{n_checkpoints // jacobian_checkpoints})"
    )
    rows.append(jac)
    rate = max(rate, matmul_rate(DEVICE))  # the better of before and after
    report(
        f"W2: path kernel, load_digits n={len(X)}, MLP 64-256-256-10 tanh, "
        f"{n_checkpoints} checkpoints (matmul rate next to it: {rate / 1e9:.1f} "
        "GFLOP/s)",
        rows,
        structured_flops([64, 256, 256, 10], len(X), len(X), n_checkpoints, True),
        rate,
    )


def scaling(sizes, checkpoint_counts):
    """Seconds of (c) over n and the number of checkpoints."""
    gen = torch.Generator().manual_seed(0)
    net = make_mlp(64, 1, (256, 256), "tanh", generator=gen).to(DEVICE)
    X = torch.randn(max(sizes), 64, generator=gen).to(DEVICE)
    params = {k: v.detach() for k, v in net.named_parameters()}
    print("\n### Scaling of (c): MLP 64-256-256-1, symmetric path kernel\n")
    print("| n | checkpoints | seconds | ns per (pair x checkpoint) |")
    print("|---:|---:|---:|---:|")
    for n in sizes:
        for count in checkpoint_counts:
            points = [(1.0, lambda: params, lambda: None)] * count
            start = time.perf_counter()
            weighted_kernel_sum(net, points, X[:n], parameter_names=list(params))
            seconds = time.perf_counter() - start
            per = seconds / (n * n / 2) / count * 1e9
            print(f"| {n} | {count} | {seconds:.3f} | {per:.2f} |")


def recording(repeats=3):
    """What recording the path costs in training.

    Three runs of the same gradient descent on the same network: fit's loop
    as it is ("recording"); the same loop with the trajectory's recording
    calls made no-ops ("not recording"), which isolates the recording; and,
    for context, a plain loop with nothing but forward, backward and update
    (fit's loop also checks every step for divergence).
    """
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(StandardScaler().fit_transform(X), dtype=torch.float32)
    Y = torch.nn.functional.one_hot(torch.tensor(y)).float()
    print("\n### Recording overhead in training, load_digits\n")
    print(
        "| network | batch | steps | plain loop s | not recording s | recording s "
        "| recording / not recording |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for hidden, batch_size, epochs in [
        ((100,), None, 200),
        ((256, 256), None, 50),
        ((100,), 64, 10),
    ]:

        def fresh():
            gen = torch.Generator().manual_seed(0)
            return make_mlp(64, 10, hidden, "tanh", generator=gen)

        def plain():
            net = fresh()
            params = list(net.parameters())
            gen = torch.Generator().manual_seed(0)
            for _ in range(epochs):
                order = torch.randperm(len(X), generator=gen)
                for batch in order.split(batch_size or len(X)):
                    out = net(X[batch])
                    loss = torch.nn.functional.cross_entropy(out, Y[batch])
                    grads = torch.autograd.grad(loss, params)
                    with torch.no_grad():
                        for p, g in zip(params, grads):
                            p.sub_(0.1 * g)

        def recorded():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                train(
                    fresh(),
                    X,
                    Y,
                    SOFTMAX_CROSS_ENTROPY,
                    sample_weight=torch.ones(len(X)),
                    options=TrainingOptions(
                        learning_rate_init=0.1,
                        max_iter=epochs,
                        batch_size=batch_size,
                        tol=0.0,
                        n_iter_no_change=10**9,
                    ),
                    generator=torch.Generator().manual_seed(0),
                )

        def not_recorded():
            with (
                mock.patch.object(Trajectory, "_append_step", _no_op),
                mock.patch.object(Trajectory, "_set_final", _no_op),
            ):
                recorded()

        times = {}
        runs = (("plain", plain), ("off", not_recorded), ("on", recorded))
        for name, fn in runs * repeats:
            start = time.perf_counter()
            fn()
            times[name] = min(times.get(name, np.inf), time.perf_counter() - start)
        steps = epochs * (1 if batch_size is None else -(-len(X) // batch_size))
        print(
            f"| 64-{'-'.join(map(str, hidden))}-10 | {batch_size or 'full'} | "
            f"{steps} | {times['plain']:.3f} | {times['off']:.3f} | "
            f"{times['on']:.3f} | {times['on'] / times['off']:.2f} |"
        )


def _no_op(*args, **kwargs):
    pass


def w3(rate, n):
    gen = torch.Generator().manual_seed(0)
    net = make_mlp(64, 10, (256, 256), "tanh", generator=gen).to(DEVICE)
    X = torch.randn(n, 64, generator=gen).to(DEVICE)
    params = {k: v.detach() for k, v in net.named_parameters()}
    for trace in (True, False):
        rows = [
            run(
                "(c) structured",
                lambda: tangent_kernel(
                    net, params, X, engine="structured", trace=trace
                ),
                repeats=5,
            )
        ]
        rows.append(
            run(
                "(a) jacobian",
                lambda: tangent_kernel(net, params, X, engine="jacobian", trace=trace),
                rows[0]["K"],
            )
        )
        rows[0]["rel_error"] = rows[1]["rel_error"]
        kind = "traced" if trace else "full 10 x 10"
        report(
            f"W3: MLP 64-256-256-10 tanh, n={n}, {kind}",
            rows,
            structured_flops([64, 256, 256, 10], n, n, 1, True, trace),
            rate,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(DEVICE)}")
    rate = matmul_rate(DEVICE)
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; float32 matmul "
        f"{rate / 1e9:.1f} GFLOP/s"
    )
    if args.quick:
        w1(rate, 200, 10)
        w3(rate, 50)
        scaling([100, 200], [1, 2])
        recording(repeats=1)
        return
    w1(rate, 1000, 40)
    w2(rate, 50, 1)
    w3(rate, 500)
    scaling([1000, 2000, 4000], [5, 10, 20])
    recording()


if __name__ == "__main__":
    main()
