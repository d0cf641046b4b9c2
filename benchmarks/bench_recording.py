"""What recording the path costs in training, before and after issue 21 item 3.

Issue 21's target: recording every step costs at most 1.15x plain training
(MLP 64-256-256-10, batch 128, 20 epochs). Until item 3 every recorded step
read numbers back from the device several times (its batch's weight sum, its
objective, whether ``g`` is finite, its record, Adam's preconditioner), so a
GPU waited for the host at every step. Now the steps are queued without
reading anything back and their checks are read once an epoch.

In one process, alternating, best of ``--repeats``, on ``load_digits``
(standardized, 1,797 rows, 15 steps an epoch), for sgd and Adam:

- ``plain``: forward, backward and a ``torch.optim`` step; nothing read back,
  nothing recorded;
- ``before``: ``train`` of the package at ``--before`` (a git revision,
  exported to a temporary directory and imported under another name; left
  out where git or the revision is not at hand, e.g. on a device machine
  without the history);
- ``after``: ``train`` of this checkout.

It also counts, with a ``TorchDispatchMode``, the value reads
(``aten::_local_scalar_dense``) dispatched inside one training step, besides
those of Adam's own step counters (CPU tensors on every device).

Usage::

    python benchmarks/bench_recording.py [--device cuda] [--repeats 3]
        [--before 8fbc975] [--threads 1]
"""

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler
from torch.utils._python_dispatch import TorchDispatchMode

import sklearn_pathkernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN, BATCH, EPOCHS = (256, 256), 128, 20
SOLVERS = {"sgd": ("sgd", 0.1), "adam": ("adam", 0.001)}


def before_package(revision):
    """The package at ``revision``, imported as ``sklearn_pathkernel_before``."""
    target = tempfile.mkdtemp(prefix="bench-recording-")
    try:
        archive = subprocess.run(
            ["git", "-C", ROOT, "archive", revision, "sklearn_pathkernel"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", target], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"(no 'before' column: {revision} not exported: {exc})")
        return None
    os.rename(
        os.path.join(target, "sklearn_pathkernel"),
        os.path.join(target, "sklearn_pathkernel_before"),
    )
    sys.path.insert(0, target)
    return importlib.import_module("sklearn_pathkernel_before")


def modules(package):
    """``(train, TrainingOptions, Solver, make_mlp, SOFTMAX)`` of ``package``."""
    name = package.__name__
    loop = importlib.import_module(f"{name}._training._loop")
    solvers = importlib.import_module(f"{name}._training._solvers")
    network = importlib.import_module(f"{name}._model._network")
    losses = importlib.import_module(f"{name}._training._losses")
    return (
        loop.train,
        loop.TrainingOptions,
        solvers.Solver,
        network.make_mlp,
        losses.SOFTMAX_CROSS_ENTROPY,
    )


def data(device):
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(StandardScaler().fit_transform(X), dtype=torch.float32)
    Y = torch.nn.functional.one_hot(torch.tensor(y)).float()
    return X.to(device), Y.to(device)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain(package, X, Y, solver_name):
    """Forward, backward and the optimiser's step: nothing read, nothing kept."""
    _, _, Solver, make_mlp, _ = modules(package)
    name, lr = SOLVERS[solver_name]
    net = make_mlp(64, 10, HIDDEN, "tanh", generator=torch.Generator().manual_seed(0))
    net = net.to(X.device)
    params = list(net.parameters())
    optimizer = Solver(name).optimizer(params, lr)
    generator = torch.Generator().manual_seed(0)
    for _ in range(EPOCHS):
        order = torch.randperm(len(X), generator=generator).to(X.device)
        for batch in order.split(BATCH):
            loss = torch.nn.functional.cross_entropy(net(X[batch]), Y[batch])
            for p, grad in zip(params, torch.autograd.grad(loss, params)):
                p.grad = grad
            optimizer.step()


def recorded(package, X, Y, solver_name, epochs=EPOCHS):
    """``train`` of ``package``, recording every step."""
    train, TrainingOptions, Solver, make_mlp, softmax = modules(package)
    name, lr = SOLVERS[solver_name]
    net = make_mlp(64, 10, HIDDEN, "tanh", generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return train(
            net.to(X.device),
            X,
            Y,
            softmax,
            sample_weight=torch.ones(len(X), device=X.device),
            options=TrainingOptions(
                learning_rate_init=lr,
                max_iter=epochs,
                solver=Solver(name),
                batch_size=BATCH,
                tol=0.0,
                n_iter_no_change=10**9,
            ),
            generator=torch.Generator().manual_seed(0),
        )


class Reads(TorchDispatchMode):
    """Counts ``aten::_local_scalar_dense`` but for Adam's host step counters."""

    def __init__(self):
        super().__init__()
        self.count, self.adam = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == "_local_scalar_dense":
            on_host_counter = args[0].device.type == "cpu" and args[0].ndim == 0
            if on_host_counter and args[0].dtype == torch.float32 and _in_optimizer():
                self.adam += 1
            else:
                self.count += 1
        return func(*args, **(kwargs or {}))


def _in_optimizer():
    frame = sys._getframe()
    while frame is not None:
        if os.sep + os.path.join("torch", "optim") in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def reads_per_step(package, X, Y, solver_name):
    """Value reads inside one training step (the mean over a short run)."""
    loop = importlib.import_module(f"{package.__name__}._training._loop")
    counter, step = Reads(), loop._GradientDescent._step

    def counted(self, *args):
        with counter:
            return step(self, *args)

    loop._GradientDescent._step = counted
    try:
        result = recorded(package, X, Y, solver_name, epochs=1)
    finally:
        loop._GradientDescent._step = step
    n = result.trajectory.n_steps
    return counter.count / n, counter.adam / n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", default="8fbc975")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    X, Y = data(device)
    before = before_package(args.before) if args.before else None
    runs = [("plain", plain, sklearn_pathkernel)]
    if before is not None:
        runs.append(("before", recorded, before))
    runs.append(("after", recorded, sklearn_pathkernel))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"load_digits, MLP 64-256-256-10 tanh, float32, batch {BATCH}, {EPOCHS} "
        f"epochs ({EPOCHS * -(-len(X) // BATCH)} steps), {where}, "
        f"{torch.get_num_threads()} thread(s), best of {args.repeats}\n"
    )
    print("| solver | variant | seconds | vs plain | reads a step | Adam's own |")
    print("|---|---|---:|---:|---:|---:|")
    for solver_name in SOLVERS:
        best = {name: np.inf for name, _, _ in runs}
        for _ in range(args.repeats):  # alternate, so that load hits all alike
            for name, fn, package in runs:
                synchronize(device)
                start = time.perf_counter()
                fn(package, X, Y, solver_name)
                synchronize(device)
                best[name] = min(best[name], time.perf_counter() - start)
        for name, _, package in runs:
            reads = " | "
            if name != "plain":
                reads = "{:.1f} | {:.1f}".format(
                    *reads_per_step(package, X, Y, solver_name)
                )
            print(
                f"| {solver_name} | {name} | {best[name]:.3f} | "
                f"{best[name] / best['plain']:.2f} | {reads} |"
            )


if __name__ == "__main__":
    main()
