"""The decomposition's backward walk (Adam) before and after it was shaped for a device.

Issue 21's workload for the walk: exact decomposition of an MLP
64-256-256-10 tanh trained by Adam, ``--queries`` query rows against
``--train`` training rows over ``--steps`` full-batch steps (the issue's
target is 50 x 5,000 x 50 on a GPU; the CPU defaults are smaller). Two parts,
``before`` (the package at ``--before``, exported by ``git archive`` and
imported beside this tree, as ``bench_recording.py`` does) and ``after``
(this tree) side by side in one process:

1. **CPU time** of ``decompose_path`` on the CPU, first order and exact,
   one thread, the two packages alternating, best of ``--repeats``; and
   whether their results are bit-identical (the CPU keeps its bits).
2. **Device-shaped counts** of one query block's walk under the device
   policy (``device_policy``, the free memory of an H200), on meta tensors,
   at the issue's full shape (``--device-queries`` etc.): kernel launches
   per step (operations other than views) and copies from the host per
   call, per step, and synchronising operations.

Usage::

    python benchmarks/bench_walk.py [--queries 10] [--train 1000] [--steps 4]
        [--repeats 2] [--before a0e26c7] [--device-queries 50]
        [--device-train 5000] [--device-steps 50]
"""

import argparse
import collections
import importlib
import os
import sys
import time
import warnings

import numpy as np
import torch
from bench_recording import before_package
from sklearn.exceptions import ConvergenceWarning

import sklearn_pathkernel
from sklearn_pathkernel import PathKernelClassifier
from sklearn_pathkernel._compute._blocking import device_policy, grid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from _dispatch import Dispatched  # noqa: E402

H200_FREE = 139 * 2**30


class Uploads(Dispatched):
    """:class:`Dispatched`, also counting copies from the host to the meta device."""

    def __init__(self):
        super().__init__()
        self.uploads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = kwargs.get("device")
        if (
            func.overloadpacket.__name__ == "_to_copy"
            and target is not None
            and torch.device(target).type == "meta"
            and args[0].device.type == "cpu"
        ):
            self.uploads += 1
        return super().__torch_dispatch__(func, types, args, kwargs)


def fit(n_train, n_queries, steps):
    """The workload's network, trained by Adam, and its query rows."""
    rng = np.random.RandomState(0)
    X = rng.randn(n_train + n_queries, 64)
    y = X[:, :10].argmax(axis=1)
    est = PathKernelClassifier(
        (256, 256),
        activation="tanh",
        solver="adam",
        learning_rate_init=1e-3,
        batch_size=n_train,
        max_iter=steps,
        tol=0,
        random_state=0,
        kernel_nodes=None,
        quadrature="left",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X[:n_train], y[:n_train])
    return est, X[n_train:]


def decomposer(package):
    return importlib.import_module(f"{package.__name__}._explain._decompose")


def cpu_times(packages, est, X_query, repeats):
    """CPU seconds (best of ``repeats``) of each package's decomposition."""
    X_train = torch.tensor(est._fit_X, dtype=torch.float32)
    Xq = torch.tensor(X_query, dtype=torch.float32)
    for exact in (False, True):
        best, results = collections.defaultdict(lambda: np.inf), {}
        for _ in range(repeats):
            for name, package in packages.items():
                start = time.process_time()
                machine = decomposer(package).decompose_path(
                    est.module_, est.trajectory_, X_train, Xq, exact=exact
                )
                best[name] = min(best[name], time.process_time() - start)
                results[name] = machine.contributions, machine.bias
        same = ""
        if len(results) == 2:
            (phi0, b0), (phi1, b1) = results.values()
            equal = np.array_equal(phi0, phi1) and np.array_equal(b0, b1)
            same = f"  bit-identical: {equal}"
        times = "  ".join(f"{name} {seconds:6.2f} s" for name, seconds in best.items())
        ratio = ""
        if len(best) == 2:
            ratio = f"  before/after {best['before'] / best['after']:.2f}x"
        form = "exact      " if exact else "first order"
        print(f"{form}  {times}{ratio}{same}")


def device_counts(packages, est, X_query):
    """Launches and host copies of one block's walk on meta tensors."""
    trajectory = est.trajectory_
    meta = {"dtype": torch.float32, "device": "meta"}
    X_train, Xq = torch.tensor(est._fit_X, **meta), torch.tensor(X_query, **meta)
    d = trajectory.n_parameters
    with device_policy(H200_FREE):
        rows = grid(d * (8 + 2 * 4), torch.device("meta"))[1]
    print(f"(training rows per block of per-example gradients: {rows})")
    for exact in (False, True):
        for name, package in packages.items():
            query_side = importlib.import_module(
                f"{package.__name__}._explain._query_side"
            )
            nodes, weights = decomposer(package)._quadrature(4 if exact else 0)
            walk = query_side.QueryWalk(
                module=est.module_,
                trajectory=trajectory,
                X_train=X_train,
                X=Xq,
                n_outputs=est.n_outputs_,
                nodes=nodes,
                node_weights=weights,
                exact=exact,
                rows=rows,
            )
            with device_policy(H200_FREE), Uploads() as counted:
                query_side.walk_block(walk, 0, Xq.shape[0])
            steps = trajectory.n_steps
            form = "exact      " if exact else "first order"
            print(
                f"{form}  {name:6s}  launches/step {counted.launches / steps:6.1f}"
                f"  host copies {counted.uploads:4d} ({counted.uploads / steps:.2f}"
                f"/step)  synchronising {len(counted.synchronising)}"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--before", default="a0e26c7")
    parser.add_argument("--device-queries", type=int, default=50)
    parser.add_argument("--device-train", type=int, default=5000)
    parser.add_argument("--device-steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    packages = {"before": before_package(args.before), "after": sklearn_pathkernel}
    packages = {name: p for name, p in packages.items() if p is not None}
    print(f"torch {torch.__version__}, 1 thread, {os.cpu_count()} cores")
    print(
        f"CPU: {args.queries} queries x {args.train} training rows x "
        f"{args.steps} steps, MLP 64-256-256-10 tanh, Adam, CPU seconds"
    )
    cpu_times(packages, *fit(args.train, args.queries, args.steps), args.repeats)
    print(
        f"Device policy ({H200_FREE / 2**30:.0f} GiB free), meta tensors: "
        f"{args.device_queries} queries x {args.device_train} training rows x "
        f"{args.device_steps} steps, one query block"
    )
    est, X_query = fit(args.device_train, args.device_queries, args.device_steps)
    device_counts(packages, est, X_query)


if __name__ == "__main__":
    main()
