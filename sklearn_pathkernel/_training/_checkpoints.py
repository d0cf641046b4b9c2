"""Where a trajectory keeps its checkpoints and step records: RAM or a file.

A checkpoint is one flat CPU vector of ``n_parameters`` numbers. In memory
they are a list of tensors. On disk they are the rows of one raw file
(``checkpoints-*.bin`` in the chosen directory) mapped with ``numpy.memmap``,
grown by doubling, so training holds one vector at a time and the operating
system pages the rest out; reading checkpoint ``k`` copies one row.

Every step's record (its batch, batch weights and loss derivatives) is one
row per batch row, ``(index, weight, derivatives)``, in one growable array
(:class:`RecordStore`): in memory, or in a file ``records-*.bin`` mapped the
same way. Only each step's size and where its rows end stay in memory (16
bytes a step).

The files are scratch (mode 0600, randomly named): a store deletes its file
when it is garbage collected (when the estimator that owns the trajectory
dies, or refits), and pickling embeds what they hold, so a saved estimator
never depends on them. A store kept in memory moves itself to a file in the
system's temporary directory once it outgrows :data:`SPILL_BYTES` (1 GiB),
so that a long minibatch run does not fill the RAM.
"""

import os
import tempfile
import weakref

import numpy as np
import torch

SPILL_BYTES = 1 << 30

# Per step: its size eps_t and the end of its rows in the record array.
_STEP = np.dtype([("size", np.float64), ("end", np.int64)])
_FIELDS = ("batch", "batch_weights", "output_gradients")


def check_directory(directory):
    """``directory`` (``trajectory_dir``) as a str, created when missing.

    Raises ValueError, naming the parameter and the path, when it (or a
    folder above it) is a file: before training, not at its first step.
    """
    path = os.fspath(directory)
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(
            f"trajectory_dir={path!r} is a file, not a directory. Pass a "
            "directory (it is created when missing) for the memory-mapped "
            "path, or None to keep the path in memory."
        ) from None
    return path


class GrowableArray:
    """Rows of one dtype and shape, appended in blocks, grown by doubling.

    In memory (a numpy array) or, with ``prefix``, in a raw scratch file
    ``{prefix}*.bin`` in ``directory`` (the temporary one when None), mapped
    with ``numpy.memmap``: created with mode 0600 under a random name,
    deleted when the array is garbage collected.
    """

    def __init__(
        self, dtype, row_shape=(), *, prefix=None, directory=None, capacity=16
    ):
        self.dtype, self.row_shape = np.dtype(dtype), tuple(row_shape)
        self.path = None
        if prefix is not None:
            self.path = _scratch_file(prefix, directory)
            self._cleanup = weakref.finalize(self, _remove, self.path)
        self._data = None
        self._count = 0
        self._grow(max(16, capacity))

    def __len__(self):
        return self._count

    def view(self):
        """The rows so far, a view (of the file, on disk): copy what you keep."""
        return self._data[: self._count]

    def extend(self, rows):
        """Append ``rows``, an array of shape ``(n, *row_shape)``."""
        n = len(rows)
        if self._count + n > len(self._data):
            self._grow(max(2 * len(self._data), self._count + n))
        self._data[self._count : self._count + n] = rows
        self._count += n

    def truncate(self, n):
        """Forget rows ``n`` and later."""
        self._count = min(self._count, n)

    def to_file(self, prefix, directory):
        """A copy of this array in a new scratch file."""
        moved = GrowableArray(
            self.dtype,
            self.row_shape,
            prefix=prefix,
            directory=directory,
            capacity=2 * self._count,
        )
        moved.extend(self.view())
        return moved

    def _grow(self, capacity):
        shape = (capacity, *self.row_shape)
        old = self._data
        if self.path is None:
            self._data = np.empty(shape, self.dtype)
            if old is not None:
                self._data[: self._count] = old[: self._count]
            return
        if old is not None:
            old.flush()
        self._data = old = None  # unmap before resizing the file
        with open(self.path, "r+b") as f:
            f.truncate(capacity * self.dtype.itemsize * int(np.prod(self.row_shape)))
        self._data = np.memmap(self.path, dtype=self.dtype, mode="r+", shape=shape)


