"""Every example runs to the end, so that none rots.

A fresh interpreter spends 5 s importing torch, scikit-learn and
matplotlib, and 4-5 s more on what torch imports on first use (the first
optimizer, the first ``empty_like``): most of what a small example costs. So
the examples run as sphinx-gallery runs them, in an interpreter that has
imported everything already: this file, run as a script, is a small fork
server. It imports all that (but runs no torch operation, so no thread pool
is forked), then forks one child per example, two at a time; each child runs
its example as ``python examples/<name>.py`` would (``__main__``,
``__file__``, ``sys.argv[0]``, ``sys.path[0]``, a figure state of its own)
in a folder of its own, one thread, its output in two files. The server
prints one line per finished example, ``<name> <exit status> <CPU
seconds>``; each test reads lines until its own.

Two at a time keeps both cores busy, and this file from being the suite's
tail; small networks run faster on one thread than on two anyway. The other
xdist worker meanwhile runs other files: three single-threaded processes
share two cores without spinning.
"""

import ast
import atexit
import faulthandler
import importlib
import os
import pathlib
import runpy
import signal
import subprocess
import sys
import traceback

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).parents[1] / "examples").glob("*.py"))

_ONE_THREAD = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_AT_ONCE = 2
_FIRST_USE = ("torch._dynamo", "torch.fx.experimental.symbolic_shapes")
_OUTPUTS = ("stdout.txt", "stderr.txt")
_TIMEOUT = 600  # seconds an example may run before its traceback is dumped


def _import_what(script):
    """Run the top-level import statements of ``script``, and nothing else.

    Only a head start: an example that cannot be parsed or imported fails in
    its own child, with its own traceback.
    """
    try:
        tree = ast.parse(pathlib.Path(script).read_text(), filename=str(script))
        imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        exec(compile(ast.Module(imports, type_ignores=[]), str(script), "exec"), {})
    except Exception:
        pass


def _child(script, folder):
    """Run one example as its own ``python script`` would; never returns."""
    status = 1
    try:
        folder.mkdir()
        os.chdir(folder)
        for fd, name in zip((1, 2), _OUTPUTS):
            os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        faulthandler.dump_traceback_later(_TIMEOUT, exit=True)

        import torch

        torch.set_num_threads(1)
        sys.argv = [str(script)]
        sys.path[0] = str(script.parent)
        runpy.run_path(str(script), run_name="__main__")
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()  # what the interpreter does at its exit
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def _serve(folder, scripts):
    """Import once, then fork a child per example, ``_AT_ONCE`` at a time."""
    for variable in _ONE_THREAD:  # before NumPy and torch start thread pools
        os.environ[variable] = "1"
    import matplotlib

    matplotlib.use("Agg")
    for script in scripts:
        _import_what(script)
    # torch imports these on first use, not on import (the first optimizer,
    # the first empty_like): 4-5 s of every example that trains a network.
    for module in _FIRST_USE:
        importlib.import_module(module)
    waiting, running = list(scripts), {}
    while waiting or running:
        while waiting and len(running) < _AT_ONCE:
            script = waiting.pop(0)
            sys.stdout.flush()  # a child must not inherit unwritten lines
            pid = os.fork()
            if pid == 0:
                _child(script, folder / script.stem)
            running[pid] = script
        pid, status, usage = os.wait4(-1, 0)
        seconds = usage.ru_utime + usage.ru_stime  # the child's CPU time
        script = running.pop(pid)
        print(script.name, os.waitstatus_to_exitcode(status), seconds, flush=True)


class _Server:
    """The fork server's process, and the exit status of each example so far."""

    def __init__(self, folder):
        self.folder = folder
        self.log = open(folder / "server-stderr.txt", "w")
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(folder), *map(str, EXAMPLES)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,  # stop() ends the children too
        )
        self.status = {}

    def result(self, script):
        """Wait for ``script``; its exit status, stdout and stderr."""
        while script.name not in self.status:
            line = self.process.stdout.readline()
            if not line:
                self.process.wait()
                log = (self.folder / "server-stderr.txt").read_text()
                pytest.fail(f"the example server stopped: {log[-3000:]}")
            name, status, _ = line.split()
            self.status[name] = int(status)
        outputs = [
            path.read_text() if path.exists() else ""
            for path in (self.folder / script.stem / name for name in _OUTPUTS)
        ]
        return self.status[script.name], *outputs

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process.stdout.close()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Every example started at once, two at a time; each test waits for its own."""
    started = _Server(tmp_path_factory.mktemp("examples"))
    yield started
    started.stop()


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script, server):
    status, stdout, stderr = server.result(script)
    assert status == 0, f"exit status {status}:\n{stderr[-3000:]}"
    assert stdout.strip(), "an example should tell its story on stdout"


def test_there_are_examples():
    assert EXAMPLES


if __name__ == "__main__":
    _serve(pathlib.Path(sys.argv[1]), [pathlib.Path(path) for path in sys.argv[2:]])
