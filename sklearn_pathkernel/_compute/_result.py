"""Where a kernel is written: a new array in memory, or a ``.npy`` file on disk.

A kernel of 100,000 rows is 80 GB in float64: more than memory, and hours of
work that a crash or Ctrl-C would lose. Given ``out=`` a path, the kernel is
written strip by strip into a ``.npy`` file through
``numpy.lib.format.open_memmap``, and a small JSON sidecar next to it
(``<out>.progress.json``) records which rows are done, with a CRC-32 of each
finished strip's bytes. The same call after an interruption opens the file
again and computes only the missing rows; the sidecar goes away when the
kernel is complete. The sidecar holds a fingerprint of the call (shape,
result dtype, the rows, the checkpoint weights, the first and last
checkpoints' parameters), so a different call never resumes a file it did
not start: it starts the file afresh, as a new file put in place of the old
one (whoever still maps the old one keeps its bits).

Only what can be proven is resumed: the file's ``.npy`` header must hold the
call's shape and dtype in C order and its size must be the header's plus the
data's, else the whole file is computed again; a strip whose bytes no longer
match their checksum is computed again; a sidecar that is not the expected
JSON object is damaged. Each case warns, naming the path.

One call writes a kernel file at a time: an advisory lock
(``filelock.FileLock`` on ``<out>.lock``) is held from :func:`open_result`
until :meth:`KernelResult.close`, and a second call waits for it up to
``LOCK_TIMEOUT`` seconds. The holder's pid and host sit in
``<out>.lock.holder`` meanwhile, for the second call's message (the lock
file itself is emptied by waiters on some platforms). The lock file stays:
removing it could let a waiter and a newcomer hold two different files.

Strips are cut on the fixed tile grid (``_compute/_blocking.py``), so rows resumed under
another ``working_memory`` or ``n_jobs`` hold the same bits as if the kernel
had been computed in one go.
"""

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import uuid
import warnings
import zlib

import filelock
import numpy as np
import torch

from ._memory import check_result_fits

#: Seconds a call waits for another one writing the same ``out`` file.
LOCK_TIMEOUT = 60

_SIDECAR_SUFFIX = ".progress.json"
_LOCK_SUFFIX = ".lock"
_HOLDER_SUFFIX = ".lock.holder"
# Version 2: every finished strip is [r0, r1, crc32 of its bytes].
_FORMAT = "sklearn_pathkernel kernel progress 2"


class KernelResult:
    """The array a kernel is written into, and which of its rows are done.

    Use :func:`open_result` to make one, and :meth:`close` it (or use it as a
    context manager) when the call ends, however it ends: a file's lock is
    released then.

    Attributes
    ----------
    array : ndarray or numpy.memmap
        Where strips go.
    """

    def __init__(self, array, file=None, done=()):
        self.array = array
        self._file = file  # a _KernelFile for a path, else None
        self._done = [tuple(entry) for entry in done]  # (r0, r1, crc or None)

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.close()

    def is_done(self, r0, r1):
        """Whether rows ``r0:r1`` were all written by an earlier call."""
        return any(a <= r0 and r1 <= b for a, b, _ in self._done)

    def mark_done(self, r0, r1):
        """Record rows ``r0:r1`` as written (flushed to disk first)."""
        if self._file is None:
            self._done.append((r0, r1, None))
            return
        self.array.flush()
        self._done.append((r0, r1, self._file.checksum(self.array, r0, r1)))
        self._file.record(self._done)

    def finish(self):
        """The kernel is complete: flush it and remove the sidecar."""
        if self._file is not None:
            self.array.flush()
            _remove(self._file.sidecar)

    def close(self):
        """Release the file's lock; the array stays usable. Idempotent."""
        if self._file is not None:
            self._file.release()


