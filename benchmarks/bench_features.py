"""Random path-kernel features: the old per-tile projection against the sketches.

On ``load_digits`` (1,797 rows, standardized), an MLP 64-256-256-10 tanh is
trained full batch for 50 steps (50 checkpoints, float32). Side by side in
one process:

1. **Throughput** of ``transform`` at ``n_components=1024``: the old code
   (reimplemented below as it was: the ``"jacobian"`` engine's per-example
   Jacobians times a Gaussian ``P_k`` regenerated for every row tile and
   checkpoint) against the new ``path_features`` (the structured engine's
   Kronecker sketch, every factor drawn once per call). The old code needs
   hours here: it is timed on one row tile for ``--old-checkpoints``
   checkpoints and extrapolated to every tile and checkpoint (its cost per
   tile and checkpoint does not depend on the checkpoint, and hardly on the
   rows in the tile: drawing ``P_k`` dominates).
2. **Accuracy**: ``||Z Z^T - K||_F / ||K||_F`` on ``--rows`` rows against the
   exact kernel, for the Kronecker sketch and for the Gaussian projection,
   at 256, 1,024 and 4,096 features, over ``--seeds`` seeds; then with a
   single checkpoint (``record_every=50``), the Kronecker sketch's worst
   case (three pieces carry the kernel, not 150). The Gaussian
   projection of this network would take hours; its error is sampled
   exactly instead: ``Z = P^T Phi(X)`` with Gaussian ``P`` has independent
   ``N(0, K / m)`` columns whatever the feature map, so
   ``Z = K^{1/2} G / sqrt(m)`` with Gaussian ``G`` has the very same
   distribution. A small network (64-32-10, 10 checkpoints) runs the real
   projection (``engine="jacobian"``) next to that sample, as a check.
3. **Cost against the exact kernel**: features of 1,000 rows against the
   symmetric exact kernel of the same 1,000 rows.
4. **The reported case**: the default ``PathKernelClassifier`` on 600 rows
   (30 steps), 100 rows transformed, old and new, next to the exact kernel.

Prints Markdown tables. Usage::

    python benchmarks/bench_features.py [--old-checkpoints 2] [--seeds 3]
        [--rows 500] [--repeats 2]
"""

import argparse
import math
import platform
import time
import warnings

import numpy as np
import torch
from bench_diagonal import best_of  # the script's folder is on sys.path
from bench_kernel import matmul_rate
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

from sklearn_pathkernel import PathKernelClassifier, path_kernel
from sklearn_pathkernel._compute._blocking import tile_within_budget
from sklearn_pathkernel._kernels._features import gaussian_factor, path_features
from sklearn_pathkernel.engines import JacobianEngine, select_engine

CPU = torch.device("cpu")


# -- the old code, as it was (the baseline) ----------------------------------
def old_projection_chunks(seed, k, n_rows, n_components):
    """The old ``P_k``: rows in chunks of 2048 from a generator seeded (seed, k)."""
    state = np.random.SeedSequence([int(seed), int(k)]).generate_state(1)[0]
    generator = torch.Generator().manual_seed(int(state))
    scale = 1.0 / math.sqrt(n_components)
    for start in range(0, n_rows, 2048):
        stop = min(start + 2048, n_rows)
        P = torch.randn(
            (stop - start, n_components), generator=generator, dtype=torch.float64
        )
        yield start, stop, P.mul_(scale)


def old_tile(module, trajectory, n_components):
    """The old code's rows per tile, and ``O d``."""
    engine = JacobianEngine(module, trajectory.parameter_names)
    n_outputs = module[-1].out_features
    block = tile_within_budget(
        None, engine.bytes_per_row(n_outputs, 4) + 2 * 8 * n_components
    )
    return block, n_outputs * engine.n_parameters


def old_path_features(module, trajectory, X, n_components, seed, checkpoints=None):
    """The old per-tile loop: Jacobians, and every ``P_k`` drawn again per tile."""
    X_t = torch.as_tensor(X, dtype=torch.float32)
    engine = JacobianEngine(module, trajectory.parameter_names)
    block, n_rows = old_tile(module, trajectory, n_components)
    checkpoints = range(len(trajectory.weights)) if checkpoints is None else checkpoints
    features = torch.zeros((len(X_t), n_components), dtype=torch.float64)
    for r0 in range(0, len(X_t), block):
        r1 = min(r0 + block, len(X_t))
        for k in checkpoints:
            weight = trajectory.weights[k]
            J = engine.state(trajectory.parameters(k), X_t[r0:r1]).flatten(1)
            projected = torch.zeros((r1 - r0, n_components))
            for c0, c1, P in old_projection_chunks(seed, k, n_rows, n_components):
                projected.addmm_(J[:, c0:c1], P.float())
            features[r0:r1] += math.sqrt(weight) * projected.double()
    return features.numpy()


