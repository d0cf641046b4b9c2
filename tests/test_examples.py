"""Every example runs to the end, so that none rots.

The examples are separate processes; they run two at a time, one torch
thread each, from a module-scoped pool: on two cores that keeps both busy
without oversubscription, and small networks run faster on one thread than
on two anyway.
"""

import os
import pathlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).parents[1] / "examples").glob("*.py"))

_ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(script, folder):
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **_ONE_THREAD},
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every example started at once, two at a time; each test waits for its own."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {
            script: pool.submit(_run, script, tmp_path_factory.mktemp(script.stem))
            for script in EXAMPLES
        }


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script, runs):
    done = runs[script].result()
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "an example should tell its story on stdout"


def test_there_are_examples():
    assert EXAMPLES
