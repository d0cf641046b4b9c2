"""Operations per checkpoint with and without checkpoint stacks (W2 shapes).

Counted, not timed: a ``TorchDispatchMode`` (``tests/_dispatch.py``) counts
every operation the tasks dispatch, on meta tensors, under the device tile
policy forced on the CPU, for one checkpoint per task against stacks of 16.
"Launches" leave out views and other host-only operations, which launch
nothing on a GPU. The count helpers are the tests' own (``tests/test_path.py``,
``test_features.py``, ``test_decompose.py``), so the table and the tests
measure the same thing.

Run from the repository root::

    python benchmarks/bench_stack_counts.py
"""

import pathlib
import sys
import warnings

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "tests"))

import test_decompose  # noqa: E402
import test_features  # noqa: E402
import test_path  # noqa: E402
from _pytest.monkeypatch import MonkeyPatch  # noqa: E402


def _rows():
    patch = MonkeyPatch()
    try:
        for metric in (False, True):
            name = "Adam metric" if metric else "plain"
            _, one = test_path._stacked_kernel_ops(patch, 1, metric)
            _, stack = test_path._stacked_kernel_ops(patch, 16, metric)
            yield f"path kernel, {name}, 4,096 rows", one, stack
        for metric in (False, True):
            name = "Adam metric" if metric else "plain"
            _, one = test_path._stacked_diagonal_ops(patch, 1, metric)
            _, stack = test_path._stacked_diagonal_ops(patch, 16, metric)
            yield f"kernel_diagonal, {name}, 20,000 rows", one, stack
    finally:
        patch.undo()
    one = test_features._stacked_sketch_ops(16, False)
    stack = test_features._stacked_sketch_ops(16, True)
    yield "features (Kronecker sketch, m = 100), 20,000 rows", one, stack
    for exact in (False, True):
        name = "exact, 2 nodes" if exact else "first order"
        one = test_decompose._w2_decomposition_ops(1, exact)
        stack = test_decompose._w2_decomposition_ops(16, exact)
        yield f"decomposition, {name}, 2,048 x 1,797 rows", one, stack


def main():
    warnings.simplefilter("ignore")
    print(
        "| work (W2, float32, 16 checkpoints, device policy) | ops/checkpoint, "
        "one each | stack of 16 | ratio | launches, one each | stack of 16 | "
        "ratio | host waits |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, a, b in _rows():
        waits = "none" if not (a.synchronising or b.synchronising) else "some"
        print(
            f"| {name} | {a.total / 16:.1f} | {b.total / 16:.1f} | "
            f"{a.total / b.total:.1f}x | {a.launches / 16:.1f} | "
            f"{b.launches / 16:.1f} | {a.launches / b.launches:.1f}x | {waits} |"
        )


if __name__ == "__main__":
    main()
