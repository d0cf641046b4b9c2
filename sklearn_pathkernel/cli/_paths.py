"""Output paths: checked before any work is done, and written."""

import os

import numpy as np

from ._errors import CLIError


def check_writable(path, option, *, directory=False):
    """Fail before any work when ``path`` cannot be written.

    Parameters
    ----------
    path : str
        A file to (over)write, or with ``directory=True`` a folder to write
        files into.
    option : str
        The option that named it, for the message (e.g. ``"--output"``).
    directory : bool, default=False
        False: ``path`` is a file, and its folder must exist already.
        True: ``path`` is a folder, created (with its parents) when missing.

    Raises
    ------
    CLIError
        When ``path`` (or its folder) is not a directory, does not exist or
        cannot be written.

    Examples
    --------
    >>> import os, tempfile
    >>> from sklearn_pathkernel.cli._paths import check_writable
    >>> folder = tempfile.mkdtemp()
    >>> check_writable(os.path.join(folder, "K.npy"), "--output")
    >>> check_writable(os.path.join(folder, "plots"), "--output", directory=True)
    >>> from sklearn_pathkernel.cli._errors import CLIError
    >>> try:
    ...     check_writable(os.path.join(folder, "no", "K.npy"), "--output")
    ... except CLIError as exc:
    ...     print(exc)
    cannot write --output .../no/K.npy: the directory .../no does not exist
    """
    if directory:
        folder = path
        _make_directory(path, option)
    else:
        if os.path.isdir(path):
            raise CLIError(f"{option} {path} is a directory; give a file name")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.exists(folder):
            raise CLIError(
                f"cannot write {option} {path}: the directory {folder} does not exist"
            )
    if not os.path.isdir(folder):
        raise CLIError(f"cannot write {option} {path}: {folder} is not a directory")
    replaced = path if os.path.exists(path) and not directory else folder
    if not (os.access(folder, os.W_OK) and os.access(replaced, os.W_OK)):
        raise CLIError(f"cannot write {option} {path}: permission denied")


def _make_directory(path, option):
    if os.path.exists(path) and not os.path.isdir(path):
        raise CLIError(f"cannot write {option} {path}: {path} is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise CLIError(
            f"cannot create the {option} directory {path}: {exc.strerror or exc}"
        ) from None


def save_array(path, array):
    """``np.save`` to exactly ``path`` (no ``.npy`` appended).

    Raises
    ------
    CLIError
        When the file cannot be written.
    """
    try:
        with open(path, "wb") as f:
            np.save(f, array)
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror or exc}") from None
