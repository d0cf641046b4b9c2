"""``cli.main``: exit codes, and every user error as one line on stderr.

The bad-input matrix runs end to end through ``main``; each case fails
before any training, so it costs milliseconds.
"""

import sys
import tomllib
from importlib import import_module
from pathlib import Path

import pytest

import sklearn_pathkernel
from sklearn_pathkernel.cli import _main, main

SMALL = "x1,x2,label\n1.0,2.0,a\n2.0,1.0,b\n0.5,0.1,a\n"


def user_error(argv, capsys):
    """Run ``main(argv)``; check exit code 2, one line, no traceback."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("sklearn-pathkernel "), err
    return err


def kernel_argv(tmp_path, train):
    return ["kernel", str(train), "--target", "label", "-o", str(tmp_path / "K.npy")]


@pytest.fixture
def small_csv(tmp_path):
    path = tmp_path / "small.csv"
    path.write_text(SMALL)
    return path


# -- the program ---------------------------------------------------------------
def test_python_dash_m_runs_main(monkeypatch, capsys):
    # What "python -m sklearn_pathkernel --help" runs, without a new process.
    path = Path(sklearn_pathkernel.__file__).with_name("__main__.py")
    code = compile(path.read_text(), str(path), "exec")
    monkeypatch.setattr(sys, "argv", ["sklearn_pathkernel", "--help"])
    with pytest.raises(SystemExit) as exit_:
        exec(code, {"__name__": "__main__", "__package__": "sklearn_pathkernel"})
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: sklearn-pathkernel" in out
    assert "demo" in out and "kernel" in out


def test_console_script_is_main():
    pyproject = Path(sklearn_pathkernel.__file__).parents[1] / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("not a source checkout")
    scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
    module, name = scripts["sklearn-pathkernel"].split(":")
    assert getattr(import_module(module), name) is main


def test_version_and_no_command(capsys):
    assert main(["--version"]) == 0
    assert sklearn_pathkernel.__version__ in capsys.readouterr().out
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().err


def test_interrupted_is_130(monkeypatch, small_csv, tmp_path, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(_main._COMMANDS, "kernel", interrupted)
    assert main(kernel_argv(tmp_path, small_csv)) == 130
    assert "interrupted" in capsys.readouterr().err


# -- user errors: kernel -----------------------------------------------------------
# (file name -> content, argv after "kernel TRAIN --target label -o K.npy",
#  train file, expected part of the message)
BAD_INPUT = {
    "missing file": ({}, [], "nope.csv", "nope.csv: no such file"),
    "missing column": (
        {"t.csv": SMALL},
        ["--target", "y"],
        "t.csv",
        "has no column 'y'; available columns: 'x1', 'x2', 'label'",
    ),
    "other delimiter": (
        {"t.csv": SMALL.replace(",", ";")},
        [],
        "t.csv",
        "separated by ';'? pass --delimiter ';'",
    ),
    "non-numeric cell": (
        {"bad.csv": "x1,x2,label\n1.0,2.0,a\n2.0,oops,b\n0.5,0.1,a\n"},
        [],
        "bad.csv",
        "bad.csv: non-numeric data in column 'x2', row 2 (line 3): 'oops'",
    ),
    "infinite cell": (
        {"t.csv": "x1,x2,label\n1.0,2.0,a\n2.0,1.0,b\ninf,0.1,a\n"},
        [],
        "t.csv",
        "column 'x1', row 3 (line 4): 'inf', which is not a finite number",
    ),
    "missing cell": (
        {"t.csv": "x1,x2,label\n1.0,2.0,a\n\n2.0,,b\n0.5,0.1,a\n"},
        [],
        "t.csv",
        "column 'x2', row 2 (line 4): a missing value",
    ),
    "missing target": (
        {"t.csv": "x1,x2,label\n1.0,2.0,a\n2.0,1.0,\n"},
        [],
        "t.csv",
        "missing value in the target column 'label', row 2 (line 3)",
    ),
    "empty file": ({"t.csv": ""}, [], "t.csv", "is empty"),
    "header only": ({"t.csv": "x1,x2,label\n"}, [], "t.csv", "no data rows"),
    "one data row": (
        {"t.csv": "x1,x2,label\n1,2,a\n"},
        [],
        "t.csv",
        "needs at least 2 data rows",
    ),
    "numbers for a header": (
        {"t.csv": "1,2,3\n4,5,6\n"},
        ["--target", "3"],
        "t.csv",
        "must be a header row",
    ),
    "ragged row": ({"t.csv": SMALL + "1.0,2.0\n"}, [], "t.csv", "line 5: expected 3"),
    "unnamed column": (
        {"t.csv": ",x,label\n0,1,a\n1,2,b\n"},
        [],
        "t.csv",
        "column 1 of the header row has no name",
    ),
    "repeated column": (
        {"t.csv": "x,x,label\n0,1,a\n1,2,b\n"},
        [],
        "t.csv",
        "repeated column names in the header: 'x'",
    ),
    "no feature": (
        {"t.csv": "label\na\nb\n"},
        [],
        "t.csv",
        "no feature column besides 'label'",
    ),
    "a single class": (
        {"t.csv": "x,label\n1,a\n2,a\n3,a\n"},
        [],
        "t.csv",
        "holds a single class ('a'); classification needs at least two",
    ),
    "regression on text": (
        {"t.csv": SMALL},
        ["--task", "regression"],
        "t.csv",
        "must be numeric for regression, but row 1 (line 2) holds 'a'",
    ),
    "test columns differ": (
        {"t.csv": SMALL, "test.csv": "x1,x3\n1,2\n"},
        ["--test", "test.csv", "--test-output", "T.npy"],
        "t.csv",
        "differ from the feature columns of",
    ),
    "test without test-output": (
        {"t.csv": SMALL},
        ["--test", "t.csv"],
        "t.csv",
        "--test needs --test-output as well",
    ),
    "one output file twice": (
        {"t.csv": SMALL},
        ["--test", "t.csv", "--test-output", "K.npy"],
        "t.csv",
        "--output and --test-output name the same file",
    ),
    "output in a missing directory": (
        {"t.csv": SMALL},
        ["-o", "no/such/K.npy"],
        "t.csv",
        "does not exist",
    ),
    "output is a directory": ({"t.csv": SMALL}, ["-o", "."], "t.csv", "is a directory"),
    "output under a file": (
        {"t.csv": SMALL},
        ["-o", "t.csv/K.npy"],
        "t.csv",
        "is not a directory",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_code_2(case, tmp_path, monkeypatch, capsys):
    files, extra, train, message = BAD_INPUT[case]
    monkeypatch.chdir(tmp_path)  # relative names in the cases
    for name, text in files.items():
        Path(name).write_text(text)
    argv = ["kernel", train, "--target", "label", "-o", "K.npy", *extra]
    err = user_error(argv, capsys)
    assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)  # no output


def test_test_columns_differ_names_them(small_csv, tmp_path, capsys):
    test = tmp_path / "test.csv"
    test.write_text("x1,x3\n1,2\n")
    argv = kernel_argv(tmp_path, small_csv)
    argv += ["--test", str(test), "--test-output", str(tmp_path / "T.npy")]
    err = user_error(argv, capsys)
    assert "missing 'x2'; unexpected 'x3'" in err


# -- user errors: demo ---------------------------------------------------------------
def test_demo_output_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    argv = ["demo", "--quick", "--datasets", "diabetes", "--output", str(tmp_path)]
    err = user_error(argv, capsys)
    assert "matplotlib, which is not installed" in err
    assert "pip install matplotlib" in err


def test_demo_output_not_writable(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = user_error(["demo", "--output", str(blocker / "plots")], capsys)
    assert "cannot create the --output directory" in err
    err = user_error(["demo", "--output", str(blocker)], capsys)
    assert "is not a directory" in err
