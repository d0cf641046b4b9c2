"""Reading a CSV file with a header row: the ``kernel`` command's input.

The file is split into fields by the standard ``csv`` module; numbers are
converted a whole block of cells at a time by NumPy. Every error names the
file, and a bad cell its column, its data row and its line in the file.
"""

import csv
from dataclasses import dataclass

import numpy as np

from ._errors import CLIError


@dataclass(frozen=True)
class CSVTable:
    """The data rows of a CSV file, as stripped strings.

    Attributes
    ----------
    path : str
        The file, for messages.
    columns : list of str
        The column names of the header row.
    cells : ndarray of str, shape (n_rows, n_columns)
        The fields of the data rows, stripped of surrounding spaces.
    lines : ndarray of int, shape (n_rows,)
        The line of each data row in the file (blank lines are skipped).
    """

    path: str
    columns: list
    cells: np.ndarray
    lines: np.ndarray

    def __len__(self):
        return len(self.cells)

    def where(self, row):
        """``"row 3 (line 5)"``: data row ``row`` (from 0), for messages."""
        return f"row {row + 1} (line {self.lines[row]})"

    def column(self, name):
        """The cells of column ``name``, shape (n_rows,)."""
        return self.cells[:, self.columns.index(name)]

    def numeric(self, names):
        """The columns ``names`` as a float64 array of shape (n_rows, len(names)).

        Raises
        ------
        CLIError
            Naming the first cell, row by row, that is empty or not a
            finite number: its column, row and line.
        """
        cells = self.cells[:, [self.columns.index(name) for name in names]]
        values, bad = parse_numbers(cells)
        if bad is None:
            return values
        row, column = bad
        text = str(cells[row, column])
        what = (
            "a missing value"
            if text == ""
            else f"{text!r}, which is not a finite number"
        )
        raise CLIError(
            f"{self.path}: non-numeric data in column {names[column]!r}, "
            f"{self.where(row)}: {what}"
        )


def parse_numbers(cells):
    """Convert string cells to float64, or find the first that is no number.

    Parameters
    ----------
    cells : ndarray of str, shape (n_rows,) or (n_rows, n_columns)

    Returns
    -------
    values : ndarray of float64 or None
        The numbers, when every cell is a finite number; else None.
    bad : tuple of int or None
        Else the index of the first cell (in row-major order) that is
        empty, not a number, or infinite or NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_pathkernel.cli._csv import parse_numbers
    >>> parse_numbers(np.array([["1", "2.5"], ["3", "1e3"]]))
    (array([[   1. ,    2.5],
           [   3. , 1000. ]]), None)
    >>> parse_numbers(np.array([["1", "2"], ["x", "nan"]]))
    (None, (1, 0))
    """
    try:
        values = np.asarray(cells, dtype=np.float64)
    except ValueError:  # some cell is no number: find the first below
        values = None
    if values is not None and np.isfinite(values).all():
        return values, None
    finite = np.vectorize(_is_finite_number, otypes=[bool])(cells)
    return None, tuple(int(i) for i in np.argwhere(~finite)[0])


def _is_finite_number(text):
    try:
        return bool(np.isfinite(np.float64(text)))
    except ValueError:
        return False


def read_csv(path, *, delimiter=","):
    """Read a CSV file with a header row, as strings.

    Blank lines are skipped; every other line must have as many fields as
    the header.

    Parameters
    ----------
    path : str
    delimiter : str, default=","

    Returns
    -------
    table : CSVTable

    Raises
    ------
    CLIError
        For a missing, unreadable or empty file, a header row that is
        missing (numbers only), has an unnamed or a repeated column, a row
        of the wrong length, or no data rows.

    Examples
    --------
    >>> import os, tempfile
    >>> from sklearn_pathkernel.cli._csv import read_csv
    >>> path = os.path.join(tempfile.mkdtemp(), "data.csv")
    >>> with open(path, "w") as f:
    ...     _ = f.write("x, label\\n1.5, a\\n\\n2, b\\n")
    >>> table = read_csv(path)
    >>> table.columns, table.numeric(["x"]).ravel(), table.where(1)
    (['x', 'label'], array([1.5, 2. ]), 'row 2 (line 4)')
    """
    header, rows, lines = _read_records(path, delimiter)
    _check_header(path, header)
    if not rows:
        raise CLIError(f"{path} has a header but no data rows")
    cells = np.char.strip(np.array(rows, dtype=str))
    return CSVTable(path, header, cells, np.asarray(lines))


def _read_records(path, delimiter):
    """The header (stripped), the data rows and their line numbers."""
    header, rows, lines = None, [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            for record in reader:
                if not any(field.strip() for field in record):
                    continue
                if header is None:
                    header = [field.strip() for field in record]
                elif len(record) != len(header):
                    raise CLIError(
                        f"{path}, line {reader.line_num}: expected {len(header)} "
                        f"fields (as in the header), found {len(record)}"
                    )
                else:
                    rows.append(record)
                    lines.append(reader.line_num)
    except FileNotFoundError:
        raise CLIError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CLIError(f"{path} is a directory, not a CSV file") from None
    except PermissionError:
        raise CLIError(f"{path}: permission denied") from None
    except UnicodeDecodeError:
        raise CLIError(f"{path} is not a UTF-8 text (CSV) file") from None
    except csv.Error as exc:
        raise CLIError(f"{path}: not a readable CSV file ({exc})") from None
    except OSError as exc:
        raise CLIError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if header is None:
        raise CLIError(f"{path} is empty; expected a header row and data rows")
    return header, rows, lines


def _check_header(path, header):
    """Every column named, once; and a header, not a first row of numbers."""
    if "" in header:
        raise CLIError(
            f"{path}: column {header.index('') + 1} of the header row has no name "
            "(an index written by pandas? save with to_csv(..., index=False))"
        )
    try:
        np.asarray(header, dtype=np.float64)
    except ValueError:
        pass  # some name is not a number: a header
    else:
        raise CLIError(
            f"{path}: the first line must be a header row naming the columns, "
            f"but it holds numbers ({', '.join(header[:5])}"
            f"{', ...' if len(header) > 5 else ''})"
        )
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise CLIError(
            f"{path}: repeated column names in the header: "
            f"{', '.join(map(repr, repeated))}"
        )
