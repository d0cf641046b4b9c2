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

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.preprocessing import StandardScaler

from sklearn_pathkernel import PathKernelClassifier, path_kernel, tangent_kernel
from sklearn_pathkernel._network import make_mlp
from sklearn_pathkernel._trajectory import Trajectory

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from _oracle import tangent_kernel_reference  # noqa: E402


class PeakRSS:
    """Peak resident memory above the level at entry, sampled in a thread."""

    def __enter__(self):
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
    ``2 O h_out`` for the signal Gram (``2 O^2 h_out`` for the full kernel),
    plus 2 for the elementwise product and sum. Symmetric kernels count one
    triangle. States: a forward pass (``2 d`` per row) and the backward pass
    of O signals (``2 O d`` per row), for the rows of X and of Y.
    """
    n_outputs = widths[-1]
    pairs = n * (n + 1) / 2 if symmetric else n * m
    rows = n if symmetric else n + m
    d = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))
    per_pair = 0.0
    for layer, (h_in, h_out) in enumerate(zip(widths[:-1], widths[1:])):
        input_gram = 0 if layer == 0 else 2 * (h_in + 1)
        signal = 2 * (n_outputs if trace else n_outputs**2) * h_out
        per_pair += input_gram + signal + 2
    first_layer = 2 * (widths[0] + 1) * pairs
    states = rows * 2 * d * (1 + n_outputs)
    return n_checkpoints * (pairs * per_pair + states) + first_layer


def run(label, fn, reference=None):
    with PeakRSS() as memory:
        start = time.perf_counter()
        K = fn()
        seconds = time.perf_counter() - start
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
    net = make_mlp(64, 1, (256, 256), "tanh", generator=gen)
    X = torch.randn(n, 64, generator=gen)
    params = {k: v.detach() for k, v in net.named_parameters()}
    tangent_kernel(net, params, X[:8], engine="structured")  # warm-up
    rows = [
        run(
            "(c) structured",
            lambda: tangent_kernel(net, params, X, engine="structured"),
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
    report(
        f"W1: tangent kernel, MLP 64-256-256-1 tanh, n={n}",
        rows,
        structured_flops([64, 256, 256, 1], n, n, 1, True),
        rate,
    )
    print(
        f"\n(d) per-example autograd loop on the first {loop_n} rows: "
        f"{loop['seconds']:.2f} s (max rel. diff. to (c) {loop['rel_error']:.1e}); "
        f"scaled to n={n} by n^2: {loop['seconds'] * (n / loop_n) ** 2:.0f} s"
    )


def w2(rate, n_checkpoints, engines):
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    clf = PathKernelClassifier(
        (256, 256), max_iter=n_checkpoints, tol=0, random_state=0
    ).fit(X, y)
    assert len(clf.trajectory_) == n_checkpoints
    rows = []
    for label, engine in engines:
        reference = rows[0]["K"] if rows else None
        rows.append(
            run(
                label,
                lambda: path_kernel(clf.module_, clf.trajectory_, X, engine=engine),
                reference,
            )
        )
    if len(rows) > 1:
        rows[0]["rel_error"] = rows[1]["rel_error"]
    report(
        f"W2: path kernel, load_digits n={len(X)}, MLP 64-256-256-10 tanh, "
        f"{n_checkpoints} checkpoints",
        rows,
        structured_flops([64, 256, 256, 10], len(X), len(X), n_checkpoints, True),
        rate,
    )
    return clf


def w3(rate, n):
    gen = torch.Generator().manual_seed(0)
    net = make_mlp(64, 10, (256, 256), "tanh", generator=gen)
    X = torch.randn(n, 64, generator=gen)
    params = {k: v.detach() for k, v in net.named_parameters()}
    for trace in (True, False):
        rows = [
            run(
                "(c) structured",
                lambda: tangent_kernel(
                    net, params, X, engine="structured", trace=trace
                ),
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
    args = parser.parse_args()
    rate = matmul_rate("cpu")
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; float32 matmul "
        f"{rate / 1e9:.1f} GFLOP/s"
    )
    if args.quick:
        w1(rate, 200, 10)
        w2(rate, 3, [("(c) structured", "structured"), ("(a) jacobian", "jacobian")])
        w3(rate, 50)
        return
    w1(rate, 1000, 40)
    w2(rate, 50, [("(c) structured", "structured"), ("(a) jacobian", "jacobian")])
    w3(rate, 500)


if __name__ == "__main__":
    main()
