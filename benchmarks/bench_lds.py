"""The linear datamodeling score (LDS) of contributions and influence.

TRAK (Park et al., 2023) measures how well an attribution ``tau(z)`` (one
number per training row, for a test row ``z``) predicts counterfactuals:
train networks on random subsets ``S_j`` holding half the training rows,
and for each test row take the Spearman correlation, over the subsets,
between the predicted ``sum_{i in S_j} tau(z)_i`` and the actual output of
the network trained on ``S_j``; the LDS is its mean over the test rows.

Attributions, all from the network trained on every row:

- first-order contributions ``phi_i(z)`` (``decompose``), to the true
  class's logit;
- exact contributions (``decompose(exact=True)``), likewise;
- influence (``influence``: TracIn, the loss-weighted path kernel);
- random numbers, as the floor.

Actual outputs of the networks trained on ``S_j``: the true class's logit,
which the contributions decompose, and the margin ``log p / (1 - p)`` of
the true class, TRAK's output (influence speaks of the loss, which the
margin follows). The subsets' networks start from the same initial weights
as the full one (the same ``random_state``), the counterfactual the
decomposition describes; with ``--reseed`` each gets its own.

Usage::

    python benchmarks/bench_lds.py [--train 300] [--test 100] [--subsets 40]
        [--max-iter 30] [--reseed]
"""

import argparse
import time
import warnings

import numpy as np
import torch
from scipy.special import log_softmax
from scipy.stats import spearmanr
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from sklearn_pathkernel import PathKernelClassifier


def outputs(est, X, y):
    """The true class's logit and margin ``log p - log(1 - p)``, per row."""
    logits = est.decision_function(X)
    rows = np.arange(len(y))
    log_p = log_softmax(logits, axis=1)[rows, y]
    return logits[rows, y], log_p - np.log1p(-np.exp(log_p))


def lds(attribution, masks, actual):
    """Mean over test rows of Spearman(predicted, actual) across the subsets."""
    predicted = masks @ attribution.T  # (subsets, test rows)
    scores = [
        spearmanr(predicted[:, q], actual[:, q]).statistic
        for q in range(actual.shape[1])
    ]
    return float(np.nanmean(scores))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--subsets", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--reseed", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", ConvergenceWarning)
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, train_size=args.train, test_size=args.test, random_state=0
    )
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)

    def train(rows, seed=0):
        est = PathKernelClassifier(
            (args.hidden,),
            learning_rate_init=0.5,
            max_iter=args.max_iter,
            tol=0,
            dtype="float64",
            random_state=seed,
        )
        return est.fit(X_train[rows], y_train[rows])

    clf = train(np.arange(args.train))
    rows = np.arange(args.test)
    start = time.perf_counter()
    first = clf.decompose(X_test).contributions[rows, :, y_test]
    exact = clf.decompose(X_test, exact=True).contributions[rows, :, y_test]
    influence = clf.influence(X_test, y_test)
    print(f"attributions: {time.perf_counter() - start:.1f} s")
    rng = np.random.default_rng(0)
    attributions = {
        "first-order contributions": first,
        "exact contributions": exact,
        "influence (TracIn)": influence,
        "random": rng.normal(size=influence.shape),
    }
    masks = np.zeros((args.subsets, args.train))
    logit, margin = [], []
    start = time.perf_counter()
    for j in range(args.subsets):
        subset = np.sort(rng.choice(args.train, args.train // 2, replace=False))
        masks[j, subset] = 1.0
        net = train(subset, seed=j + 1 if args.reseed else 0)
        a, b = outputs(net, X_test, y_test)
        logit.append(a)
        margin.append(b)
    print(
        f"{args.subsets} networks on half the rows: {time.perf_counter() - start:.1f} s"
    )
    logit, margin = np.array(logit), np.array(margin)
    print(
        f"\nload_digits, {args.train} training rows ({args.train // 2} per subset), "
        f"{args.test} test rows, {args.subsets} subsets, MLP 64-{args.hidden}-10 "
        f"tanh, {args.max_iter} full-batch steps, "
        + ("a new initialisation" if args.reseed else "the same initialisation")
        + " per subset\n"
    )
    print("| attribution | LDS, true-class logit | LDS, true-class margin |")
    print("|---|---:|---:|")
    for name, attribution in attributions.items():
        print(
            f"| {name} | {lds(attribution, masks, logit):.3f} "
            f"| {lds(attribution, masks, margin):.3f} |"
        )


if __name__ == "__main__":
    main()
