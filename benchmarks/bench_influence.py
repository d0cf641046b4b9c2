"""Influence against Captum's TracInCP and TracInCPFast, side by side.

The same checkpoints (the path kernel's nodes of an estimator trained on
``load_digits``) and the same learning-rate weights (the nodes' weights) go
to both; Captum's ``checkpoints_load_func`` loads a node into a copy of the
network and returns its weight. One torch thread, one process, the two
timed alternately, best of ``--repeats``:

- all parameters: ``path_influence`` (loss derivatives folded into the
  engine states) against ``TracInCP.influence``, both with
  ``sample_wise_grads_per_batch=True`` (per-example gradients from layer
  hooks, ``loss_fn=CrossEntropyLoss(reduction="sum")``) and with its
  default (a backward pass per example, ``reduction="none"``; timed once);
- the last layer's weight only: ``path_influence(parameter_names=[...])``
  against ``TracInCPFast.influence`` (its rank-one last-layer form).

On an MLP (64-128-128-10 tanh, structured engine) and a CNN (1x8x8 -> conv
3x3 16 -> relu -> conv 3x3 32 -> relu -> linear 10, hooks engine), in
float32 and float64. Reports seconds, the ratio and the largest difference
relative to the largest score.

Usage::

    python benchmarks/bench_influence.py [--train 1000] [--test 200]
        [--checkpoints 8] [--repeats 2] [--quick]
"""

import argparse
import copy
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler
from torch import nn

from sklearn_pathkernel import PathKernelClassifier
from sklearn_pathkernel._explain._influence import path_influence


def cnn(n_features, n_outputs):
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 16, 3),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, n_outputs),
    )


def fit(kind, dtype, X, y, checkpoints):
    options = dict(
        max_iter=40,
        learning_rate_init=0.1,
        batch_size=100,
        quadrature="left",
        kernel_nodes=checkpoints,
        dtype=dtype,
        random_state=0,
    )
    if kind == "mlp":
        return PathKernelClassifier((128, 128), **options).fit(X, y)
    return PathKernelClassifier(module=cnn, **options).fit(X, y)


def captum_tracin(est, X, y, last_layer, batch_size, sample_wise=True):
    from captum.influence import TracInCP, TracInCPFast

    traj = est.trajectory_
    nodes = traj.kernel_nodes()
    model = copy.deepcopy(est.module_)

    def load_node(model, checkpoint):
        step, weight = nodes[int(checkpoint)]
        model.load_state_dict(traj.parameters_at(step), strict=False)
        return weight

    data = torch.utils.data.TensorDataset(
        torch.as_tensor(X, dtype=next(model.parameters()).dtype), torch.as_tensor(y)
    )
    # Per-example losses, unreduced and unweighted: reduction "sum" for the
    # per-sample-gradient hooks, "none" for the default per-example loop.
    reduction = "sum" if sample_wise or last_layer is not None else "none"
    common = dict(
        checkpoints_load_func=load_node,
        loss_fn=nn.CrossEntropyLoss(reduction=reduction),
        batch_size=batch_size,
    )
    names = [str(k) for k in range(len(nodes))]
    if last_layer is None:
        return TracInCP(
            model, data, names, sample_wise_grads_per_batch=sample_wise, **common
        )
    return TracInCPFast(model, model[last_layer], data, names, **common)


def best_of(repeats, fns, ours_repeats=5):
    """Each function's best time, run alternately: ``repeats`` rounds of all.

    The first (ours, short) runs ``ours_repeats`` times in each round, so
    that a moment of load does not decide its time.
    """
    seconds = [np.inf] * len(fns)
    results = [None] * len(fns)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            for _ in range(ours_repeats if k == 0 else 1):
                start = time.perf_counter()
                results[k] = fn()
                seconds[k] = min(seconds[k], time.perf_counter() - start)
    return seconds, results


def compare(est, data, last_layer, repeats, batch_size, sample_wise=True):
    """``(ours s, Captum s, largest difference / largest score)``."""
    X_train, y_train, X_test, y_test = data
    dtype = next(est.module_.parameters()).dtype
    tracin = captum_tracin(est, X_train, y_train, last_layer, batch_size, sample_wise)
    test = (torch.as_tensor(X_test, dtype=dtype), torch.as_tensor(y_test))
    names = None if last_layer is None else [f"{last_layer}.weight"]
    targets = np.eye(10)[y_test]

    def ours():
        return path_influence(
            est.module_,
            est.trajectory_,
            X_train,
            est._fit_targets,
            X_test,
            targets,
            loss="log_loss",
            parameter_names=names,
        )

    def theirs():
        return tracin.influence(test).double().numpy()

    (t_ours, t_theirs), (mine, want) = best_of(repeats, [ours, theirs])
    error = np.abs(mine - want).max() / np.abs(want).max()
    return t_ours, t_theirs, error


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=250, help="Captum's")
    parser.add_argument("--quick", action="store_true", help="200 x 50, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.train, args.test, args.repeats = 200, 50, 1
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", ConvergenceWarning)
    warnings.filterwarnings("ignore", "Input Tensor 0 did not already require")
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    X_train, y_train = X[: args.train], y[: args.train]
    X_test, y_test = X[-args.test :], y[-args.test :]
    print(
        f"{args.test} x {args.train} rows, {args.checkpoints} checkpoints, "
        f"1 torch thread, best of {args.repeats}\n"
    )
    print("| network | dtype | against | ours s | Captum s | speed-up | max rel diff |")
    print("|---|---|---|---:|---:|---:|---:|")
    data = (X_train, y_train, X_test, y_test)
    runs = [
        ("TracInCP, sample-wise grads", None, True),
        ("TracInCP, default", None, False),
        ("TracInCPFast, last weight", "last", True),
    ]
    for kind, last in [("mlp", 4), ("cnn", 6)]:
        for dtype in ["float32", "float64"]:
            est = fit(kind, dtype, X_train, y_train, args.checkpoints)
            for label, layer, sample_wise in runs:
                layer = last if layer == "last" else None
                repeats = args.repeats if sample_wise else 1  # the loop is slow
                ours, theirs, error = compare(
                    est, data, layer, repeats, args.batch_size, sample_wise
                )
                print(
                    f"| {kind} | {dtype} | {label} | {ours:.3f} | {theirs:.3f} "
                    f"| {theirs / ours:.1f}x | {error:.1e} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