class CheckpointStore:
    """Flat parameter vectors, appended one at a time, read by index.

    Parameters
    ----------
    directory : str, os.PathLike or None
        Keep the vectors in a memory-mapped file in this directory; in
        memory (up to :data:`SPILL_BYTES`) when None.
    """

    def __init__(self, directory=None):
        self.directory = None if directory is None else check_directory(directory)
        self._rows = []  # in memory
        self._file = None  # on disk: a GrowableArray of shape (n, d)

    @property
    def on_disk(self):
        """Whether the vectors live in a memory-mapped file."""
        return self._file is not None

    @property
    def path(self):
        """The file holding the vectors, or None in memory."""
        return None if self._file is None else self._file.path

    def __len__(self):
        return len(self._rows) if self._file is None else len(self._file)

    def __getitem__(self, k):
        k = range(len(self))[k]  # negative indices, and IndexError
        if self._file is None:
            return self._rows[k]
        return torch.from_numpy(np.array(self._file.view()[k]))

    def append(self, flat):
        """Keep ``flat`` (a CPU tensor nobody else changes) as the next row."""
        if self._file is None and (
            self.directory is not None
            or (len(self) + 1) * flat.numel() * flat.element_size() > SPILL_BYTES
        ):
            self.to_disk(flat)
        if self._file is None:
            self._rows.append(flat)
        else:
            self._file.extend(flat.numpy()[None])

    def truncate(self, n):
        """Forget rows ``n`` and later."""
        del self._rows[n:]
        if self._file is not None:
            self._file.truncate(n)

    def matrix(self):
        """Every row as one (n, d) tensor (a view of the file on disk)."""
        if self._file is None:
            return torch.stack(self._rows) if self._rows else None
        return torch.from_numpy(np.asarray(self._file.view()))

    def to_disk(self, like):
        """Move to a new file in ``directory`` (the temporary one when None)."""
        rows, self._rows = self._rows, []
        self._file = GrowableArray(
            like.numpy().dtype,
            (like.numel(),),
            prefix="checkpoints-",
            directory=self.directory,
            capacity=2 * len(rows),
        )
        for row in rows:  # one at a time: no second copy of them all
            self._file.extend(row.numpy()[None])


#: Steps a :class:`RecordStore` keeps as tensors before it packs them.
PENDING_STEPS = 256


