"""Warnings and errors raised by sklearn_pathkernel.

They subclass scikit-learn's categories, so that filters and ``except``
clauses written for scikit-learn keep working.
"""

import sklearn
from sklearn.exceptions import ConvergenceWarning

__all__ = ["DivergenceWarning", "InconsistentVersionWarning"]


class DivergenceWarning(ConvergenceWarning):
    """Training stopped because the loss stopped being finite.

    The estimator keeps the last parameters whose loss was finite and the path
    that leads to them, so predictions, the kernel and the decomposition stay
    usable. A smaller ``learning_rate_init`` usually avoids it.

    Examples
    --------
    >>> import warnings
    >>> from sklearn_pathkernel.exceptions import DivergenceWarning
    >>> from sklearn.exceptions import ConvergenceWarning
    >>> issubclass(DivergenceWarning, ConvergenceWarning)
    True
    """


class InconsistentVersionWarning(sklearn.exceptions.InconsistentVersionWarning):
    """A file is loaded by another version of sklearn_pathkernel than wrote it.

    The estimator is loaded all the same; its predictions and kernels are those
    of the saved network as long as the package computes them the same way.
    Save it again with the current version (or refit it) to silence this.

    A subclass of scikit-learn's warning of the same name, so that a filter
    on scikit-learn's (``warnings.simplefilter("error",
    sklearn.exceptions.InconsistentVersionWarning)``) applies to ours too.
    Its ``current_sklearn_version`` / ``original_sklearn_version`` are
    scikit-learn's version now and, when the file recorded it, at saving.

    Parameters
    ----------
    estimator_name : str
        Class of the saved estimator.
    current_version : str
        The version of sklearn_pathkernel that loads the file.
    original_version : str
        The version that saved it.
    path : str
        The file.
    original_sklearn_version : str, default=None
        The scikit-learn version that saved it, when known.

    Examples
    --------
    >>> from sklearn_pathkernel.exceptions import InconsistentVersionWarning
    >>> print(InconsistentVersionWarning(
    ...     estimator_name="PathKernelRegressor", current_version="0.2",
    ...     original_version="0.1", path="model.pt"))  # doctest: +ELLIPSIS
    Loading PathKernelRegressor from model.pt, saved with sklearn_pathkernel 0.1, ...
    """

    def __init__(
        self,
        *,
        estimator_name,
        current_version,
        original_version,
        path,
        original_sklearn_version=None,
    ):
        super().__init__(
            estimator_name=estimator_name,
            current_sklearn_version=sklearn.__version__,
            original_sklearn_version=original_sklearn_version,
        )
        self.current_version = current_version
        self.original_version = original_version
        self.path = path

    def __str__(self):
        return (
            f"Loading {self.estimator_name} from {self.path}, saved with "
            f"sklearn_pathkernel {self.original_version}, using sklearn_pathkernel "
            f"{self.current_version}. This might lead to invalid results; save it "
            "again with this version, or refit it."
        )
