"""How long the command line takes to start: ``--help`` and usage errors.

Each command runs in a fresh interpreter (what a user waits for, imports
included), one BLAS / OpenMP thread; the trees take turns, run after run, so
that a change in the machine's load touches both alike. Reports the median of
``--repeats`` wall-clock seconds per command and tree, after / before, and the
median CPU seconds (user + system) of the interpreter, which a busy machine
inflates less than the wall clock.

The commands: the bare interpreter (``python -c pass``, the floor), the
console script's ``--help`` and a usage error (``from sklearn_pathkernel.cli
import main``), ``python -m sklearn_pathkernel --help``, ``kernel --help``,
and the first use of an estimator (``import sklearn_pathkernel`` then
``PathKernelClassifier``): the imports that ``--help`` no longer pays, paid
by a program that uses the library.

Usage::

    python benchmarks/bench_cli_startup.py                     # this tree
    python benchmarks/bench_cli_startup.py --before 006d6de    # side by side
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONSOLE = "import sys; from sklearn_pathkernel.cli import main; sys.exit(main())"
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "sklearn-pathkernel --help": ["-c", CONSOLE, "--help"],
    "python -m sklearn_pathkernel --help": ["-m", "sklearn_pathkernel", "--help"],
    "... kernel --help": ["-m", "sklearn_pathkernel", "kernel", "--help"],
    "... kernel t.csv (usage error)": ["-m", "sklearn_pathkernel", "kernel", "t.csv"],
    "first PathKernelClassifier": [
        "-c",
        "import sklearn_pathkernel; sklearn_pathkernel.PathKernelClassifier",
    ],
}
EXPECTED_CODES = {"... kernel t.csv (usage error)": 2}
ONE_THREAD = {
    name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
}


def _cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def seconds(tree, argv, expected_code):
    """Wall-clock and CPU seconds of ``python *argv`` with the package of ``tree``."""
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": tree}
    cpu, start = _cpu(), time.perf_counter()
    done = subprocess.run(
        [sys.executable, *argv], env=env, capture_output=True, cwd=tree
    )
    elapsed, cpu = time.perf_counter() - start, _cpu() - cpu
    if done.returncode != expected_code:
        raise RuntimeError(f"{argv} in {tree}: {done.stderr.decode()[-2000:]}")
    return elapsed, cpu


def checkout(rev, folder):
    """The package as it was at ``rev``, extracted into ``folder``."""
    archive = os.path.join(folder, "before.tar")
    subprocess.run(
        ["git", "archive", "-o", archive, rev, "sklearn_pathkernel"],
        cwd=ROOT,
        check=True,
    )
    subprocess.run(["tar", "-xf", archive, "-C", folder], check=True)
    return folder


def measure(trees, repeats):
    """``{(tree name, command): [(wall, cpu) seconds, ...]}``, trees in turns."""
    times = {}
    for _ in range(repeats):
        for command, argv in COMMANDS.items():
            for name, tree in trees.items():
                code = EXPECTED_CODES.get(command, 0)
                times.setdefault((name, command), []).append(seconds(tree, argv, code))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="git revision to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        trees = {"after": ROOT}
        if args.before:
            trees = {"before": checkout(args.before, folder), **trees}
        for tree in trees.values():  # warm the page cache and the .pyc files
            for command, argv in COMMANDS.items():
                seconds(tree, argv, EXPECTED_CODES.get(command, 0))
        times = measure(trees, args.repeats)
    print(
        f"median of {args.repeats} fresh interpreters, one thread, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    report(times, list(trees))


def report(times, names):
    """The table: wall seconds per tree, after / before, CPU seconds per tree."""
    wall = {key: statistics.median(w for w, _ in runs) for key, runs in times.items()}
    cpu = {key: statistics.median(c for _, c in runs) for key, runs in times.items()}
    ratio = len(names) > 1
    header = " | ".join(f"{name} s" for name in names)
    header += " | after / before" if ratio else ""
    header += " | " + " | ".join(f"{name} CPU s" for name in names)
    print(f"| command | {header} |")
    print("|---|" + "---:|" * (2 * len(names) + ratio))
    for command in COMMANDS:
        cells = [f"{wall[name, command]:.3f}" for name in names]
        if ratio:
            cells.append(f"{wall['after', command] / wall['before', command]:.3f}")
        cells += [f"{cpu[name, command]:.3f}" for name in names]
        print(f"| {command} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