class RecordStore:
    """Every step's record (a ``Step``), appended one at a time, read by index.

    The rows of all the steps' batches, one structured record ``(batch,
    batch_weights, output_gradients)`` per row, are one
    :class:`GrowableArray`: in memory until it would pass
    :data:`SPILL_BYTES`, then in a file ``records-*.bin`` (straight there
    with ``directory``, or once :meth:`to_disk` is called). Per step, its
    size and the end of its rows stay in memory. The last steps, up to
    :data:`PENDING_STEPS`, wait as the tensors they came as, and are packed
    together. Reading step ``t`` copies
    its rows into new tensors, bit for bit those that were appended.

    Parameters
    ----------
    directory : str, os.PathLike or None
        Keep the rows in a memory-mapped file in this directory.
    """

    def __init__(self, directory=None):
        self.directory = None if directory is None else check_directory(directory)
        self._steps = GrowableArray(_STEP)
        self._rows = None  # created by the first step, which gives the dtype
        self._wants_disk = directory is not None
        # The last steps as they came, packed into rows PENDING_STEPS at a
        # time: packing costs per call, not per row, so one call per step
        # would cost a small network a few percent of its training time.
        self._pending = []

    @property
    def on_disk(self):
        """Whether the rows live in a memory-mapped file."""
        return self.path is not None

    @property
    def path(self):
        """The file holding the rows, or None in memory."""
        self.flush()
        return None if self._rows is None else self._rows.path

    def __len__(self):
        return len(self._steps) + len(self._pending)

    def __getitem__(self, t):
        """Step ``t``: ``(step_size, batch, batch_weights, output_gradients)``."""
        t = range(len(self))[t]  # negative indices, and IndexError
        self.flush()
        steps = self._steps.view()
        start = int(steps["end"][t - 1]) if t else 0
        rows = self._rows.view()[start : steps["end"][t]]
        return (
            float(steps["size"][t]),
            *(torch.from_numpy(np.array(rows[field])) for field in _FIELDS),
        )

    def step_sizes(self):
        """``eps_t`` of every step, a float64 array."""
        self.flush()
        return np.array(self._steps.view()["size"])

    def append(self, step):
        """Keep ``step``, a ``Step`` (or a tuple in its order), as the next one."""
        step = tuple(step)
        if self._pending and _kind(step) != _kind(self._pending[0]):
            raise ValueError(
                f"A step's records {_kind(step)} differ from the path's "
                f"{_kind(self._pending[0])}."
            )
        self._pending.append(step)
        if len(self._pending) >= PENDING_STEPS:
            self.flush()

    def flush(self):
        """Pack the pending steps into rows."""
        pending, self._pending = self._pending, []
        if pending:
            sizes, batches, weights, gradients = zip(*pending)
            self.extend(
                sizes,
                [len(batch) for batch in batches],
                *(torch.cat(parts) for parts in (batches, weights, gradients)),
            )

    def extend(self, sizes, lengths, batch, batch_weights, output_gradients):
        """Append steps of ``sizes`` and ``lengths`` whose rows are concatenated.

        The arguments are those of :meth:`packed`.
        """
        self.flush()
        rows = _records(batch, batch_weights, output_gradients)
        if self._rows is None:
            self._rows = GrowableArray(rows.dtype)
        if rows.dtype != self._rows.dtype:
            raise ValueError(
                f"A step's records {rows.dtype} differ from the path's "
                f"{self._rows.dtype}."
            )
        if (len(self._rows) + len(rows)) * rows.itemsize > SPILL_BYTES:
            self._wants_disk = True
        if self._wants_disk:
            self.to_disk()
        steps = np.empty(len(sizes), _STEP)
        steps["size"] = sizes
        steps["end"] = len(self._rows) + np.asarray(lengths, np.int64).cumsum()
        self._rows.extend(rows)
        self._steps.extend(steps)

    def truncate(self, n):
        """Forget steps ``n`` and later."""
        self.flush()
        self._steps.truncate(n)
        if self._rows is not None:
            self._rows.truncate(int(self._steps.view()["end"][-1]) if n else 0)

    def shift_batches(self, first, offset):
        """Add ``offset`` to the row indices of steps ``first`` and later, in place.

        A continued path's steps index the rows of their own call; the
        kernel machine keeps every call's rows, concatenated.
        """
        self.flush()
        if first >= len(self) or not offset:
            return
        start = int(self._steps.view()["end"][first - 1]) if first else 0
        end = int(self._steps.view()["end"][-1])
        self._rows.view()["batch"][start:end] += offset

    def to_disk(self):
        """Move the rows to a file in ``directory`` (the temporary one when None).

        Before the first step, they go there when it comes.
        """
        self._wants_disk = True
        if self._rows is not None and self._rows.path is None:
            self._rows = self._rows.to_file("records-", self.directory)

    def packed(self):
        """``(sizes, lengths, batch, batch_weights, output_gradients)``.

        Step sizes and batch lengths as lists, the three fields of every
        step concatenated into new tensors (None without steps): the form a
        trajectory pickles its records in.
        """
        self.flush()
        if not len(self):
            return [], [], None, None, None
        steps = self._steps.view()
        rows = self._rows.view()[: steps["end"][-1]]
        return (
            steps["size"].tolist(),
            np.diff(steps["end"], prepend=0).tolist(),
            *(torch.from_numpy(np.array(rows[field])) for field in _FIELDS),
        )


def _kind(step):
    """The dtype and row shape of each of a step's tensors."""
    return [(part.dtype, part.shape[1:]) for part in step[1:]]


def _records(*tensors):
    """The rows of ``batch, batch_weights, output_gradients`` as one array."""
    arrays = [t.detach().cpu().numpy() for t in tensors]
    dtype = np.dtype([(f, a.dtype, a.shape[1:]) for f, a in zip(_FIELDS, arrays)])
    rows = np.empty(len(arrays[0]), dtype)
    for field, array in zip(_FIELDS, arrays):
        rows[field] = array
    return rows


def _scratch_file(prefix, directory):
    """A new empty file ``{prefix}*.bin`` (mode 0600, random name)."""
    directory = directory or tempfile.gettempdir()
    os.makedirs(directory, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".bin", dir=directory)
    os.close(fd)
    return path


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
