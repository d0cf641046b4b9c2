"""The layer-hook engine against the Jacobian and NTK-vector-product engines.

Workloads (issue 12), each trained here by full-batch gradient descent and
recorded (one checkpoint per step):

- (a) CNN on ``load_digits`` as 1x8x8 images, n = 1797, 10 logits, 50
  checkpoints: conv 1->8 3x3, relu, conv 8->16 3x3, relu, 2x2 max-pool,
  linear 256->32, relu, linear 32->10.
- (b) embedding + mean-pool + MLP on generated token sequences of length 32
  (vocabulary 5000, width 32, MLP 32-64-1, binary), n = 1000, 20 checkpoints.
- (c) one ``TransformerEncoderLayer`` (d_model 64, 4 heads, feed-forward 128,
  batch first), mean-pooled into one output, on generated sequences of
  length 16, n = 500, 10 checkpoints.
- (d) residual MLP with LayerNorm on ``load_digits`` (64 -> 128, two blocks
  ``x + relu(W LN(x))``, -> 10), n = 1797, 50 checkpoints.

Every engine computes the same traced path kernel in one process. The hooks
engine runs every checkpoint; the Jacobian engine the first ``--checkpoints``
of them (its seconds are also scaled to all, since every checkpoint is the
same work; ``--hooks-checkpoints`` likewise limits the hooks engine on a
loaded machine); ``ntk_vp``, far slower, the first checkpoint on the first 128
rows against the hooks engine on the same. Seconds (best of one run: the
machine is shared), peak memory above the process baseline, and the largest
difference relative to the largest entry of the hooks engine's kernel.

Usage::

    python benchmarks/bench_hooks.py              # all four workloads
    python benchmarks/bench_hooks.py --quick      # small sizes, a smoke test
    python benchmarks/bench_hooks.py --only a d
    python benchmarks/bench_hooks.py --device cuda   # kernels on the GPU
    python benchmarks/bench_hooks.py --metric --only a   # in an Adam-like metric
"""

import argparse
import os
import platform
import sys
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.preprocessing import StandardScaler
from torch import nn

from sklearn_pathkernel._kernels._path import weighted_kernel_sum
from sklearn_pathkernel._training._loop import TrainingOptions, train
from sklearn_pathkernel._training._losses import (
    BINARY_LOGISTIC,
    SOFTMAX_CROSS_ENTROPY,
    SQUARED_ERROR,
)
from sklearn_pathkernel.engines import select_engine
from sklearn_pathkernel.engines._hooks import _metric

sys.path.insert(0, os.path.dirname(__file__))
from bench_kernel import PeakRSS  # noqa: E402

# Where the kernels run (--device); training is on the CPU either way.
DEVICE = torch.device("cpu")


class ResidualMLP(nn.Module):
    """``h = W0 x``, then ``h = h + relu(W_k LN_k(h))`` twice, then ``W_out h``."""

    def __init__(self, n_features=64, width=128, n_outputs=10, blocks=2):
        super().__init__()
        self.inp = nn.Linear(n_features, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(blocks))
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.out = nn.Linear(width, n_outputs)

    def forward(self, x):
        h = self.inp(x)
        for norm, layer in zip(self.norms, self.layers):
            h = h + torch.relu(layer(norm(h)))
        return self.out(h)


class Bag(nn.Module):
    """Token embeddings, mean over positions, then an MLP."""

    def __init__(self, vocabulary=5000, width=32):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, width)
        self.mlp = nn.Sequential(nn.Linear(width, 64), nn.Tanh(), nn.Linear(64, 1))

    def forward(self, tokens):
        return self.mlp(self.embedding(tokens).mean(dim=1))


class Encoder(nn.Module):
    """One transformer encoder layer, mean-pooled into one output."""

    def __init__(self, d_model=64, heads=4, feedforward=128):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            d_model, heads, feedforward, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(d_model, 1)

    def forward(self, x):
        return self.head(self.layer(x).mean(dim=1))


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def digits(n):
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)[:n]
    Y = torch.nn.functional.one_hot(torch.as_tensor(y[:n]), 10).float()
    return torch.tensor(X, dtype=torch.float32), Y


