"""The ``kernel`` command's target column: which task, and its values.

``--task auto`` follows the rule of ``PathKernelTransformer``: the target is
class labels when scikit-learn's ``type_of_target`` calls it "binary" or
"multiclass" (text, or integers however many distinct values there are), and
a regression target otherwise (numbers that are not all integers).
"""

import numpy as np
from sklearn.utils.multiclass import type_of_target

from ._csv import parse_numbers
from ._errors import CLIError

# Integers up to this size are exact in float64: labels such as 3.0 become 3.
_EXACT_INTEGERS = 2.0**53


def detect_task(y):
    """Classification or regression, as ``type_of_target`` sees ``y``.

    Parameters
    ----------
    y : ndarray of shape (n_samples,)
        The target: numbers, or strings when the column is not numeric.

    Returns
    -------
    task : {"classification", "regression"}

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_pathkernel.cli._target import detect_task
    >>> detect_task(np.array(["yes", "no"])), detect_task(np.arange(50.0))
    ('classification', 'classification')
    >>> detect_task(np.array([0.5, 1.0, 2.0]))
    'regression'
    """
    binary_or_multiclass = type_of_target(y) in ("binary", "multiclass")
    return "classification" if binary_or_multiclass else "regression"


def read_target(table, name, task="auto"):
    """The task and the target values of column ``name`` of ``table``.

    Parameters
    ----------
    table : CSVTable
    name : str
        The target column.
    task : {"auto", "classification", "regression"}, default="auto"
        "auto" decides with :func:`detect_task`.

    Returns
    -------
    task : {"classification", "regression"}
    y : ndarray of shape (n_rows,)
        float64 for regression; class labels for classification: int64 when
        every value is an integer, float64 for other numbers, else strings.

    Raises
    ------
    CLIError
        For an empty cell, text in a regression target, or a single class.
    """
    raw = table.column(name)
    empty = np.flatnonzero(raw == "")
    if empty.size:
        raise CLIError(
            f"{table.path}: missing value in the target column {name!r}, "
            f"{table.where(empty[0])}"
        )
    numbers, bad = parse_numbers(raw)
    if task == "auto":
        task = detect_task(raw if numbers is None else numbers)
    if task == "regression":
        if numbers is None:
            raise CLIError(
                f"{table.path}: the target column {name!r} must be numeric for "
                f"regression, but {table.where(bad[0])} holds {str(raw[bad[0]])!r}"
            )
        return task, numbers
    labels = _class_labels(raw, numbers)
    classes = np.unique(labels)
    if len(classes) < 2:
        raise CLIError(
            f"the target column {name!r} of {table.path} holds a single class "
            f"({label_text(classes[0])}); classification needs at least two"
        )
    return task, labels


def _class_labels(raw, numbers):
    if numbers is None:
        return raw
    whole = (numbers == np.round(numbers)).all()
    if whole and np.abs(numbers).max() <= _EXACT_INTEGERS:
        return numbers.astype(np.int64)
    return numbers


def label_text(value):
    """A label for a message: ``'a'`` for text, ``3`` for a number."""
    return repr(str(value)) if isinstance(value, str) else str(value)
