"""Where a kernel is written: a new array in memory, or a ``.npy`` file on disk.

A kernel of 100,000 rows is 80 GB in float64: more than memory, and hours of
work that a crash or Ctrl-C would lose. Given ``out=`` a path, the kernel is
written strip by strip into a ``.npy`` file through
``numpy.lib.format.open_memmap``, and a small JSON sidecar next to it
(``<out>.progress.json``) records which rows are done. The same call after
an interruption opens the file again and computes only the missing rows; the
sidecar goes away when the kernel is complete. The sidecar holds a
fingerprint of the call (shape, result dtype, the rows, the checkpoint
weights, the first and last checkpoints' parameters), so a different call
never resumes a file it did not start: it starts the file afresh.

Strips are cut on the fixed tile grid (``_compute/_blocking.py``), so rows resumed under
another ``working_memory`` or ``n_jobs`` hold the same bits as if the kernel
had been computed in one go.
"""

import hashlib
import json
import os
import shutil

import numpy as np
import torch

from ._memory import check_result_fits

_SIDECAR_SUFFIX = ".progress.json"
_FORMAT = "sklearn_pathkernel kernel progress"


class KernelResult:
    """The array a kernel is written into, and which of its rows are done.

    Use :func:`open_result` to make one.

    Attributes
    ----------
    array : ndarray or numpy.memmap
        Where strips go.
    """

    def __init__(self, array, sidecar=None, fingerprint=None, done=()):
        self.array = array
        self._sidecar = sidecar
        self._fingerprint = fingerprint
        self._done = [tuple(rows) for rows in done]

    def is_done(self, r0, r1):
        """Whether rows ``r0:r1`` were all written by an earlier call."""
        return any(a <= r0 and r1 <= b for a, b in self._done)

    def mark_done(self, r0, r1):
        """Record rows ``r0:r1`` as written (flushed to disk first)."""
        self._done.append((r0, r1))
        if self._sidecar is None:
            return
        self.array.flush()
        _write_json(
            self._sidecar,
            {
                "format": _FORMAT,
                "fingerprint": self._fingerprint,
                "done": sorted(self._done),
            },
        )

    def finish(self):
        """The kernel is complete: flush it and remove the sidecar."""
        if self._sidecar is None:
            return
        self.array.flush()
        if os.path.exists(self._sidecar):
            os.remove(self._sidecar)


def open_result(out, shape, *, dtype, fingerprint, what, remedy):
    """The array to write a kernel of ``shape`` into.

    Parameters
    ----------
    out : None, str, os.PathLike or ndarray
        None: a new array in memory, after checking that it fits. A path: a
        ``.npy`` file, resumed when an earlier call with the same
        fingerprint left it unfinished, else created. An array (for example
        a ``numpy.memmap``) of exactly ``shape`` and ``dtype``: every entry
        written in place, every row computed.
    shape : tuple of int
    dtype : numpy dtype
        Of the result: float64, or float32 to halve its size.
    fingerprint : callable
        Returns a string that identifies the call; asked only for a path.
    what, remedy : str
        For the message when an in-memory result does not fit.

    Returns
    -------
    result : KernelResult

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from sklearn_pathkernel._compute._result import open_result
    >>> path = os.path.join(tempfile.mkdtemp(), "K.npy")
    >>> result = open_result(path, (3, 3), dtype=np.float32,
    ...                      fingerprint=lambda: "demo", what="K", remedy="")
    >>> result.array[:2] = 1.0
    >>> result.mark_done(0, 2)
    >>> open_result(path, (3, 3), dtype=np.float32, fingerprint=lambda: "demo",
    ...             what="K", remedy="").is_done(0, 2)  # resumed
    True
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(
            f"The kernel's dtype must be float32 or float64; got {dtype} instead."
        )
    if out is None:
        check_result_fits(shape, itemsize=dtype.itemsize, what=what, remedy=remedy)
        return KernelResult(np.zeros(shape, dtype=dtype))
    if isinstance(out, np.ndarray):
        if out.shape != tuple(shape) or out.dtype != dtype:
            raise ValueError(
                f"out must have shape {tuple(shape)} and dtype {dtype}; got shape "
                f"{out.shape} and dtype {out.dtype} instead."
            )
        return KernelResult(out)  # every entry is written: no need to clear it
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(
            "out must be None, a path to a .npy file or a NumPy array; got "
            f"{type(out).__name__} instead."
        )
    return _open_file(os.fspath(out), tuple(shape), dtype, fingerprint())


def _open_file(path, shape, dtype, fingerprint):
    sidecar = path + _SIDECAR_SUFFIX
    progress = _read_json(sidecar)
    if (
        progress is not None
        and progress.get("format") == _FORMAT
        and progress.get("fingerprint") == fingerprint
        and os.path.exists(path)
    ):
        array = np.lib.format.open_memmap(path, mode="r+")
        if array.shape == shape and array.dtype == dtype:
            return KernelResult(array, sidecar, fingerprint, progress["done"])
        del array
    _check_disk_space(path, shape, dtype)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    result = KernelResult(array, sidecar, fingerprint)
    _write_json(sidecar, {"format": _FORMAT, "fingerprint": fingerprint, "done": []})
    return result


def _check_disk_space(path, shape, dtype):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"out: the folder {folder} does not exist.")
    needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    free = shutil.disk_usage(folder).free
    if os.path.exists(path):
        free += os.path.getsize(path)  # it is about to be overwritten
    if needed > free:
        raise OSError(
            f"out: the kernel of shape {shape} needs {needed / 2**30:.1f} GiB on "
            f"disk, more than the {free / 2**30:.1f} GiB free in {folder}. Use "
            "dtype=np.float32 to halve it, or another folder."
        )


def fingerprint_of(*parts):
    """A short hex digest of arrays, tensors and plain values, in order.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_pathkernel._compute._result import fingerprint_of
    >>> fingerprint_of(np.ones(3), "x") == fingerprint_of(np.ones(3), "x")
    True
    >>> fingerprint_of(np.ones(3)) == fingerprint_of(np.zeros(3))
    False
    """
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.detach().cpu().contiguous().numpy()
        if isinstance(part, np.ndarray):
            digest.update(repr((part.shape, str(part.dtype))).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(repr(part).encode())
    return digest.hexdigest()[:32]


def _read_json(path):
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def _write_json(path, content):
    """Write atomically: an interruption leaves the old sidecar or the new one."""
    temporary = path + ".tmp"
    with open(temporary, "w") as file:
        json.dump(content, file)
    os.replace(temporary, path)
