"""``cli._csv``: reading a CSV file into cells, and numbers out of cells."""

import numpy as np
import pytest

from sklearn_pathkernel.cli._csv import parse_numbers, read_csv
from sklearn_pathkernel.cli._errors import CLIError


def write(tmp_path, text, name="t.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_read_csv_strips_and_skips_blank_lines(tmp_path):
    path = write(tmp_path, "\ufeff a , b ,label\n\n 1 ,2.5, x \n,,\n3,-1e2,y\n")
    table = read_csv(path)
    assert table.columns == ["a", "b", "label"]
    assert table.cells.tolist() == [["1", "2.5", "x"], ["3", "-1e2", "y"]]
    assert table.lines.tolist() == [3, 5]
    assert len(table) == 2 and table.where(1) == "row 2 (line 5)"
    np.testing.assert_array_equal(
        table.numeric(["b", "a"]), [[2.5, 1.0], [-100.0, 3.0]]
    )
    assert table.column("label").tolist() == ["x", "y"]


def test_read_csv_other_delimiter_and_quotes(tmp_path):
    path = write(tmp_path, 'a;"b;c"\n1;"2"\n')
    table = read_csv(path, delimiter=";")
    assert table.columns == ["a", "b;c"]
    np.testing.assert_array_equal(table.numeric(["a", "b;c"]), [[1.0, 2.0]])


def test_numeric_names_the_first_bad_cell(tmp_path):
    # Row by row: row 2's bad cell comes before row 3's, whatever the column.
    path = write(tmp_path, "a,b\n1,2\n3,oops\nx,4\n")
    with pytest.raises(CLIError, match=r"column 'b', row 2 \(line 3\): 'oops', which"):
        read_csv(path).numeric(["a", "b"])
    with pytest.raises(CLIError, match=r"column 'a', row 3 \(line 4\): 'x'"):
        read_csv(path).numeric(["a"])


@pytest.mark.parametrize(
    "cells, bad",
    [
        ([["1", "2"], ["3", "4"]], None),
        ([["1", ""], ["3", "4"]], (0, 1)),
        ([["1", "2"], ["nan", "x"]], (1, 0)),
        ([["1", "2"], ["3", "-inf"]], (1, 1)),
        (["1", "2", "1,5"], (2,)),
    ],
)
def test_parse_numbers(cells, bad):
    values, found = parse_numbers(np.array(cells))
    assert found == bad
    if bad is None:
        np.testing.assert_array_equal(values, np.asarray(cells, dtype=float))
    else:
        assert values is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is empty; expected a header row"),
        ("\n \n", "is empty"),
        ("a,b\n", "has a header but no data rows"),
        ("a,b\n1,2\n3\n", "line 3: expected 2 fields (as in the header), found 1"),
        ("1,2\n3,4\n", "must be a header row naming the columns, but it holds numbers"),
        (",a\n1,2\n", "column 1 of the header row has no name"),
        ("a,b,a\n1,2,3\n", "repeated column names in the header: 'a'"),
    ],
)
def test_read_csv_errors(text, message, tmp_path):
    with pytest.raises(CLIError) as error:
        read_csv(write(tmp_path, text))
    assert message in str(error.value)
    assert "t.csv" in str(error.value)


def test_read_csv_unreadable_files(tmp_path):
    with pytest.raises(CLIError, match="no such file"):
        read_csv(str(tmp_path / "missing.csv"))
    with pytest.raises(CLIError, match="is a directory, not a CSV file"):
        read_csv(str(tmp_path))
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"a,b\n\xff\xfe,1\n")
    with pytest.raises(CLIError, match="not a UTF-8 text"):
        read_csv(str(binary))
