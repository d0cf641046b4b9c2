"""Finding flipped labels: self-influence, decomposition, loss and random.

The fuller version of ``examples/plot_find_mislabelled.py``. For each seed:
split ``load_digits`` (``--train`` training rows, the rest for testing),
flip ``--flip`` of the training labels to another class at random, train a
classifier (full batch, every step kept), rank the training rows by

- self-influence (``self_influence()``);
- own contribution: the row's contribution to its own given label's logit
  in the exact decomposition, ``phi_i(x_i)[y_i]``;
- the trained network's log loss on the row;
- random;

and report the share of the flipped rows in the top 10% and 20% of each
ranking, and the test accuracy after removing the top 10% and training
again (next to no removal and to removing exactly the flipped rows). Means
and standard deviations over the seeds.

Usage::

    python benchmarks/bench_mislabelled.py [--seeds 5] [--train 800]
        [--flip 0.1] [--max-iter 40] [--n-nodes 2]
"""

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from sklearn_pathkernel import PathKernelClassifier


def one_seed(seed, args):
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, train_size=args.train, random_state=seed
    )
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(y_train), int(args.flip * len(y_train)), replace=False)
    noisy = y_train.copy()
    noisy[flipped] = (noisy[flipped] + rng.integers(1, 10, len(flipped))) % 10
    is_flipped = np.isin(np.arange(len(y_train)), flipped)

    def train(rows):
        est = PathKernelClassifier(
            (args.hidden,),
            learning_rate_init=0.5,
            max_iter=args.max_iter,
            tol=0,
            random_state=seed,
        )
        return est.fit(X_train[rows], noisy[rows])

    everything = np.arange(len(noisy))
    clf = train(everything)
    start = time.perf_counter()
    own = clf.self_influence()
    seconds = {"self-influence": time.perf_counter() - start}
    start = time.perf_counter()
    machine = clf.decompose(X_train, exact=True, n_nodes=args.n_nodes)
    seconds["own contribution"] = time.perf_counter() - start
    scores = {
        "self-influence": own,
        "own contribution": machine.contributions[everything, everything, noisy],
        "loss": -clf.predict_log_proba(X_train)[everything, noisy],
        "random": rng.random(len(noisy)),
    }
    k = len(noisy) // 10
    rows = {}
    for name, score in scores.items():
        order = np.argsort(-score, kind="stable")
        found = [is_flipped[order[:top]].sum() / len(flipped) for top in (k, 2 * k)]
        accuracy = train(np.sort(order[k:])).score(X_test, y_test)
        rows[name] = (*found, accuracy)
    rows["no removal"] = (np.nan, np.nan, clf.score(X_test, y_test))
    rows["the flipped rows removed"] = (
        np.nan,
        np.nan,
        train(np.flatnonzero(~is_flipped)).score(X_test, y_test),
    )
    return rows, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--flip", type=float, default=0.1)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--max-iter", type=int, default=40)
    parser.add_argument("--n-nodes", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", ConvergenceWarning)
    results = [one_seed(seed, args) for seed in range(args.seeds)]
    print(
        f"load_digits, {args.train} training rows, {args.flip:.0%} flipped, "
        f"MLP 64-{args.hidden}-10 tanh, {args.max_iter} full-batch steps, "
        f"{args.seeds} seeds; mean (std)\n"
    )
    print(
        "| ranking | flipped in top 10% | flipped in top 20% "
        "| test accuracy, top 10% removed |"
    )
    print("|---|---:|---:|---:|")
    for name in results[0][0]:
        values = np.array([rows[name] for rows, _ in results])
        cells = [
            ""
            if np.isnan(values[:, j]).all()
            else f"{values[:, j].mean():.3f} ({values[:, j].std():.3f})"
            for j in range(3)
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name in results[0][1]:
        times = [seconds[name] for _, seconds in results]
        print(f"\n{name}: {np.mean(times):.2f} s per seed (one torch thread)")


if __name__ == "__main__":
    main()
