"""``cli._paths``: one check, before any work, for output files and folders."""

import os

import numpy as np
import pytest

from sklearn_pathkernel.cli._errors import CLIError
from sklearn_pathkernel.cli._paths import check_writable, save_array


def test_file_paths(tmp_path):
    check_writable(str(tmp_path / "K.npy"), "--output")  # new file
    (tmp_path / "old.npy").write_text("")
    check_writable(str(tmp_path / "old.npy"), "--output")  # replaced
    with pytest.raises(CLIError, match="--output .* is a directory; give a file name"):
        check_writable(str(tmp_path), "--output")
    with pytest.raises(CLIError, match="the directory .*no.* does not exist"):
        check_writable(str(tmp_path / "no" / "K.npy"), "--test-output")
    with pytest.raises(CLIError, match="old.npy is not a directory"):
        check_writable(str(tmp_path / "old.npy" / "K.npy"), "--output")
    assert not (tmp_path / "no").exists()


def test_directory_paths(tmp_path):
    folder = tmp_path / "a" / "b"
    check_writable(str(folder), "--output", directory=True)
    assert folder.is_dir()  # created, with its parents
    check_writable(str(folder), "--output", directory=True)  # exists already
    (tmp_path / "file").write_text("")
    with pytest.raises(CLIError, match="file is not a directory"):
        check_writable(str(tmp_path / "file"), "--output", directory=True)
    with pytest.raises(CLIError, match="cannot create the --output directory"):
        check_writable(str(tmp_path / "file" / "x"), "--output", directory=True)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes anywhere"
)
def test_read_only_paths(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        for directory in (False, True):
            path = str(folder if directory else folder / "K.npy")
            with pytest.raises(CLIError, match="permission denied"):
                check_writable(path, "--output", directory=directory)
    finally:
        folder.chmod(0o700)


def test_save_array_writes_exactly_the_path(tmp_path):
    path = tmp_path / "K.out"
    save_array(str(path), np.eye(2))
    np.testing.assert_array_equal(np.load(path), np.eye(2))
    assert not (tmp_path / "K.out.npy").exists()
    with pytest.raises(CLIError, match="cannot write"):
        save_array(str(tmp_path / "no" / "K.npy"), np.eye(2))
