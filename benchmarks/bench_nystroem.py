"""Nyström features against random features and the exact path kernel.

On ``load_digits`` (three quarters to train, one to test, standardized), one
network (MLP 64-32-10 tanh, 100 full-batch steps, every tenth kept: 10
checkpoints) gives its path kernel, normalised by the mean training
diagonal, to three models scored on the held-out rows:

- ``LinearSVC`` on ``PathKernelNystroem`` features (``K(X, L) K(L, L)^(-1/2)``
  with ``n_components`` landmarks);
- ``LinearSVC`` on ``PathKernelFeatures`` (random sketches of the exact
  feature map) with as many features;
- ``SVC(kernel="precomputed")`` on the exact kernel (``PathKernelTransformer``).

All run side by side in one process, each timing the best of ``--repeats``:
fit (which trains the network; its time alone is printed too) plus the
transform of the test rows, then the classifier's fit. Accuracy is on the
test rows, and so is the kernel error ``||Z Z^T - K||_F / ||K||_F`` of the
features against the exact normalised kernel. Prints a Markdown table.

Usage::

    python benchmarks/bench_nystroem.py [--repeats 3] [--components 50 100 200 400]
"""

import argparse
import platform
import warnings

import numpy as np
import torch
from bench_diagonal import best_of  # the script's folder is on sys.path
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from sklearn_pathkernel import (
    PathKernelClassifier,
    PathKernelFeatures,
    PathKernelNystroem,
    PathKernelTransformer,
)


def scored(transformer, classifier, data):
    """Fit, transform the test rows, fit the classifier.

    Returns the test accuracy and the transformed test rows.
    """
    X_train, X_test, y_train, y_test = data
    Z_train = transformer.fit_transform(X_train, y_train)
    Z_test = transformer.transform(X_test)
    return classifier.fit(Z_train, y_train).score(Z_test, y_test), Z_test


def kernel_error(Z, K):
    """``||Z Z^T - K||_F / ||K||_F``: how well the features give the kernel."""
    return np.linalg.norm(Z @ Z.T - K) / np.linalg.norm(K)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--components", type=int, nargs="+", default=[50, 100, 200, 400]
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, stratify=y, random_state=0
    )
    scaler = StandardScaler().fit(X_train)
    data = (scaler.transform(X_train), scaler.transform(X_test), y_train, y_test)
    network = PathKernelClassifier(
        (32,),
        max_iter=100,
        record_every=10,
        tol=0,
        random_state=0,
        quadrature="left",
        kernel_nodes=None,
    )
    common = {"normalize": "mean_diagonal", "random_state": 0}

    print(
        f"load_digits: {len(y_train)} training rows, {len(y_test)} test rows; "
        f"MLP 64-32-10, 10 checkpoints; {platform.machine()}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, float32, "
        f"best of {args.repeats}\n"
    )
    training, _ = best_of(args.repeats, lambda: network.fit(data[0], data[2]))
    exact = PathKernelTransformer(network, normalize="mean_diagonal")
    exact_seconds, (exact_accuracy, _) = best_of(
        args.repeats, lambda: scored(exact, SVC(kernel="precomputed"), data)
    )
    K_test = exact.estimator_.kernel(data[1], normalize="mean_diagonal")

    print(
        "| n_components | Nyström accuracy | random accuracy | Nyström kernel "
        "error | random kernel error | Nyström s | random s | random / Nyström |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in args.components:
        row = {}
        for name, Transformer in [
            ("nystroem", PathKernelNystroem),
            ("random", PathKernelFeatures),
        ]:
            transformer = Transformer(network, n_components=m, **common)
            seconds, (accuracy, Z_test) = best_of(
                args.repeats, lambda t=transformer: scored(t, LinearSVC(), data)
            )
            row[name] = accuracy, kernel_error(Z_test, K_test), seconds
        (a_n, e_n, s_n), (a_r, e_r, s_r) = row["nystroem"], row["random"]
        print(
            f"| {m} | {a_n:.3f} | {a_r:.3f} | {e_n:.3f} | {e_r:.3f} | {s_n:.2f} "
            f"| {s_r:.2f} | {s_r / s_n:.1f}x |"
        )
    print(
        f"\nExact kernel + SVC (all {len(y_train)} training rows): accuracy "
        f"{exact_accuracy:.3f} in {exact_seconds:.2f} s. Network training alone: "
        f"{training:.2f} s (included in every time above). Kernel error: "
        "||Z Z^T - K||_F / ||K||_F on the test rows."
    )


if __name__ == "__main__":
    main()