class _KernelFile:
    """A kernel file's sidecar, fingerprint and lock."""

    def __init__(self, path, fingerprint, upper, lock):
        self.path = path
        self.sidecar = path + _SIDECAR_SUFFIX
        self.fingerprint = fingerprint
        # Symmetric kernels: the lower triangle is mirrored after the last
        # strip, so a strip's checksum covers its entries on and above the
        # diagonal only.
        self.upper = upper
        self._lock = lock

    def checksum(self, array, r0, r1):
        """CRC-32 of rows ``r0:r1`` (from the diagonal on when ``upper``)."""
        if not self.upper:
            return zlib.crc32(np.ascontiguousarray(array[r0:r1]))
        crc = 0
        for i in range(r0, r1):
            crc = zlib.crc32(np.ascontiguousarray(array[i, i:]), crc)
        return crc

    def record(self, done):
        _write_json(
            self.sidecar,
            {
                "format": _FORMAT,
                "fingerprint": self.fingerprint,
                "done": [list(entry) for entry in sorted(done)],
            },
        )

    def release(self):
        if self._lock is not None:
            lock, self._lock = self._lock, None
            _remove(self.path + _HOLDER_SUFFIX)
            lock.release()


def open_result(out, shape, *, dtype, fingerprint, what, remedy, symmetric=False):
    """The array to write a kernel of ``shape`` into.

    Parameters
    ----------
    out : None, str, os.PathLike or ndarray
        None: a new array in memory, after checking that it fits. A path: a
        ``.npy`` file, resumed when an earlier call with the same
        fingerprint left it unfinished and what it wrote can be checked,
        else created. The file is locked until the result is closed; a call
        that finds it locked by another waits up to ``LOCK_TIMEOUT`` (60)
        seconds, then raises ``TimeoutError`` naming the path and the
        holder's pid and host. An array (for example a ``numpy.memmap``) of
        exactly ``shape`` and ``dtype``: every entry written in place, every
        row computed.
    shape : tuple of int
    dtype : numpy dtype
        Of the result: float64, or float32 to halve its size.
    fingerprint : callable
        Returns a string that identifies the call; asked only for a path.
    what, remedy : str
        For the message when an in-memory result does not fit.
    symmetric : bool, default=False
        The lower triangle is filled after the last strip (by mirroring):
        each strip's checksum covers its entries on and above the diagonal.

    Returns
    -------
    result : KernelResult
        Close it when the call ends, whether it succeeded or not.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from sklearn_pathkernel._compute._result import open_result
    >>> path = os.path.join(tempfile.mkdtemp(), "K.npy")
    >>> with open_result(path, (3, 3), dtype=np.float32,
    ...                  fingerprint=lambda: "demo", what="K", remedy="") as result:
    ...     result.array[:2] = 1.0
    ...     result.mark_done(0, 2)
    >>> with open_result(path, (3, 3), dtype=np.float32, fingerprint=lambda: "demo",
    ...                  what="K", remedy="") as result:
    ...     result.is_done(0, 2)  # resumed
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
    path = os.fspath(out)
    _check_folder(path)
    file = _KernelFile(path, None, symmetric, _acquire(path))
    try:
        file.fingerprint = fingerprint()
        return _open_file(file, tuple(shape), dtype)
    except BaseException:
        file.release()
        raise


def _open_file(file, shape, dtype):
    resumed = _resume(file, shape, dtype)
    if resumed is not None:
        return KernelResult(resumed[0], file, resumed[1])
    _check_disk_space(file.path, shape, dtype)
    # A new file put in place of the old one: whoever still maps the old one
    # (the caller that wrote it, normalising it in place) keeps its bits.
    temporary = f"{file.path}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        array = np.lib.format.open_memmap(
            temporary, mode="w+", dtype=dtype, shape=shape
        )
        os.replace(temporary, file.path)
    except BaseException:
        _remove(temporary)
        raise
    file.record([])
    return KernelResult(array, file)


def _resume(file, shape, dtype):
    """``(array, done)`` when ``file`` can be resumed, else None.

    Warns when something was there that cannot be trusted.
    """
    progress, problem = _load_progress(file.sidecar, shape[0])
    if problem is not None:
        _warn_afresh(f"the progress file {file.sidecar} is damaged ({problem})", file)
        return None
    if progress is None or progress["fingerprint"] != file.fingerprint:
        return None  # nothing to resume, or another call's file: start afresh
    problem = _file_problem(file.path, shape, dtype)
    if problem is not None:
        _warn_afresh(f"{file.path} does not match its progress file ({problem})", file)
        return None
    array = np.lib.format.open_memmap(file.path, mode="r+")
    done, bad = [], []
    for r0, r1, crc in progress["done"]:
        (done if file.checksum(array, r0, r1) == crc else bad).append((r0, r1, crc))
    if bad:
        rows = ", ".join(f"{r0}:{r1}" for r0, r1, _ in bad)
        warnings.warn(
            f"out: rows {rows} of {file.path} do not match their checksums in "
            f"{file.sidecar}; computing them again.",
            UserWarning,
            stacklevel=4,
        )
    return array, done


def _warn_afresh(problem, file):
    warnings.warn(
        f"out: {problem}; computing {file.path} afresh.", UserWarning, stacklevel=5
    )


def _load_progress(sidecar, n_rows):
    """``(progress, problem)``: the sidecar's content (None when there is
    none), and what makes it unusable (None when nothing)."""
    try:
        progress = _read_json(sidecar)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as error:
        return None, f"not JSON: {error}"
    if not isinstance(progress, dict):
        return None, f"a JSON {type(progress).__name__}, not an object"
    if progress.get("format") != _FORMAT:
        return None, f"its format is not {_FORMAT!r}"
    if not isinstance(progress.get("fingerprint"), str):
        return None, "no fingerprint"
    done = progress.get("done")
    if not isinstance(done, list) or not all(_is_strip(e, n_rows) for e in done):
        return None, f"the finished rows are not [[r0, r1, crc32], ...] within {n_rows}"
    return progress, None


def _is_strip(entry, n_rows):
    """Whether ``entry`` is ``[r0, r1, crc]``: rows of the kernel, a CRC-32."""
    return (
        isinstance(entry, list)
        and len(entry) == 3
        and all(type(value) is int for value in entry)
        and 0 <= entry[0] < entry[1] <= n_rows
        and 0 <= entry[2] < 2**32
    )


def _file_problem(path, shape, dtype):
    """What keeps the ``.npy`` file at ``path`` from holding ``shape`` and
    ``dtype`` in C order, header and data whole; None when nothing does."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            if version not in ((1, 0), (2, 0)):
                return f"a .npy header of version {version}"
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            file_shape, fortran_order, file_dtype = read(file)
            offset = file.tell()
    except FileNotFoundError:
        return "the kernel file is missing"
    except (OSError, ValueError) as error:
        return f"no readable .npy header: {error}"
    if (file_shape, fortran_order, file_dtype) != (shape, False, dtype):
        order = "Fortran" if fortran_order else "C"
        return (
            f"its header says shape {file_shape}, dtype {file_dtype}, {order} "
            f"order, where the call writes shape {shape}, dtype {dtype}, C order"
        )
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != expected:
        return f"{size} bytes where its header says {expected}"
    return None


