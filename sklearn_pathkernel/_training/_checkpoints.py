"""Where a trajectory keeps its checkpoints: in memory, or in a memory-mapped file.

A checkpoint is one flat CPU vector of ``n_parameters`` numbers. In memory
they are a list of tensors. On disk they are the rows of one raw file
(``checkpoints-*.bin`` in the chosen directory) mapped with ``numpy.memmap``,
grown by doubling, so training holds one vector at a time and the operating
system pages the rest out; reading checkpoint ``k`` copies one row. The file
is scratch: the store deletes it when it is garbage collected (when the
estimator that owns the trajectory dies, or refits), and pickling embeds the
parameters, so a saved estimator never depends on it.

A store kept in memory moves itself to a file in the system's temporary
directory once it outgrows :data:`SPILL_BYTES` (1 GiB), so that a long
minibatch run does not fill the RAM.
"""

import os
import tempfile
import weakref

import numpy as np
import torch

SPILL_BYTES = 1 << 30


class CheckpointStore:
    """Flat parameter vectors, appended one at a time, read by index.

    Parameters
    ----------
    directory : str, os.PathLike or None
        Keep the vectors in a memory-mapped file in this directory; in
        memory (up to :data:`SPILL_BYTES`) when None.
    """

    def __init__(self, directory=None):
        self.directory = None if directory is None else os.fspath(directory)
        self._rows = []  # in memory
        self._map = None  # on disk: np.memmap of shape (capacity, d)
        self._path = None
        self._count = 0
        self._cleanup = None

    @property
    def on_disk(self):
        """Whether the vectors live in a memory-mapped file."""
        return self._map is not None

    @property
    def path(self):
        """The file holding the vectors, or None in memory."""
        return self._path

    def __len__(self):
        return self._count

    def __getitem__(self, k):
        k = range(self._count)[k]  # negative indices, and IndexError
        if self._map is None:
            return self._rows[k]
        return torch.from_numpy(np.array(self._map[k]))

    def append(self, flat):
        """Keep ``flat`` (a CPU tensor nobody else changes) as the next row."""
        if self._map is None and (
            self.directory is not None
            or (self._count + 1) * flat.numel() * flat.element_size() > SPILL_BYTES
        ):
            self.to_disk(flat)
        if self._map is None:
            self._rows.append(flat)
        else:
            if self._count == len(self._map):
                self._grow(2 * self._count)
            self._map[self._count] = flat.numpy()
        self._count += 1

    def truncate(self, n):
        """Forget rows ``n`` and later."""
        self._count = min(self._count, n)
        del self._rows[self._count :]

    def matrix(self):
        """Every row as one (n, d) tensor (a view of the file on disk)."""
        if self._map is None:
            return torch.stack(self._rows) if self._rows else None
        return torch.from_numpy(np.asarray(self._map[: self._count]))

    def to_disk(self, like):
        """Move to a new file in ``directory`` (the temporary one when None)."""
        directory = self.directory or tempfile.gettempdir()
        os.makedirs(directory, exist_ok=True)
        fd, self._path = tempfile.mkstemp(
            prefix="checkpoints-", suffix=".bin", dir=directory
        )
        os.close(fd)
        self._cleanup = weakref.finalize(self, _remove, self._path)
        self._dtype = like.numpy().dtype
        self._width = like.numel()
        rows, self._rows = self._rows, []
        self._grow(max(16, 2 * len(rows)))
        for k, row in enumerate(rows):
            self._map[k] = row.numpy()

    def _grow(self, capacity):
        if self._map is not None:
            self._map.flush()
        self._map = None  # unmap before resizing the file
        with open(self._path, "r+b") as f:
            f.truncate(capacity * self._width * self._dtype.itemsize)
        self._map = np.memmap(
            self._path, dtype=self._dtype, mode="r+", shape=(capacity, self._width)
        )


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