# -- helpers -----------------------------------------------------------------
def relative_error(Z, K):
    return float(np.linalg.norm(Z @ Z.T - K) / np.linalg.norm(K))


def gaussian_projection_sample(K, m, seed):
    """``K^{1/2} G / sqrt(m)``: distributed exactly as a Gaussian projection."""
    values, vectors = np.linalg.eigh(K)
    root = vectors * np.sqrt(np.clip(values, 0, None))
    G = np.random.default_rng(seed).standard_normal((len(K), m))
    return root @ G / np.sqrt(m)


def expected_gaussian_error(K, m):
    """RMS relative error of a Gaussian projection: E||ZZ^T - K||^2 exactly."""
    d = np.diag(K)
    return float(np.sqrt((d.sum() ** 2 + (K**2).sum()) / m) / np.linalg.norm(K))


def draw_seconds(module, trajectory, n_components):
    """Time spent drawing the structured sketch's factors in one call."""
    engine = select_engine("auto", module, trajectory.parameter_names)
    shapes = engine.sketch_shapes(module[-1].out_features)
    start = time.perf_counter()
    for k in range(len(trajectory.weights)):
        for piece, heights in enumerate(shapes):
            for j, height in enumerate(heights):
                gaussian_factor(0, k, piece, j, height, n_components).float()
    return time.perf_counter() - start, sum(sum(h) for h in shapes)


def fit(X, y, hidden, max_iter, record_every=1):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return PathKernelClassifier(
            hidden,
            max_iter=max_iter,
            tol=0,
            record_every=record_every,
            random_state=0,
            quadrature="left",
            kernel_nodes=None,
        ).fit(X, y)


# -- the four parts ----------------------------------------------------------
def throughput(net, X, m, old_checkpoints):
    module, traj = net.module_, net.trajectory_
    n, n_checkpoints = len(X), int(np.count_nonzero(traj.weights))
    new_seconds, (Z, _) = best_of(
        1, lambda: path_features(module, traj, X, n_components=m, seed=0)
    )
    drawing, heights = draw_seconds(module, traj, m)
    # The old code on one row tile and a few checkpoints, extrapolated.
    tile, n_rows = old_tile(module, traj, m)
    old_seconds, _ = best_of(
        1,
        lambda: old_path_features(
            module, traj, X[:tile], m, 0, checkpoints=range(old_checkpoints)
        ),
    )
    per_tile_checkpoint = old_seconds / old_checkpoints
    old_total = per_tile_checkpoint * math.ceil(n / tile) * n_checkpoints
    print(
        f"\n### Throughput: transform of {n} rows, {n_checkpoints} checkpoints, "
        f"n_components={m}\n"
    )
    print(
        "| method | measured | seconds measured | seconds for all rows | "
        "rows / s | speed-up |"
    )
    print("|---|---|---:|---:|---:|---:|")
    print(
        f"| old: Jacobians x P_k drawn per tile (jacobian engine) | {tile} rows x "
        f"{old_checkpoints} checkpoints | {old_seconds:.1f} | {old_total:.0f} "
        f"(extrapolated) | {n / old_total:.3f} | 1x |"
    )
    print(
        f"| new: Kronecker sketch, factors drawn once (structured engine) | "
        f"{n} rows x {n_checkpoints} checkpoints | {new_seconds:.1f} | "
        f"{new_seconds:.1f} | {n / new_seconds:.1f} | "
        f"{old_total / new_seconds:.0f}x |"
    )
    print(
        f"\nOld row tile: {tile} rows (their Jacobians fill the budget); "
        f"{per_tile_checkpoint:.1f} s per tile and checkpoint, drawing "
        f"{n_rows} x {m} numbers each time. New: "
        f"{drawing:.1f} s of the {new_seconds:.1f} s draw the factors "
        f"({heights} x {m} numbers per checkpoint, float64 on the CPU)."
    )
    return Z


