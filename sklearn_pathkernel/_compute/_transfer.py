"""How a finished strip reaches the host: at once on the CPU, overlapped on CUDA.

A kernel's strip is summed on the device in float64 (``_kernels/_path.py``)
and then written into the result (``_compute/_result.py``), rows ``r0:r1``
from column ``c_start`` on, and recorded as done. On the CPU that write is
all there is. On a CUDA device a plain ``strip.cpu()`` makes the host wait
until the strip is finished, so the next strip's launches wait with it and
the device idles while the host writes. :class:`StripWriter` instead copies
each strip into one of two reused pinned host buffers, ``non_blocking`` on a
side stream that waits for an event recorded on the compute stream after
the strip's last operation, and writes the strip into the result only once
that copy has completed: when the next strip is handed in (its compute is
queued by then, so the device keeps busy while the host writes), and at the
end (:meth:`StripWriter.drain`).

What may be resumed depends on it: a strip is marked done (a file's sidecar
records it) only after its bytes are in the result. After an exception, or a
KeyboardInterrupt, strips whose copies have completed are written and
marked, in order; the rest are dropped, never marked, and an interrupted
kernel computes them again.

The copier is injected, so that the ordering can be tested on the CPU with
a fake whose completion the test controls (``tests/test_transfer.py``).
"""

import collections

import torch

#: Strips a :class:`StripWriter` leaves in flight after each hand-in: one,
#: so a CUDA device holds at most two strips' float64 arrays at a time (the
#: one being copied, the one being computed) and two pinned buffers suffice.
IN_FLIGHT = 1


class CudaCopier:
    """Copies device strips into pinned host buffers on a side stream.

    Parameters
    ----------
    device : torch.device
        The CUDA device the strips live on.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._compute._transfer import CudaCopier
    >>> if torch.cuda.is_available():
    ...     copier = CudaCopier(torch.device("cuda"))
    ...     buffer = copier.allocate(3)
    ...     strip = torch.ones(3, dtype=torch.float64, device="cuda")
    ...     copier.start(strip, buffer).wait()
    ...     assert buffer.tolist() == [1.0, 1.0, 1.0]
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)

    def allocate(self, numel):
        """A pinned float64 host buffer of ``numel`` numbers."""
        return torch.empty(numel, dtype=torch.float64, pin_memory=True)

    def start(self, strip, target):
        """Issue the copy of ``strip`` into ``target``; its handle, at once.

        The side stream waits for an event recorded on the compute stream
        now, after the strip's last operation; ``record_stream`` keeps the
        allocator from reusing the strip's memory before the copy has read it.
        """
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(ready)
            target.copy_(strip, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self.stream)
        strip.record_stream(self.stream)
        return _CudaCopy(copied)


class _CudaCopy:
    """A copy in flight: whether it has completed, and waiting for it."""

    def __init__(self, event):
        self._event = event

    def done(self):
        return self._event.query()

    def wait(self):
        self._event.synchronize()


class _Pending(collections.namedtuple("_Pending", "copy buffer target rows c_start")):
    """A strip whose copy was issued: where it goes once the copy completes."""


class StripWriter:
    """Writes finished strips into a kernel's result, in order.

    Use it as a context manager around the loop over strips: leaving it
    normally waits for the strips in flight and writes them; leaving it by
    an exception writes those whose copies have completed and drops the
    rest, never marking a strip done whose bytes did not arrive.

    Parameters
    ----------
    result : KernelResult
        From ``open_result``: ``result.array`` takes the strips and
        ``result.mark_done`` records them.
    device : torch.device
        Where the strips live. On CUDA a :class:`CudaCopier` overlaps the
        copies with the next strip's compute; on any other device each strip
        is written as it is handed in (``strip.cpu()``, a view on the CPU:
        no copy beyond the write itself).
    n_strips : int, optional
        How many strips will be handed in, when known: a single strip has
        nothing to overlap with, so it is written at once on every device
        (no pinned buffers to allocate).
    copier : object, optional
        Overrides the device's choice (and ``n_strips``'s):
        ``allocate(numel)`` returns a host float64 buffer;
        ``start(strip, target)`` issues the copy of ``strip`` into
        ``target`` (a view of a buffer) and returns a handle with ``done()``
        (completed?) and ``wait()``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn_pathkernel._compute._result import open_result
    >>> from sklearn_pathkernel._compute._transfer import StripWriter
    >>> result = open_result(None, (4, 3), dtype=np.float64,
    ...                      fingerprint=None, what="K", remedy="")
    >>> with StripWriter(result, torch.device("cpu")) as writer:
    ...     writer.put(torch.ones(2, 3, dtype=torch.float64), 0, 2, 0)
    ...     writer.put(torch.full((2, 2), 2.0, dtype=torch.float64), 2, 4, 1)
    >>> result.array
    array([[1., 1., 1.],
           [1., 1., 1.],
           [0., 2., 2.],
           [0., 2., 2.]])
    >>> result.is_done(0, 4)
    False
    >>> result.is_done(0, 2) and result.is_done(2, 4)
    True
    """

    def __init__(self, result, device, *, n_strips=None, copier=None):
        self.result = result
        overlap = n_strips is None or n_strips > 1
        if copier is None and overlap and torch.device(device).type == "cuda":
            copier = CudaCopier(device)
        self._copier = copier
        self._free = [None] * (IN_FLIGHT + 1)  # buffers, allocated on demand
        self._pending = collections.deque()

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self.drain()
        else:
            self.abandon()

    def put(self, strip, r0, r1, c_start):
        """Hand in the finished strip of rows ``r0:r1``, columns ``c_start:``.

        Without a copier the strip is written and marked done now. With one,
        its copy is issued, then the strips handed in before it are waited
        for and written, in order, leaving :data:`IN_FLIGHT` in flight.
        """
        if self._copier is None:
            self._write(strip.cpu(), r0, r1, c_start)
            return
        buffer = self._buffer_for(strip.numel())
        target = buffer[: strip.numel()].view(strip.shape)
        copy = self._copier.start(strip, target)
        self._pending.append(_Pending(copy, buffer, target, (r0, r1), c_start))
        while len(self._pending) > IN_FLIGHT:
            self._land(wait=True)

    def drain(self):
        """Wait for every strip in flight and write it, in order."""
        while self._pending:
            self._land(wait=True)

    def abandon(self):
        """Write the strips whose copies have completed, in order; drop the rest.

        For an exit by an exception: waits for nothing, and a device that
        cannot even say whether a copy completed has every strip dropped.
        """
        try:
            while self._pending and self._pending[0].copy.done():
                self._land(wait=False)
        except Exception:
            # The device cannot answer, or the result cannot be written:
            # the exception on its way out says why; nothing more is marked.
            pass
        self._pending.clear()

    def _buffer_for(self, numel):
        """A free buffer of at least ``numel`` numbers: reused, else (larger) new."""
        buffer = self._free.pop() if self._free else None
        if buffer is None or buffer.numel() < numel:
            buffer = self._copier.allocate(numel)
        return buffer

    def _land(self, wait):
        """Write the oldest strip in flight once its copy has completed."""
        if wait:  # interrupted here, the strip stays in flight for abandon()
            self._pending[0].copy.wait()
        pending = self._pending.popleft()  # never written twice, even on error
        self._write(pending.target, *pending.rows, pending.c_start)
        self._free.append(pending.buffer)

    def _write(self, host, r0, r1, c_start):
        self.result.array[r0:r1, c_start:] = host.numpy()
        self.result.mark_done(r0, r1)
