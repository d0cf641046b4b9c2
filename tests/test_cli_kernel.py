"""``kernel``: train on a CSV file and write the path kernel (``cli._kernel_command``).

The user errors are in ``test_cli_main.py``; these tests train tiny networks.
"""

import csv

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

from sklearn_pathkernel import PathKernelClassifier, PathKernelRegressor
from sklearn_pathkernel._compute._blocking import limit_threads
from sklearn_pathkernel.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

SETTINGS = [
    "--hidden-layer-sizes",
    "8",
    "--max-iter",
    "15",
    "--learning-rate-init",
    "0.2",
    "--threads",
    "1",
]


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
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


def test_writes_train_and_test_kernels(cancer_csv, tmp_path, capsys):
    K_path, K_test_path = tmp_path / "K.npy", tmp_path / "K_test.out"
    out, _ = run(
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
    assert "train.csv: 60 rows, 5 feature columns" in out
    assert "classification of 2 classes (benign, malignant)" in out
    assert f"shape (60, 60), to {K_path}" in out
    K, K_test = np.load(K_path), np.load(K_test_path)  # the exact path: no .npy
    assert K.shape == (60, 60) and K_test.shape == (20, 60)
    np.testing.assert_array_equal(K, K.T)

    # The same estimator, fitted by hand, gives the same kernels.
    X, y = cancer_csv["X"], cancer_csv["y"]
    scaler = StandardScaler().fit(X[:60])
    X_train, X_test = scaler.transform(X[:60]), scaler.transform(X[60:])
    with limit_threads(1):  # as --threads 1; float32 rounding depends on it
        est = PathKernelClassifier(
            hidden_layer_sizes=(8,), max_iter=15, learning_rate_init=0.2, random_state=3
        ).fit(X_train, y[:60])
        expected, expected_test = est.kernel(X_train), est.kernel(X_test, X_train)
    atol = 1e-6 * np.abs(expected).max()  # float32 network
    np.testing.assert_allclose(K, expected, rtol=1e-6, atol=atol)
    np.testing.assert_allclose(K_test, expected_test, rtol=1e-6, atol=atol)


def test_regression_normalized_without_standardizing_with_adam(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    y = X @ [1.0, -2.0, 0.5] + 0.1 * rng.normal(size=30)
    header = ["a", "b", "c", "y"]
    rows = [[*x, t] for x, t in zip(X, y)]
    train = write_csv(tmp_path / "train.csv", header, rows[:20])
    test = write_csv(tmp_path / "test.csv", header, rows[20:])  # target: ignored
    out, _ = run(
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
            "--solver",
            "adam",
        ],
        capsys,
    )
    assert "target 'y': regression" in out
    est = PathKernelRegressor(
        hidden_layer_sizes=(8,),
        max_iter=15,
        learning_rate_init=0.2,
        solver="adam",
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
        ([str(i) for i in range(12)], "classification"),  # integers: type_of_target
        ([f"{i / 4}" for i in range(12)], "regression"),
    ],
)
def test_auto_task(target, task, tmp_path, capsys):
    rows = [[str(i % 3), str(i % 2), t] for i, t in enumerate(target)]
    train = write_csv(tmp_path / "t.csv", ["u", "v", "t"], rows)
    out, _ = run(
        ["kernel", train, "--target", "t", "-o", str(tmp_path / "K.npy"), *SETTINGS],
        capsys,
    )
    assert f"target 't': {task}" in out


def test_reports_the_librarys_divergence_warning(tmp_path, capsys):
    rows = [[str(i), str(i % 3), str(i * i)] for i in range(12)]
    train = write_csv(tmp_path / "t.csv", ["u", "v", "t"], rows)
    argv = ["kernel", train, "--target", "t", "-o", str(tmp_path / "K.npy")]
    # The last --learning-rate-init wins.
    argv += [*SETTINGS, "--task", "regression", "--learning-rate-init", "100"]
    _, err = run(argv, capsys)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: PathKernelRegressor: ")
    assert "diverged" in err and "learning_rate_init (now 100)" in err  # the int 100
    assert np.isfinite(np.load(tmp_path / "K.npy")).all()


def test_no_warning_without_divergence(tmp_path, capsys):
    rows = [[str(i), str(i % 3), str(i * i)] for i in range(12)]
    train = write_csv(tmp_path / "t.csv", ["u", "v", "t"], rows)
    argv = ["kernel", train, "--target", "t", "-o", str(tmp_path / "K.npy")]
    _, err = run([*argv, *SETTINGS, "--task", "regression", "-v"], capsys)
    assert err == ""
