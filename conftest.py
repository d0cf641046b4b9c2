"""Test-session set-up shared by every collected folder.

The suite runs on ``pytest-xdist`` workers (``-n auto`` in pyproject.toml),
one per core. Each worker computes with one thread: two workers with two
torch threads each on two cores oversubscribe them, and torch's threads then
slow down many-fold while the other worker holds a core. The environment is
set before torch or NumPy is imported (test modules import them later);
``torch.set_num_threads`` covers a torch imported earlier by a plugin.
A run without workers (``-n 0``, or ``-p no:xdist``) keeps the defaults.
"""

import os
import sys

_ONE_THREAD = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

if os.environ.get("PYTEST_XDIST_WORKER"):
    for variable in _ONE_THREAD:
        os.environ.setdefault(variable, "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
