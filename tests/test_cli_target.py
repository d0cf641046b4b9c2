"""``cli._target``: ``--task auto`` is decided by ``type_of_target``."""

import numpy as np
import pytest
from sklearn.utils.multiclass import type_of_target

from sklearn_pathkernel.cli._csv import CSVTable
from sklearn_pathkernel.cli._errors import CLIError
from sklearn_pathkernel.cli._target import detect_task, read_target


def table(values):
    cells = np.array([[str(i), v] for i, v in enumerate(values)])
    return CSVTable("t.csv", ["x", "t"], cells, np.arange(2, len(values) + 2))


@pytest.mark.parametrize(
    "values, task",
    [
        (["0", "1", "2", "1", "0", "2"], "classification"),  # few integers
        (["yes", "no", "yes", "no"], "classification"),  # text
        (["1", "2", "x"], "classification"),  # text, even with numbers
        ([str(i) for i in range(50)], "classification"),  # many integers
        ([str(10 * i) for i in range(6)], "classification"),  # one row per value
        (["1.0", "2.0", "1.0"], "classification"),  # whole numbers as floats
        (["0.5", "1.25", "2", "1", "0", "2"], "regression"),  # not integers
        ([f"{0.1 * i:.1f}" for i in range(30)], "regression"),
    ],
)
def test_auto_task_is_type_of_target(values, task):
    found, y = read_target(table(values), "t")
    assert found == task
    try:
        numbers = np.asarray(values, dtype=float)
    except ValueError:
        numbers = np.asarray(values)
    kind = type_of_target(numbers)
    assert (kind in ("binary", "multiclass")) == (task == "classification")
    assert detect_task(numbers) == task


def test_labels_keep_their_kind():
    task, y = read_target(table(["3", "1.0", "3"]), "t")
    assert y.dtype == np.int64 and y.tolist() == [3, 1, 3]
    task, y = read_target(table(["a", "b"]), "t")
    assert y.dtype.kind == "U" and y.tolist() == ["a", "b"]
    task, y = read_target(table(["0.5", "1.5"]), "t", task="classification")
    assert y.dtype == np.float64
    task, y = read_target(table(["1", "2", "3"]), "t", task="regression")
    assert task == "regression" and y.dtype == np.float64


def test_target_errors():
    with pytest.raises(
        CLIError, match=r"missing value in the target column 't', row 2"
    ):
        read_target(table(["1", "", "2"]), "t")
    with pytest.raises(CLIError, match=r"row 3 \(line 4\) holds 'x'"):
        read_target(table(["1", "2", "x"]), "t", task="regression")
    with pytest.raises(CLIError, match=r"holds a single class \(7\)"):
        read_target(table(["7", "7"]), "t")
    with pytest.raises(CLIError, match=r"holds a single class \('a'\)"):
        read_target(table(["a", "a"]), "t")
