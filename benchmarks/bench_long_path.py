"""Resident memory during a 100,000-step minibatch training.

The claim under test (per-step records on disk): with ``trajectory_dir``, a
long minibatch run keeps its per-step records (batch indices, batch weights,
loss derivatives) in a memory-mapped file as it does the parameters, so the
process's resident memory stays flat as the path grows. A small MLP (16
hidden units, ``batch_size=8``) trains on generated data for ``--steps``
steps; resident memory (psutil) is read as steps are recorded, and reported
at 10%, 50% and 100% of them. ``--record-every`` (1,000 by default) keeps
the checkpoints few, so that what grows is the records.

Run it once with this tree and once with an older one on ``PYTHONPATH`` to
compare; ``--no-dir`` trains without ``trajectory_dir``. ``--decompose``
instead fits a shorter path with ``record_every=1`` with and without
``trajectory_dir`` and checks that the exact decomposition of three queries is
the same to the bit.

Usage::

    python benchmarks/bench_long_path.py [--steps 100000] [--record-every 1000]
                                         [--no-dir] [--decompose 5000]
"""

import argparse
import os
import tempfile
import time
import warnings

import numpy as np
import psutil
import torch
from sklearn.exceptions import ConvergenceWarning

from sklearn_pathkernel import PathKernelRegressor
from sklearn_pathkernel._training._trajectory import Trajectory

N_ROWS = 8_000  # 1,000 steps of 8 rows an epoch
BATCH = 8


def _data(n_features=10):
    rng = np.random.RandomState(0)
    X = rng.randn(N_ROWS, n_features).astype(np.float32)
    y = np.tanh(X[:, :3].sum(axis=1)) + 0.1 * rng.randn(N_ROWS)
    return X, y


def _estimator(steps, record_every, directory):
    return PathKernelRegressor(
        (16,),
        batch_size=BATCH,
        max_iter=steps * BATCH // N_ROWS,
        n_iter_no_change=steps,  # never stop early
        learning_rate_init=0.01,
        record_every=record_every,
        trajectory_dir=directory,
        device="cpu",
        random_state=0,
    )


def _fit(estimator, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(X, y)


def _fit_sampling_rss(estimator, X, y, steps):
    """Fit, reading the memory when steps 1, 10%, 50% and 100% are recorded.

    Returns ``{step: (rss, anonymous)}`` in MiB: the resident set, and its
    part not backed by files (``rss - shared``). Pages of a memory-mapped
    file that are resident count in the first, and the system reclaims them
    as it needs; the second is what only swap could free.
    """
    process, marks, rss = psutil.Process(), {1, steps // 10, steps // 2, steps}, {}
    append = Trajectory._append_step

    def counting(self, *args, **kwargs):
        append(self, *args, **kwargs)
        if self.n_steps in marks:
            info = process.memory_info()
            rss[self.n_steps] = (info.rss / 2**20, (info.rss - info.shared) / 2**20)

    Trajectory._append_step = counting
    try:
        start = time.perf_counter()
        _fit(estimator, X, y)
        return rss, time.perf_counter() - start
    finally:
        Trajectory._append_step = append


def measure(steps, record_every, use_dir):
    X, y = _data()
    with tempfile.TemporaryDirectory() as directory:
        est = _estimator(steps, record_every, directory if use_dir else None)
        rss, seconds = _fit_sampling_rss(est, X, y, steps)
        files = sorted(os.listdir(directory))
        traj = est.trajectory_
        print(
            f"steps={traj.n_steps}, checkpoints={len(traj)}, "
            f"trajectory_dir={'yes' if use_dir else 'no'}, files={files}, "
            f"fit {seconds:.1f} s ({1e6 * seconds / traj.n_steps:.0f} us a step), "
            f"torch threads={torch.get_num_threads()}"
        )
        (rss_1, anon_1) = rss[1]
        for mark, (total, anonymous) in sorted(rss.items()):
            print(
                f"  step {mark:>7,}: RSS {total:7.1f} MiB ({total - rss_1:+6.1f} "
                f"since step 1), anonymous {anonymous:7.1f} MiB "
                f"({anonymous - anon_1:+6.1f})"
            )
        del est, traj


def check_decomposition(steps):
    X, y = _data()
    with tempfile.TemporaryDirectory() as directory:
        machines = []
        for use_dir in (False, True):
            est = _fit(_estimator(steps, 1, directory if use_dir else None), X, y)
            start = time.perf_counter()
            machines.append(est.decompose(X[:3], exact=True))
            seconds = time.perf_counter() - start
            print(
                f"steps={est.trajectory_.n_steps}, trajectory_dir="
                f"{'yes' if use_dir else 'no'}, records on disk: "
                f"{est.trajectory_._steps.on_disk}, exact decompose {seconds:.1f} s"
            )
        memory, disk = machines
        same = all(
            np.array_equal(getattr(memory, name), getattr(disk, name))
            for name in ("bias", "contributions", "network_output", "kernel")
        )
        error = disk.error
        print(f"  identical with and without trajectory_dir: {same}")
        print(
            f"  reconstruction error: max abs {error['max_abs']:.3g}, "
            f"max rel {error['max_rel']:.3g}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--record-every", type=int, default=1_000)
    parser.add_argument("--no-dir", action="store_true")
    parser.add_argument("--decompose", type=int, default=0, metavar="STEPS")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.decompose:
        check_decomposition(args.decompose)
    else:
        measure(args.steps, args.record_every, not args.no_dir)


if __name__ == "__main__":
    main()