def _check_folder(path):
    """Fail at once, before any lock or file, when ``path`` cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"out: the folder {folder} does not exist.")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"out: the folder {folder} is not writable.")


def _acquire(path):
    """Lock ``path`` for this call, waiting up to ``LOCK_TIMEOUT`` seconds."""
    lock = filelock.FileLock(path + _LOCK_SUFFIX, timeout=LOCK_TIMEOUT)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise TimeoutError(
            f"out: {path} is being written by another call ({_holder(path)}, "
            f"which holds {path}{_LOCK_SUFFIX}); gave up after waiting "
            f"{LOCK_TIMEOUT} s. Let that call finish, or write to another path."
        ) from None
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname()}
        _write_json(path + _HOLDER_SUFFIX, holder)
    except BaseException:
        lock.release()
        raise
    return lock


def _holder(path):
    """Who holds the lock on ``path``, as its holder file says."""
    try:
        holder = _read_json(path + _HOLDER_SUFFIX)
        return f"pid {int(holder['pid'])} on {holder['host']}"
    except (OSError, ValueError, TypeError, KeyError):
        # Between a holder's lock and its note, or a note unreadable.
        return "a process that has not yet said which"


def _check_disk_space(path, shape, dtype):
    folder = os.path.dirname(os.path.abspath(path))
    needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    free = shutil.disk_usage(folder).free
    if os.path.exists(path):
        free += os.path.getsize(path)  # it is about to be replaced
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
    with open(path) as file:
        return json.load(file)


def _write_json(path, content):
    """Write atomically: an interruption leaves the old file or the new one.

    The temporary file has a name of its own (``tempfile.mkstemp``), so two
    writers never share it.
    """
    folder, name = os.path.split(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(
        prefix=name + ".", suffix=".tmp", dir=folder
    )
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump(content, file)
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def _remove(path):
    """Remove ``path``; already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
