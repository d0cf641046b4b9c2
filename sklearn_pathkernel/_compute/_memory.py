"""Refuse results that cannot fit in memory before allocating them.

A 100,000-row kernel is 80 GB of float64: allocating it would either fail
deep inside numpy or push the machine into swap. The check compares the
result's size with the memory the operating system says is available and
fails first, saying how big the result is and what avoids it.
"""

import psutil


def available_memory():
    """Bytes of memory available to a new allocation without swapping.

    psutil's ``virtual_memory().available``, which reads the operating
    system's own estimate on Linux, macOS and Windows alike.

    Examples
    --------
    >>> from sklearn_pathkernel._compute._memory import available_memory
    >>> available_memory() > 0
    True
    """
    return psutil.virtual_memory().available


def check_result_fits(shape, *, itemsize=8, what, remedy):
    """Raise ``MemoryError`` when an array of ``shape`` cannot fit in memory.

    Parameters
    ----------
    shape : tuple of int
        Shape of the result about to be allocated.
    itemsize : int, default=8
        Bytes per element (float64).
    what : str
        What the result is, for the message (e.g. "The path kernel").
    remedy : str
        The option that avoids the allocation, for the message.

    Examples
    --------
    >>> from sklearn_pathkernel._compute._memory import check_result_fits
    >>> check_result_fits((10, 10), what="The kernel", remedy="")
    >>> check_result_fits((10**7, 10**7), what="The kernel", remedy="Use less.")
    Traceback (most recent call last):
    ...
    MemoryError: The kernel of shape (10000000, 10000000) needs 745058.1 GiB, more...
    """
    needed = itemsize
    for size in shape:
        needed *= int(size)
    available = available_memory()
    if needed <= available:
        return
    raise MemoryError(
        f"{what} of shape {tuple(int(s) for s in shape)} needs "
        f"{needed / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB of "
        f"memory available. {remedy}"
    )