def workload(name, quick):
    """``(module, X, Y, loss, learning_rate_init, checkpoints)`` of one workload."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # default initialisation of the benchmark's modules
    if name == "a":
        X, Y = digits(300 if quick else 1797)
        X = X.reshape(-1, 1, 8, 8)
        return cnn(), X, Y, SOFTMAX_CROSS_ENTROPY, 0.1, 5 if quick else 50
    if name == "b":
        n = 200 if quick else 1000
        X = torch.randint(0, 5000, (n, 32), generator=gen)
        sentiment = torch.randn(5000, generator=gen)
        Y = (sentiment[X].mean(dim=1) > 0).float()[:, None]
        return Bag(), X, Y, BINARY_LOGISTIC, 0.5, 4 if quick else 20
    if name == "c":
        n = 100 if quick else 500
        X = torch.randn(n, 16, 64, generator=gen)
        Y = X[:, :, :4].mean(dim=(1, 2))[:, None]
        return Encoder(), X, Y, SQUARED_ERROR, 0.05, 2 if quick else 10
    X, Y = digits(300 if quick else 1797)
    return ResidualMLP(), X, Y, SOFTMAX_CROSS_ENTROPY, 0.1, 5 if quick else 50


def trained(name, quick):
    module, X, Y, loss, lr, checkpoints = workload(name, quick)
    module.eval()  # no dropout or batch statistics: kernels need eval mode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(
            module,
            X,
            Y,
            loss,
            sample_weight=torch.ones(len(X)),
            options=TrainingOptions(
                learning_rate_init=lr,
                max_iter=checkpoints,
                tol=0.0,
                n_iter_no_change=10**9,
            ),
            generator=torch.Generator().manual_seed(0),
        )
    return module, X, result.trajectory


def points(trajectory, k, metric=None):
    """The first ``k`` checkpoints as ``weighted_kernel_sum``'s points."""
    return [
        (float(w), lambda j=j: trajectory.parameters(j), lambda: metric)
        for j, w in enumerate(trajectory.weights[:k])
    ]


def timed(fn):
    """``(result, seconds, peak MiB)``: on CUDA the device's peak allocation.

    The host's resident memory says nothing of a GPU run's tensors, so on
    CUDA the peak is ``torch.cuda.max_memory_allocated`` above what was
    allocated before the call.
    """
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
        torch.cuda.reset_peak_memory_stats(DEVICE)
        before = torch.cuda.memory_allocated(DEVICE)
    with PeakRSS() as memory:
        start = time.perf_counter()
        K = fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)
        seconds = time.perf_counter() - start
    if DEVICE.type == "cuda":
        peak = torch.cuda.max_memory_allocated(DEVICE) - before
        return K, seconds, peak / 2**20
    return K, seconds, memory.mib


def kernel(module, trajectory, X, engine, k, metric=None):
    return weighted_kernel_sum(
        module,
        points(trajectory, k, metric),
        X,
        parameter_names=trajectory.parameter_names,
        engine=engine,
        device=DEVICE,
    )


def bench(name, quick, jacobian_checkpoints, hooks_checkpoints):
    module, X, trajectory = trained(name, quick)
    module, X = module.to(DEVICE), X.to(DEVICE)
    T = len(trajectory.weights)
    k = min(T, jacobian_checkpoints)
    t_all = min(T, hooks_checkpoints or T)
    names = trajectory.parameter_names
    bound = select_engine("auto", module, names, example=X[:1])
    d = sum(p.numel() for p in module.parameters())
    ghosts = [lay.prefix for lay in bound.plan.layers if lay.ghost]
    print(f"\n### ({name}) {type(module).__name__}: n = {len(X)}, T = {T}, d = {d}\n")
    print(
        f"auto engine: {bound.name!r}; ghost-form layers: {ghosts}; "
        f"instantiated numbers per output: {bound.plan.n_instantiated}\n"
    )
    kernel(module, trajectory, X[:8], "hooks", 1)  # warm-up
    K_all, s_all, m_all = timed(lambda: kernel(module, trajectory, X, "hooks", t_all))
    K_h, s_h, m_h = timed(lambda: kernel(module, trajectory, X, "hooks", k))
    K_j, s_j, m_j = timed(lambda: kernel(module, trajectory, X, "jacobian", k))
    scale = np.abs(K_h).max()
    rows = [
        ("hooks", t_all, s_all, m_all, 0.0, s_all * T / t_all),
        ("hooks", k, s_h, m_h, 0.0, s_h * T / k),
        ("jacobian", k, s_j, m_j, np.abs(K_j - K_h).max() / scale, s_j * T / k),
    ]
    small = X[:128]
    K_s, s_s, m_s = timed(lambda: kernel(module, trajectory, small, "hooks", 1))
    try:
        K_v, s_v, m_v = timed(lambda: kernel(module, trajectory, small, "ntk_vp", 1))
        err_v = f"{np.abs(K_v - K_s).max() / np.abs(K_s).max():.1e}"
    except Exception as exc:  # torch.func cannot take every module
        s_v, m_v, err_v = np.nan, np.nan, f"fails: {type(exc).__name__}"
    print("| engine | rows | checkpoints | seconds | peak MiB | max rel. diff. |")
    print("|---|---:|---:|---:|---:|---:|")
    for engine, kk, s, m, err, _ in rows:
        print(f"| {engine} | {len(X)} | {kk} | {s:.2f} | {m:.0f} | {err:.1e} |")
    print(f"| hooks | {len(small)} | 1 | {s_s:.2f} | {m_s:.0f} | 0 |")
    print(f"| ntk_vp | {len(small)} | 1 | {s_v:.2f} | {m_v:.0f} | {err_v} |")
    print(
        f"\nspeed-up over jacobian (same {k} checkpoint(s)): {s_j / s_h:.1f}x; "
        f"over ntk_vp (128 rows, 1 checkpoint): {s_v / s_s:.1f}x; "
        f"scaled to all {T} checkpoints: jacobian {s_j * T / k:.0f} s, "
        f"hooks {s_all * T / t_all:.1f} s"
    )


