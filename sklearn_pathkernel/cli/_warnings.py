"""Divergence as the library reports it: its ``DivergenceWarning``.

The command line has no divergence test of its own. The library warns with
``DivergenceWarning`` when training rolls back after a non-finite loss and
when the loss ends tenfold above its start; the commands collect those
warnings and print them in their own words.
"""

import warnings
from contextlib import contextmanager

from sklearn.exceptions import ConvergenceWarning

from ..exceptions import DivergenceWarning


@contextmanager
def collect_divergence():
    """Collect the ``DivergenceWarning`` messages raised inside the block.

    ``ConvergenceWarning`` ("max_iter reached") is dropped: the commands
    train for a fixed budget of steps on purpose. Any other warning is
    emitted again when the block ends.

    Yields
    ------
    messages : list of str
        Filled when the block ends: one message per ``DivergenceWarning``,
        in order. Each ``fit`` warns at most once, so its length counts the
        fits that diverged.

    Examples
    --------
    >>> import warnings
    >>> from sklearn_pathkernel.exceptions import DivergenceWarning
    >>> from sklearn_pathkernel.cli._warnings import collect_divergence
    >>> with collect_divergence() as messages:
    ...     warnings.warn("the loss grew", DivergenceWarning)
    >>> messages
    ['the loss grew']
    """
    messages = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield messages
    for w in caught:
        if issubclass(w.category, DivergenceWarning):
            messages.append(str(w.message))
        elif not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
