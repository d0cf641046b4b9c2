"""Progress reports for long work: an epoch table and progress bars.

Everything here is silent at ``verbose=0``. The epoch table goes to stdout,
one line per epoch like skorch's; the bars are tqdm's and go to stderr, so
that piping the output of a script keeps only its results.
"""

import sys
import time

from tqdm.auto import tqdm


def progress_bar(verbose, *, total, desc, unit="it"):
    """A tqdm bar over ``total`` units, disabled when ``verbose`` is 0.

    Use it as a context manager and call ``update(k)``; a disabled bar costs
    nothing and prints nothing.

    Examples
    --------
    >>> from sklearn_pathkernel._compute._progress import progress_bar
    >>> with progress_bar(0, total=3, desc="blocks") as bar:
    ...     for _ in range(3):
    ...         bar.update(1)
    >>> bar.disable  # verbose=0: nothing was drawn
    True
    """
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=verbose <= 0,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
    )


class EpochLog:
    """Print one row per epoch: epoch, training loss, its change, seconds.

    Parameters
    ----------
    verbose : int
        Rows are printed when positive.
    file : file-like, default=None
        Where to print; ``sys.stdout`` when None.

    Examples
    --------
    >>> from sklearn_pathkernel._compute._progress import EpochLog
    >>> log = EpochLog(verbose=1)
    >>> log.epoch(1, 0.5)  # doctest: +ELLIPSIS
      epoch    train_loss       change      dur
    -------  ------------  -----------  -------
          1           0.5               ...
    >>> log.epoch(2, 0.25)  # doctest: +ELLIPSIS
          2          0.25  -2.5000e-01  ...
    """

    _HEADER = (
        f"{'epoch':>7}  {'train_loss':>12}  {'change':>11}  {'dur':>7}\n"
        f"{'-' * 7}  {'-' * 12}  {'-' * 11}  {'-' * 7}"
    )

    def __init__(self, verbose, file=None):
        self.verbose = verbose
        self.file = file
        self._last_loss = None
        self._last_time = time.perf_counter()

    def epoch(self, epoch, loss):
        """Report ``epoch`` (1-based) with its training loss."""
        now = time.perf_counter()
        if self.verbose > 0:
            if self._last_loss is None:
                self._print(self._HEADER)
            change = "" if self._last_loss is None else f"{loss - self._last_loss:.4e}"
            seconds = now - self._last_time
            self._print(f"{epoch:>7d}  {loss:>12.8g}  {change:>11}  {seconds:>7.4f}")
        self._last_loss, self._last_time = loss, now

    def message(self, text):
        """Print a line of the log (e.g. why training stopped)."""
        if self.verbose > 0:
            self._print(text)

    def _print(self, text):
        print(text, file=self.file if self.file is not None else sys.stdout)