def accuracy(net, X, components, seeds, title):
    module, traj = net.module_, net.trajectory_
    K = path_kernel(module, traj, X)
    print(f"\n### Accuracy: {title}, {len(X)} rows, ||Z Z^T - K||_F / ||K||_F\n")
    print(
        "| n_components | Kronecker sketch | Gaussian projection (sampled) | "
        "Gaussian, expected | error ratio | variance ratio | sketch s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for m in components:
        seconds, kron = np.inf, []
        for seed in range(seeds):
            start = time.perf_counter()
            Z, _ = path_features(module, traj, X, n_components=m, seed=seed)
            seconds = min(seconds, time.perf_counter() - start)
            kron.append(relative_error(Z, K))
        gauss = [
            relative_error(gaussian_projection_sample(K, m, seed), K)
            for seed in range(max(seeds, 5))
        ]
        ratio = np.sqrt(np.mean(np.square(kron)) / np.mean(np.square(gauss)))
        print(
            f"| {m} | {np.mean(kron):.4f} ± {np.std(kron):.4f} | "
            f"{np.mean(gauss):.4f} ± {np.std(gauss):.4f} | "
            f"{expected_gaussian_error(K, m):.4f} | {ratio:.2f} | {ratio**2:.2f} | "
            f"{seconds:.1f} |"
        )
    return K


def small_network_check(X, y, components, seeds):
    """The real Gaussian projection next to its exact-distribution sample."""
    net = fit(X, y, (32,), 50, record_every=5)
    module, traj = net.module_, net.trajectory_
    K = path_kernel(module, traj, X)
    print(
        f"\n### Check on a small network: MLP 64-32-10, "
        f"{len(traj.weights)} checkpoints, {len(X)} rows\n"
    )
    print(
        "| n_components | Gaussian projection (jacobian engine) | "
        "sampled K^1/2 G | Kronecker sketch | projection s | sketch s |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for m in components:
        real, kron, t_real, t_kron = [], [], np.inf, np.inf
        for seed in range(seeds):
            start = time.perf_counter()
            Z, _ = path_features(
                module, traj, X, n_components=m, seed=seed, engine="jacobian"
            )
            t_real = min(t_real, time.perf_counter() - start)
            real.append(relative_error(Z, K))
            start = time.perf_counter()
            Z, _ = path_features(module, traj, X, n_components=m, seed=seed)
            t_kron = min(t_kron, time.perf_counter() - start)
            kron.append(relative_error(Z, K))
        sampled = [
            relative_error(gaussian_projection_sample(K, m, s), K) for s in range(5)
        ]
        print(
            f"| {m} | {np.mean(real):.4f} | {np.mean(sampled):.4f} | "
            f"{np.mean(kron):.4f} | {t_real:.1f} | {t_kron:.1f} |"
        )


def against_the_kernel(net, X, components, repeats):
    module, traj = net.module_, net.trajectory_
    kernel_seconds, _ = best_of(repeats, lambda: path_kernel(module, traj, X))
    print(
        f"\n### Features of {len(X)} rows against their exact "
        f"{len(X)} x {len(X)} kernel\n"
    )
    print("| method | seconds | / exact kernel |")
    print("|---|---:|---:|")
    print(
        f"| exact kernel (structured engine, one triangle) | {kernel_seconds:.1f} "
        "| 1.0x |"
    )
    for m in components:
        seconds, _ = best_of(
            repeats,
            lambda m=m: path_features(module, traj, X, n_components=m, seed=0),
        )
        print(
            f"| features, n_components={m} | {seconds:.1f} | "
            f"{seconds / kernel_seconds:.1f}x |"
        )


def reported_case(X, y, components, repeats):
    """The default classifier on 600 rows, 100 of them transformed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        net = PathKernelClassifier(
            max_iter=30, random_state=0, quadrature="left", kernel_nodes=None
        ).fit(X[:600], y[:600])
    module, traj = net.module_, net.trajectory_
    rows = X[:100]
    kernel_seconds, _ = best_of(repeats, lambda: path_kernel(module, traj, rows))
    print(
        f"\n### The reported case: default PathKernelClassifier (64-100-10), "
        f"600 rows, {len(traj.weights)} checkpoints; 100 rows\n"
    )
    print(f"Exact 100 x 100 kernel: {kernel_seconds:.3f} s.\n")
    print("| n_components | old s | new s | speed-up |")
    print("|---:|---:|---:|---:|")
    for m in components:
        old, _ = best_of(1, lambda m=m: old_path_features(module, traj, rows, m, 0))
        new, _ = best_of(
            repeats,
            lambda m=m: path_features(module, traj, rows, n_components=m, seed=0),
        )
        print(f"| {m} | {old:.2f} | {new:.3f} | {old / new:.0f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-checkpoints", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X).astype(np.float32)
    print(
        f"load_digits, {platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, float32; matmul rate "
        f"{matmul_rate(CPU, repeats=5) / 1e9:.0f} GFLOP/s"
    )
    reported_case(X, y, [64, 256], args.repeats)
    net = fit(X, y, (256, 256), 50)
    throughput(net, X, 1024, args.old_checkpoints)
    against_the_kernel(net, X[:1000], [256, 1024], args.repeats)
    accuracy(net, X[: args.rows], [256, 1024, 4096], args.seeds, "MLP 64-256-256-10")
    # The worst case for the Kronecker sketch: one checkpoint, three pieces.
    accuracy(
        fit(X, y, (256, 256), 50, record_every=50),
        X[: args.rows],
        [256, 1024, 4096],
        max(args.seeds, 5),
        "the same network, one checkpoint (record_every=50)",
    )
    small_network_check(X[: args.rows], y[: args.rows], [256, 1024], 2)
    print(f"\nMatmul rate at the end: {matmul_rate(CPU, repeats=5) / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
