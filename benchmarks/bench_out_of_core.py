"""Out-of-core kernels: a ``.npy`` file written strip by strip against memory.

Each run happens in a fresh subprocess so that its peak resident memory
(``ru_maxrss``) is its own. The network: an MLP 64-64-1 (tanh, float32) on
``make_classification`` rows with 64 features, 10 checkpoints. For each
``n``: the kernel in memory (float64, when it fits in half the available
memory) and written to a file (float32, ``out=``), side by side, with their
seconds, peak RSS, peak anonymous memory (RSS counts the mapped file's
pages too, which the kernel writes back and drops under pressure; sampled
from ``/proc/self/status`` every 50 ms, so Linux only) and the relative
difference of a sample of entries.

Usage::

    python benchmarks/bench_out_of_core.py [--sizes 10000 50000] [--folder DIR]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

_CHILD = r"""
import json, resource, sys, threading, time, warnings
import numpy as np
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn_pathkernel import PathKernelClassifier

n, mode, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
X, y = make_classification(n_samples=n, n_features=64, random_state=0)
X = X.astype(np.float32)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    est = PathKernelClassifier((64,), max_iter=10, random_state=0,
                               quadrature="left", kernel_nodes=None)
    est.fit(X[:2000], y[:2000])
def anonymous_mib():
    # Linux: memory that is the process's own, not pages of the mapped file
    # (those count in RSS but the kernel writes them back and drops them).
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


peak_anonymous, running = [anonymous_mib()], True


def sample():
    while running:
        peak_anonymous.append(anonymous_mib())
        time.sleep(0.05)


sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
start = time.perf_counter()
if mode == "memory":
    K = est.kernel(X)
    checksum = float(K[:: max(1, n // 97), :: max(1, n // 89)].sum())
else:
    K = est.kernel(X, out=path, dtype=np.float32)
    checksum = float(np.asarray(K[:: max(1, n // 97), :: max(1, n // 89)]).sum())
seconds = time.perf_counter() - start
running = False
sampler.join()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mib": peak / 1024,
                  "anonymous_mib": max(peak_anonymous), "checksum": checksum}))
"""


def run(n, mode, path):
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(n), mode, path],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--folder", default=None)
    args = parser.parse_args()
    folder = args.folder or tempfile.mkdtemp()
    print("MLP 64-64-1 tanh, float32 network, 10 checkpoints, 64 features\n")
    print(
        "| n | where | result | seconds | peak RSS (MiB) | peak anonymous (MiB) "
        "| file (GiB) | rel. diff. |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        path = os.path.join(folder, f"K_{n}.npy")
        memory = run(n, "memory", path) if 8 * n * n < 0.5 * _available() else None
        if memory is not None:
            print(
                f"| {n:,} | memory | float64 | {memory['seconds']:.1f} "
                f"| {memory['peak_mib']:.0f} | {memory['anonymous_mib']:.0f} | | |"
            )
        disk = run(n, "disk", path)
        size = os.path.getsize(path) / 2**30
        difference = (
            ""
            if memory is None
            else f"{abs(disk['checksum'] / memory['checksum'] - 1):.1e}"
        )
        print(
            f"| {n:,} | file (`out=`) | float32 | {disk['seconds']:.1f} "
            f"| {disk['peak_mib']:.0f} | {disk['anonymous_mib']:.0f} | {size:.2f} "
            f"| {difference} |"
        )
        os.remove(path)


def _available():
    import psutil

    return psutil.virtual_memory().available


if __name__ == "__main__":
    main()