def adam_like_metric(module):
    """A random positive metric over three decades, as Adam's ``Ptilde`` is.

    (The training loop records SGD paths here; the cost of a metric does not
    depend on its values.)
    """
    gen = torch.Generator().manual_seed(1)
    return {
        n: (10.0 ** (3 * torch.rand(p.shape, generator=gen) - 2)).to(p)
        for n, p in module.named_parameters()
    }


def bench_metric(name, quick, checkpoints):
    """Hooks against jacobian on the same checkpoints, both in a metric."""
    module, X, trajectory = trained(name, quick)
    module, X = module.to(DEVICE), X.to(DEVICE)
    k = min(len(trajectory.weights), checkpoints)
    metric = adam_like_metric(module)
    bound = select_engine(
        "auto", module, trajectory.parameter_names, example=X[:1], metric=True
    )
    forms = {
        f"{term.layer.prefix}[{term.group}]": term.metric_form
        for term in bound.plan.ghosts
    }
    print(f"\n### ({name}) in an Adam-like metric: n = {len(X)}, {k} checkpoint(s)\n")
    print(f"auto engine: {bound.name!r}; ghost terms in a metric: {forms}\n")
    kernel(module, trajectory, X[:8], "hooks", 1, metric)  # warm-up
    K_p, s_p, m_p = timed(lambda: kernel(module, trajectory, X, "hooks", k))
    K_h, s_h, m_h = timed(lambda: kernel(module, trajectory, X, "hooks", k, metric))
    K_j, s_j, m_j = timed(lambda: kernel(module, trajectory, X, "jacobian", k, metric))
    # The cost rule's alternative: every such ghost term instantiated.
    rule = _metric.pairwise_is_cheaper
    _metric.pairwise_is_cheaper = lambda *args: False
    try:
        K_i, s_i, m_i = timed(lambda: kernel(module, trajectory, X, "hooks", k, metric))
    finally:
        _metric.pairwise_is_cheaper = rule
    err = np.abs(K_j - K_h).max() / np.abs(K_h).max()
    err_i = np.abs(K_i - K_h).max() / np.abs(K_h).max()
    print("| engine | metric | seconds | peak MiB | max rel. diff. |")
    print("|---|---|---:|---:|---:|")
    print(f"| hooks | none | {s_p:.2f} | {m_p:.0f} | |")
    print(f"| hooks | Adam-like | {s_h:.2f} | {m_h:.0f} | 0 |")
    print(f"| jacobian | Adam-like | {s_j:.2f} | {m_j:.0f} | {err:.1e} |")
    print(
        f"| hooks, all instantiated | Adam-like | {s_i:.2f} | {m_i:.0f} | {err_i:.1e} |"
    )
    print(
        f"\nin a metric, hooks over jacobian: {s_j / s_h:.1f}x; "
        f"hooks in a metric over hooks without: {s_h / s_p:.2f}x slower"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", default=["a", "b", "c", "d"])
    parser.add_argument(
        "--checkpoints", type=int, default=2, help="the Jacobian engine's"
    )
    parser.add_argument(
        "--hooks-checkpoints", type=int, default=None, help="default: all"
    )
    parser.add_argument(
        "--device", default="cpu", help="where the kernels run (cpu, cuda, cuda:1)"
    )
    parser.add_argument(
        "--metric",
        action="store_true",
        help="hooks against jacobian in an Adam-like metric, same checkpoints",
    )
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--device {args.device}: torch finds no CUDA device "
            "(torch.cuda.is_available() is False); run with --device cpu."
        )
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}"
    )
    for name in args.only:
        if args.metric:
            bench_metric(name, args.quick, args.checkpoints)
        else:
            bench(name, args.quick, args.checkpoints, args.hooks_checkpoints)


if __name__ == "__main__":
    main()
