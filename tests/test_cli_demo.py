"""``demo``: the quick demo, run once for the whole module (``cli._demo``).

The tests read what that one run printed, returned and drew; they check
content, not layout.
"""

import io
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import replace
from types import SimpleNamespace

import pytest
from sklearn.base import clone

from sklearn_pathkernel._compute._blocking import limit_threads
from sklearn_pathkernel.cli import _demo, main
from sklearn_pathkernel.cli._datasets import DATASETS, load_dataset
from sklearn_pathkernel.cli._report import DemoResult, divergence_notes
from sklearn_pathkernel.cli._scores import kernel_machines

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# The rows of every table, in order (classification wording).
TABLE_ROWS = [
    "training loss, 40 steps",
    "path kernel size (4 nodes, 40 steps)",
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
FIGURES = ["gram", "reconstruction", "contributions", "loss"]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """``demo --quick --output DIR`` on every dataset, once."""
    folder = tmp_path_factory.mktemp("demo") / "plots"  # created by the demo
    results = {}
    run_dataset = _demo.run_dataset

    def recorded(name, **options):
        results[name] = run_dataset(name, **options)
        return results[name]

    out, err = io.StringIO(), io.StringIO()
    with (
        pytest.MonkeyPatch.context() as patch,
        warnings.catch_warnings(record=True) as caught,
        redirect_stdout(out),
        redirect_stderr(err),
    ):
        warnings.simplefilter("always")
        patch.setattr(_demo, "run_dataset", recorded)
        code = main(["demo", "--quick", "--threads", "1", "--output", str(folder)])
    return SimpleNamespace(
        code=code,
        out=out.getvalue(),
        err=err.getvalue(),
        warnings=[str(w.message) for w in caught],
        results=results,
        folder=folder,
    )


def section(out, name):
    """The part of the output about dataset ``name``."""
    start = out.index(f"\n{name}: ")
    end = min(
        (
            i
            for i in (out.find(f"\n{other}: ", start + 1) for other in DATASETS)
            if i > 0
        ),
        default=out.index("demo finished in"),
    )
    return out[start:end]


def test_demo_runs_every_dataset(quick_demo):
    assert quick_demo.code == 0, quick_demo.err
    assert quick_demo.err == "" and quick_demo.warnings == []
    assert quick_demo.out.startswith("sklearn_pathkernel demo, quick mode")
    assert "demo finished in" in quick_demo.out
    assert list(quick_demo.results) == list(DATASETS)
    for name in DATASETS:
        assert quick_demo.results[name].table() in quick_demo.out


def test_demo_table_rows(quick_demo):
    text = section(quick_demo.out, "breast_cancer")
    assert "breast_cancer: 2 classes, 30 features, 300 training / 143 test rows" in text
    assert "PathKernelClassifier, tanh layers (32,), float64, 40 full-batch" in text
    positions = [text.find(f"  {row}  ") for row in TABLE_ROWS]
    assert -1 not in positions, text
    assert positions == sorted(positions)
    assert "training examples that contribute most to 3 test predictions" in text
    assert "phi_i(x) to the logit of 'malignant'" in " ".join(text.split())
    assert text.count("test row ") == 3
    assert "WARNING" not in text
    digits = section(quick_demo.out, "digits")
    assert "digits: 10 classes" in digits
    assert "the logit of the predicted class" in " ".join(digits.split())


def test_demo_regression(quick_demo):
    text = section(quick_demo.out, "diabetes")
    assert "diabetes: regression, 10 features" in text
    assert "R^2, 3-fold CV: KernelRidge on the path kernel" in text
    assert "R^2, held-out test: KernelRidge on an RBF kernel" in text
    assert "alpha of both kernel machines" in text
    assert "in units of the target" in " ".join(text.split())
    assert quick_demo.results["diabetes"].metric == "R^2"


def test_demo_numbers_are_real(quick_demo):
    result = quick_demo.results["breast_cancer"]
    numbers = result.numbers
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
    table = result.table()
    assert f"{numbers['error_exact']:.1e}" in table
    assert f"{numbers['test']['path kernel']:.3f}" in table


def test_demo_network_is_the_estimators(quick_demo):
    result = quick_demo.results["breast_cancer"]
    est = result.estimator
    assert est.n_iter_ == 40
    assert len(est.trajectory_) == 40  # every step kept: the exact form needs it
    assert est.loss_curve_[-1] < est.loss_curve_[0]
    assert result.numbers["final_loss"] == est.loss_curve_[-1]


def test_held_out_path_kernel_is_the_pipelines(quick_demo):
    # The table reuses the network's mean-diagonal kernel: the same machine as
    # the cross-validated pipeline (PathKernelTransformer) fitted on all rows.
    result = quick_demo.results["breast_cancer"]
    data = load_dataset("breast_cancer", quick=True, random_state=0)
    path, _ = kernel_machines(clone(result.estimator), classification=True)
    with limit_threads(1):
        path.fit(data.X_train_raw, data.y_train)
        score = path.score(data.X_test_raw, data.y_test)
    assert score == pytest.approx(result.numbers["test"]["path kernel"])


def test_demo_output_writes_figures(quick_demo):
    expected = {f"{name}_{figure}.png" for name in DATASETS for figure in FIGURES}
    expected.add("digits_contributing_images.png")
    assert {path.name for path in quick_demo.folder.iterdir()} == expected
    for name in expected:
        path = quick_demo.folder / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 1000
        assert str(path) in quick_demo.out  # the demo says where they are


def test_demo_reports_the_librarys_divergence(monkeypatch):
    # A step size that makes the network and every fold's network diverge.
    spec = replace(DATASETS["diabetes"], learning_rate_init=30.0, quick_max_iter=6)
    monkeypatch.setitem(DATASETS, "diabetes", spec)
    with limit_threads(1), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _demo.run_dataset("diabetes", quick=True)
    assert caught == []  # reported in the notes, not shown
    warned = [note for note in result.notes if note.startswith("WARNING")]
    assert len(warned) == 2, result.notes
    assert warned[0].startswith("WARNING: PathKernelRegressor: the training loss grew")
    assert warned[1] == (
        "WARNING: the network diverged in 3 of the 3 cross-validation folds"
    )
    assert "WARNING: the network diverged in 3 of the 3" in result.table()


def test_divergence_notes():
    notes = divergence_notes(
        ["it blew up", "it blew up"], n_diverged_folds=0, n_folds=5
    )
    assert notes == ["WARNING: it blew up"]
    assert divergence_notes([], n_diverged_folds=0, n_folds=5) == []
    result = DemoResult("x", "regression", "R^2", 2, 1, 1, None, title="x")
    result.rows = [("a", "b", "")]
    result.notes = divergence_notes([], n_diverged_folds=1, n_folds=5)
    assert "diverged in 1 of the 5 cross-validation folds" in result.table()


def test_unknown_dataset_is_a_demo_error():
    with pytest.raises(_demo.DemoError, match="unknown dataset 'iris'"):
        _demo.run_dataset("iris")
    with pytest.raises(_demo.DemoError, match="unknown dataset 'iris'"):
        _demo.run_demo(["digits", "iris"])
    assert issubclass(_demo.DemoError, ValueError)
