"""Warnings and errors raised by sklearn_pathkernel.

They subclass scikit-learn's categories, so that filters and ``except``
clauses written for scikit-learn keep working.
"""

from sklearn.exceptions import ConvergenceWarning

__all__ = ["DivergenceWarning"]


class DivergenceWarning(ConvergenceWarning):
    """Training stopped because the loss stopped being finite.

    The estimator keeps the last parameters whose loss was finite and the path
    that leads to them, so predictions, the kernel and the decomposition stay
    usable. A smaller ``learning_rate`` usually avoids it.

    Examples
    --------
    >>> import warnings
    >>> from sklearn_pathkernel.exceptions import DivergenceWarning
    >>> from sklearn.exceptions import ConvergenceWarning
    >>> issubclass(DivergenceWarning, ConvergenceWarning)
    True
    """
