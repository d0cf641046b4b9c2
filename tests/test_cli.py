"""The command line: ``python -m sklearn_pathkernel demo | kernel``."""

import csv
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

from sklearn_pathkernel import PathKernelClassifier, PathKernelRegressor
from sklearn_pathkernel._blocking import limit_threads
from sklearn_pathkernel._cli import main
from sklearn_pathkernel._demo import run_dataset

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# The rows every demo table prints, in order (classification wording).
TABLE_ROWS = [
    "training loss, 40 steps",
    "path kernel size (40 checkpoints)",
    "path kernel symmetry max|K - K^T|",
    "smallest / largest eigenvalue",
    "kernel machine error, first order (5 test rows)",
    "kernel machine error, exact",
    "accuracy, 3-fold CV: network",
    "accuracy, 3-fold CV: SVC on the path kernel",
    "accuracy, 3-fold CV: SVC on an RBF kernel",
    "accuracy, held-out test: network",
    "accuracy, held-out test: SVC on the path kernel",
    "accuracy, held-out test: SVC on an RBF kernel",
]


def run(argv, capsys):
    """``main(argv)``: exit code, stdout and stderr."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(argv, capsys, match):
    code, out, err = run(argv, capsys)
    assert code == 2, (out, err)
    assert "Traceback" not in err
    assert match in err, err
    return err


# -- the program ---------------------------------------------------------------
def test_module_help_in_a_subprocess():
    done = subprocess.run(
        [sys.executable, "-m", "sklearn_pathkernel", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "demo" in done.stdout and "kernel" in done.stdout
    assert "usage: sklearn-pathkernel" in done.stdout


def test_help_of_every_command_returns_zero(capsys):
    code, out, _ = run(["kernel", "--help"], capsys)
    assert code == 0
    for option in (
        "--target",
        "--output",
        "--test",
        "--test-output",
        "--task",
        "--hidden-layer-sizes",
        "--max-iter",
        "--learning-rate",
        "--normalize",
        "mean_diagonal",
        "--no-standardize",
        "--random-state",
        "--verbose",
        "task detection",
        "example:",
    ):
        assert option in out, option
    code, out, _ = run(["demo", "--help"], capsys)
    assert code == 0
    for option in ("--quick", "--output", "--datasets", "--random-state"):
        assert option in out


def test_no_command_is_a_usage_error(capsys):
    code, _, err = run([], capsys)
    assert code == 2
    assert "usage:" in err


def test_bad_option_value_is_a_usage_error(capsys):
    code, _, err = run(["demo", "--datasets", "iris"], capsys)
    assert code == 2
    assert "unknown dataset 'iris'" in err
    code, _, err = run(
        ["kernel", "x.csv", "--target", "y", "-o", "K.npy", "--max-iter", "0"], capsys
    )
    assert code == 2
    assert "positive integer" in err


# -- demo --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cancer_demo():
    with limit_threads(1):  # as the demo command does: much faster when busy
        return run_dataset("breast_cancer", quick=True, random_state=0)


def test_demo_table_has_the_expected_rows(capsys):
    code, out, err = run(["demo", "--quick", "--datasets", "breast_cancer"], capsys)
    assert code == 0, err
    assert "breast_cancer: 2 classes, 30 features, 300 training / 143 test rows" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["quantity"])
    body = lines[header + 2 : header + 2 + len(TABLE_ROWS)]
    assert [line.strip().startswith(row) for row, line in zip(TABLE_ROWS, body)] == [
        True
    ] * len(TABLE_ROWS), "\n".join(body)
    # Aligned: every value starts in the same column as the header's.
    column = lines[header].index("value")
    assert all(line[column - 2 : column] == "  " for line in body)
    assert all(line[column] != " " for line in body)
    assert "training examples that contribute most to 3 test predictions" in out
    assert out.count("test row ") == 3
    assert "demo finished in" in out
    assert "Warning" not in err


def test_demo_numbers_are_real(cancer_demo):
    numbers = cancer_demo.numbers
    assert numbers["kernel_shape"] == (300, 300)
    assert numbers["symmetry"] <= 1e-12
    # Positive semi-definite up to rounding.
    assert numbers["min_eigenvalue_ratio"] > -1e-10
    # The paper's first-order form is close; the exact one reproduces the net.
    assert numbers["error_exact"] < 1e-6
    assert 1e-6 < numbers["error_first_order"] < 0.2
    for scores in numbers["cv"].values():
        assert scores.shape == (3,)
        assert 0.85 < scores.mean() <= 1.0
    for score in numbers["test"].values():
        assert 0.85 < score <= 1.0
    # The table shows these numbers.
    table = cancer_demo.table()
    assert f"{numbers['error_exact']:.1e}" in table
    assert f"{numbers['test']['path kernel']:.3f}" in table


def test_demo_kernel_is_the_estimators(cancer_demo):
    est = cancer_demo.estimator
    assert est.n_iter_ == 40
    assert len(est.trajectory_) == 40  # every step kept: the exact form needs it
    assert np.isfinite(est.loss_curve_).all()
    assert est.loss_curve_[-1] < est.loss_curve_[0]
    assert not any(note.startswith("WARNING") for note in cancer_demo.notes)


def test_demo_regression(capsys):
    code, out, err = run(["demo", "--quick", "--datasets", "diabetes"], capsys)
    assert code == 0, err
    assert "R^2, 3-fold CV: KernelRidge on the path kernel" in out
    assert "R^2, held-out test: KernelRidge on an RBF kernel" in out
    assert "in units of the target" in out


def test_demo_reports_divergence():
    from sklearn_pathkernel import _demo

    result = _demo.DemoResult(
        "x", "regression", "R^2", 2, 1, 1, PathKernelRegressor(), title="x"
    )
    est = PathKernelRegressor(max_iter=3, learning_rate=50.0, random_state=0)
    X = np.array([[0.0], [1.0], [2.0], [3.0]])
    est.fit(X, np.array([0.0, 10.0, 20.0, 30.0]))
    notes = _demo._divergence_notes(["it blew up"], est, [est, est])
    assert notes[0] == "WARNING: it blew up"
    assert any("diverged in 2 of the 2" in note for note in notes)
    result.rows = [("a", "b", "")]
    result.notes = notes
    assert "WARNING: it blew up" in result.table()


def test_demo_output_writes_figures(tmp_path, capsys):
    folder = tmp_path / "plots"
    code, out, err = run(
        ["demo", "--quick", "--datasets", "digits", "--output", str(folder)], capsys
    )
    assert code == 0, err
    names = {
        "digits_gram.png",
        "digits_reconstruction.png",
        "digits_contributions.png",
        "digits_contributing_images.png",
        "digits_loss.png",
    }
    assert {path.name for path in folder.iterdir()} == names
    for name in names:
        path = folder / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 1000
        assert str(path) in out  # the demo says where they are


def test_demo_output_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    err = assert_user_error(
        ["demo", "--quick", "--datasets", "diabetes", "--output", str(tmp_path)],
        capsys,
        "matplotlib, which is not installed",
    )
    assert "pip install matplotlib" in err


@pytest.mark.slow
def test_demo_quick_all_datasets(capsys):
    code, out, err = run(["demo", "--quick"], capsys)
    assert code == 0, err
    for name in ("digits", "breast_cancer", "diabetes"):
        assert f"\n{name}: " in out
    assert out.count("kernel machine error, exact") == 3


# -- kernel --------------------------------------------------------------------------
def write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def cancer_csv(tmp_path_factory):
    """60 training and 20 test rows of 5 features, string labels."""
    folder = tmp_path_factory.mktemp("csv")
    data = load_breast_cancer()
    X, labels = data.data[:80, :5], data.target_names[data.target[:80]]
    header = [f"f{j}" for j in range(5)] + ["diagnosis"]
    rows = [[repr(float(v)) for v in x] + [label] for x, label in zip(X, labels)]
    train = write_csv(folder / "train.csv", header, rows[:60])
    # The test file: columns in another order, no target column.
    order = [4, 2, 0, 1, 3]
    test = write_csv(
        folder / "test.csv",
        [header[j] for j in order],
        [[row[j] for j in order] for row in rows[60:]],
    )
    return {"train": train, "test": test, "X": X, "y": labels}


SETTINGS = [
    "--hidden-layer-sizes",
    "8",
    "--max-iter",
    "15",
    "--learning-rate",
    "0.2",
    "--threads",
    "1",
]


def test_kernel_writes_train_and_test_kernels(cancer_csv, tmp_path, capsys):
    K_path, K_test_path = tmp_path / "K.npy", tmp_path / "K_test.out"
    code, out, err = run(
        [
            "kernel",
            cancer_csv["train"],
            "--target",
            "diagnosis",
            "--output",
            str(K_path),
            "--test",
            cancer_csv["test"],
            "--test-output",
            str(K_test_path),
            "--random-state",
            "3",
            *SETTINGS,
        ],
        capsys,
    )
    assert code == 0, err
    assert "classification of 2 classes (benign, malignant)" in out
    K, K_test = np.load(K_path), np.load(K_test_path)  # the exact path: no .npy
    assert K.shape == (60, 60) and K_test.shape == (20, 60)
    np.testing.assert_array_equal(K, K.T)
    assert np.linalg.eigvalsh(K)[0] > -1e-8 * np.abs(K).max()

    # The same estimator, fitted by hand, gives the same kernels.
    X, y = cancer_csv["X"], cancer_csv["y"]
    scaler = StandardScaler().fit(X[:60])
    est = PathKernelClassifier(
        hidden_layer_sizes=(8,), max_iter=15, learning_rate=0.2, random_state=3
    ).fit(scaler.transform(X[:60]), y[:60])
    X_train, X_test = scaler.transform(X[:60]), scaler.transform(X[60:])
    np.testing.assert_allclose(K, est.kernel(X_train), rtol=1e-6)
    np.testing.assert_allclose(K_test, est.kernel(X_test, X_train), rtol=1e-6)


def test_kernel_regression_normalized_without_standardizing(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    y = X @ [1.0, -2.0, 0.5] + 0.1 * rng.normal(size=30)
    header = ["a", "b", "c", "y"]
    train = write_csv(
        tmp_path / "train.csv", header, [[*x, t] for x, t in zip(X[:20], y[:20])]
    )
    test = write_csv(  # the target column may be in the test file: ignored
        tmp_path / "test.csv", header, [[*x, t] for x, t in zip(X[20:], y[20:])]
    )
    code, out, err = run(
        [
            "kernel",
            train,
            "--target",
            "y",
            "-o",
            str(tmp_path / "K.npy"),
            "--test",
            test,
            "--test-output",
            str(tmp_path / "K_test.npy"),
            "--no-standardize",
            "--normalize",
            "cosine",
            "--dtype",
            "float64",
            *SETTINGS,
        ],
        capsys,
    )
    assert code == 0, err
    assert "target 'y': regression" in out
    est = PathKernelRegressor(
        hidden_layer_sizes=(8,),
        max_iter=15,
        learning_rate=0.2,
        dtype="float64",
        kernel_normalize="cosine",
        random_state=0,
    ).fit(X[:20], y[:20])
    K, K_test = np.load(tmp_path / "K.npy"), np.load(tmp_path / "K_test.npy")
    np.testing.assert_allclose(np.diag(K), 1.0)
    np.testing.assert_allclose(K, est.kernel(X[:20]), rtol=1e-10)
    np.testing.assert_allclose(K_test, est.kernel(X[20:], X[:20]), rtol=1e-10)


@pytest.mark.parametrize(
    "target, task",
    [
        (["0", "1", "2", "1", "0", "2"], "classification"),  # few integers
        (["yes", "no", "yes", "no", "no", "yes"], "classification"),  # strings
        (["0.5", "1.25", "2", "1", "0", "2"], "regression"),  # not integers
        ([str(10 * i) for i in range(6)] * 4, "classification"),
        ([str(10 * i) for i in range(6)], "regression"),  # one row per value
    ],
)
def test_kernel_auto_task(target, task, tmp_path, capsys):
    rows = [[str(i % 3), str(i % 2), t] for i, t in enumerate(target)]
    train = write_csv(tmp_path / "t.csv", ["u", "v", "t"], rows)
    code, out, err = run(
        ["kernel", train, "--target", "t", "-o", str(tmp_path / "K.npy"), *SETTINGS],
        capsys,
    )
    assert code == 0, err
    assert f"target 't': {task}" in out


def test_kernel_auto_task_many_integers_is_regression(tmp_path, capsys):
    rows = [[str(i % 7), str(i)] for i in range(25)]  # 25 distinct integers
    train = write_csv(tmp_path / "t.csv", ["u", "t"], rows)
    code, out, err = run(
        ["kernel", train, "--target", "t", "-o", str(tmp_path / "K.npy"), *SETTINGS],
        capsys,
    )
    assert code == 0, err
    assert "target 't': regression" in out


def test_kernel_reports_divergence(tmp_path, capsys):
    rows = [[str(i), str(i % 3), str(i * i)] for i in range(12)]
    train = write_csv(tmp_path / "t.csv", ["u", "v", "t"], rows)
    argv = ["kernel", train, "--target", "t", "-o", str(tmp_path / "K.npy")]
    # The last --learning-rate wins.
    argv += [*SETTINGS, "--task", "regression", "--learning-rate", "100"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "warning:" in err and "diverged" in err
    assert np.isfinite(np.load(tmp_path / "K.npy")).all()


# -- kernel: user errors -------------------------------------------------------------
@pytest.fixture
def small_csv(tmp_path):
    rows = [["1.0", "2.0", "a"], ["2.0", "1.0", "b"], ["0.5", "0.1", "a"]]
    return write_csv(tmp_path / "small.csv", ["x1", "x2", "label"], rows)


def kernel_args(train, tmp_path, *extra, target="label"):
    return ["kernel", train, "--target", target, "-o", str(tmp_path / "K.npy"), *extra]


def test_error_missing_file(tmp_path, capsys):
    assert_user_error(
        kernel_args(str(tmp_path / "nope.csv"), tmp_path), capsys, "no such file"
    )


def test_error_missing_target_column(small_csv, tmp_path, capsys):
    assert_user_error(
        kernel_args(small_csv, tmp_path, target="y"),
        capsys,
        "has no column 'y'; available columns: 'x1', 'x2', 'label'",
    )


def test_error_non_numeric_data(tmp_path, capsys):
    rows = [["1.0", "2.0", "a"], ["2.0", "oops", "b"], ["0.5", "0.1", "a"]]
    train = write_csv(tmp_path / "bad.csv", ["x1", "x2", "label"], rows)
    err = assert_user_error(
        kernel_args(train, tmp_path),
        capsys,
        "non-numeric data in column 'x2', row 2 (line 3): 'oops'",
    )
    assert "bad.csv" in err
    rows[1][1] = ""
    write_csv(tmp_path / "bad.csv", ["x1", "x2", "label"], rows)
    assert_user_error(kernel_args(train, tmp_path), capsys, "a missing value")


def test_error_empty_file(tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert_user_error(kernel_args(str(empty), tmp_path), capsys, "is empty")
    empty.write_text("x1,x2,label\n")
    assert_user_error(kernel_args(str(empty), tmp_path), capsys, "no data rows")


def test_error_header_row_missing(tmp_path, capsys):
    train = write_csv(tmp_path / "t.csv", ["1", "2", "3"], [["4", "5", "6"]])
    assert_user_error(
        kernel_args(train, tmp_path, target="3"), capsys, "must be a header row"
    )


def test_error_ragged_row(small_csv, tmp_path, capsys):
    with open(small_csv, "a") as f:
        f.write("1.0,2.0\n")
    assert_user_error(
        kernel_args(small_csv, tmp_path), capsys, "line 5: expected 3 fields"
    )


def test_error_test_columns_differ(small_csv, tmp_path, capsys):
    test = write_csv(tmp_path / "test.csv", ["x1", "x3"], [["1", "2"]])
    err = assert_user_error(
        kernel_args(
            small_csv, tmp_path, "--test", test, "--test-output", str(tmp_path / "T")
        ),
        capsys,
        "differ from the feature columns of",
    )
    assert "missing 'x2'; unexpected 'x3'" in err


def test_error_test_without_test_output(small_csv, tmp_path, capsys):
    assert_user_error(
        kernel_args(small_csv, tmp_path, "--test", small_csv),
        capsys,
        "--test needs --test-output",
    )


def test_error_output_not_writable(small_csv, tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "dir" / "K.npy"
    argv = ["kernel", small_csv, "--target", "label", "-o", str(missing)]
    assert_user_error(argv, capsys, "does not exist")
    argv[-1] = str(tmp_path)  # a directory
    assert_user_error(argv, capsys, "is a directory")
    argv[-1] = str(tmp_path / "small.csv" / "K.npy")  # under a file
    assert_user_error(argv, capsys, "is not a directory")
    assert not (tmp_path / "no").exists()


def test_error_regression_on_text(small_csv, tmp_path, capsys):
    assert_user_error(
        kernel_args(small_csv, tmp_path, "--task", "regression"),
        capsys,
        "must be numeric for regression, but row 1 (line 2) holds 'a'",
    )


def test_error_a_single_class(tmp_path, capsys):
    rows = [["1", "a"], ["2", "a"], ["3", "a"]]
    train = write_csv(tmp_path / "one.csv", ["x", "label"], rows)
    assert_user_error(kernel_args(train, tmp_path), capsys, "a single class ('a')")
