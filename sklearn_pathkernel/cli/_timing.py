"""Wall-clock timing of the demo's steps."""

import time


class Timer:
    """``with Timer() as t: ...``; then ``t.seconds`` and ``t.text``.

    Examples
    --------
    >>> from sklearn_pathkernel.cli._timing import Timer
    >>> with Timer() as t:
    ...     pass
    >>> t.seconds >= 0, t.text
    (True, '0.00')
    """

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start

    @property
    def text(self):
        """The seconds as the demo's table prints them."""
        return f"{self.seconds:.2f}"
