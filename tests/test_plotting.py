"""Plots: what they draw is the data they were given, and errors are clear."""

import sys
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits, make_regression
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from sklearn_pathkernel import PathKernelClassifier, PathKernelRegressor, plotting

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _fit(Est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return Est(hidden_layer_sizes=(8,), max_iter=20, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def regression():
    X, y = make_regression(n_samples=30, n_features=4, random_state=0)
    est = _fit(PathKernelRegressor, X, y / 100)
    return est, X, y, est.decompose(X[:5])


@pytest.fixture(scope="module")
def digits():
    """A three-class classifier on 60 digits: several outputs, 8x8 images."""
    X, y = load_digits(n_class=3, return_X_y=True)
    X, y = X[:60] / 16, y[:60]
    est = _fit(PathKernelClassifier, X, y)
    return est, X, y, est.decompose(X[:3])


def test_plot_gram_without_labels_shows_the_matrix():
    K = np.arange(16.0).reshape(4, 4)
    ax = plotting.plot_gram(K, title="mine")
    assert isinstance(ax, Axes)
    np.testing.assert_array_equal(ax.images[0].get_array(), K)
    assert ax.get_title() == "mine"
    assert len(ax.figure.axes) == 2  # the colour bar


def test_plot_gram_reorders_by_label():
    rng = np.random.default_rng(0)
    K = rng.normal(size=(7, 7))
    labels = np.array(["b", "a", "b", "c", "a", "a", "c"])
    fig, ax = plt.subplots()
    returned = plotting.plot_gram(K, labels, ax=ax, colorbar=False)
    assert returned is ax
    assert len(fig.axes) == 1
    order = np.argsort(labels, kind="stable")  # a: 1 4 5, b: 0 2, c: 3 6
    np.testing.assert_array_equal(order, [1, 4, 5, 0, 2, 3, 6])
    np.testing.assert_array_equal(ax.images[0].get_array(), K[order][:, order])
    # Ticks at the block centres, named by the labels; lines at the boundaries.
    np.testing.assert_allclose(ax.get_xticks(), [1.0, 3.5, 5.5])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    horizontal = sorted(line.get_ydata()[0] for line in ax.lines[::2])
    np.testing.assert_allclose(horizontal, [2.5, 4.5])


def test_plot_gram_checks_its_input():
    with pytest.raises(ValueError, match="K must be a non-empty square"):
        plotting.plot_gram(np.ones((3, 4)))
    with pytest.raises(ValueError, match="K must be a non-empty square"):
        plotting.plot_gram(np.ones(3))
    with pytest.raises(ValueError, match=r"labels must hold one entry per row of K"):
        plotting.plot_gram(np.eye(3), labels=[0, 1])


@pytest.mark.parametrize("case", ["regression", "digits"])
def test_plot_reconstruction_plots_the_machine(case, request):
    _, _, _, machine = request.getfixturevalue(case)
    output = machine.network_output.shape[1] - 1
    ax = plotting.plot_reconstruction(machine, output=output)
    assert isinstance(ax, Axes)
    points = ax.collections[0].get_offsets()
    np.testing.assert_allclose(points[:, 0], machine.network_output[:, output])
    np.testing.assert_allclose(points[:, 1], machine.prediction()[:, output])
    assert ax.lines[0].get_linestyle() == "--"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "first-order form" in legend[0]
    assert f"{machine.error['max_rel']:.2e}" in legend[0]


def test_plot_reconstruction_checks_output(regression):
    with pytest.raises(ValueError, match="output must be an integer between 0 and 0"):
        plotting.plot_reconstruction(regression[3], output=1)


def test_plot_contributions_single_output_matches_top_contributors(regression):
    _, _, y, machine = regression
    labels = np.where(y > 0, "up", "down")
    ax = plotting.plot_contributions(machine, query=2, k=4, labels=labels)
    assert isinstance(ax, Axes)
    top = machine.top_contributors(4)
    widths = [bar.get_width() for bar in ax.patches]
    np.testing.assert_allclose(widths, top.values[2, :, 0])
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert names == [f"train #{i} ({labels[i]})" for i in top.indices[2]]
    # Sign decides the colour.
    colours = {bar.get_width() >= 0: bar.get_facecolor() for bar in ax.patches}
    assert len(set(colours.values())) == len(colours)


def test_plot_contributions_picks_the_predicted_class(digits):
    _, _, _, machine = digits
    query = 1
    predicted = machine.network_output[query].argmax()
    phi = machine.contributions[query, :, predicted]
    expected = np.argsort(-np.abs(phi), kind="stable")[:5]
    ax = plotting.plot_contributions(machine, query, k=5)
    np.testing.assert_allclose([b.get_width() for b in ax.patches], phi[expected])
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        f"train #{i}" for i in expected
    ]
    assert f"output {predicted}" in ax.get_xlabel()
    # An explicit column.
    ax = plotting.plot_contributions(machine, query, k=5, output=0)
    phi = machine.contributions[query, :, 0]
    np.testing.assert_allclose(
        sorted(np.abs([b.get_width() for b in ax.patches])),
        sorted(np.sort(np.abs(phi))[-5:]),
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"query": 5}, "query must be an integer between 0 and 4"),
        ({"k": 0}, "k must be an integer between 1 and 30"),
        ({"k": 31}, "k must be an integer between 1 and 30"),
        ({"output": 1}, "output must be an integer"),
        ({"labels": [0, 1]}, "labels must hold one entry per training row"),
    ],
)
def test_plot_contributions_checks_its_input(regression, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plotting.plot_contributions(regression[3], **kwargs)


@pytest.mark.parametrize("with_query", [False, True])
def test_plot_contributing_images_shows_the_top_rows(digits, with_query):
    _, X, y, machine = digits
    query, k = 2, 4
    X_query = X[:3] if with_query else None
    fig, axes = plotting.plot_contributing_images(
        machine, X, query, X_query=X_query, k=k, labels=y
    )
    assert isinstance(fig, Figure)
    assert isinstance(axes, np.ndarray) and axes.shape == (k + with_query,)
    assert all(isinstance(ax, Axes) for ax in axes)
    predicted = machine.network_output[query].argmax()
    phi = machine.contributions[query, :, predicted]
    order = np.argsort(-np.abs(phi), kind="stable")[:k]
    if with_query:
        np.testing.assert_array_equal(
            axes[0].images[0].get_array(), X[query].reshape(8, 8)
        )
    for ax, i in zip(axes[with_query:], order):
        np.testing.assert_array_equal(ax.images[0].get_array(), X[i].reshape(8, 8))
        assert ax.get_title() == f"#{i} ({y[i]})\n{phi[i]:+.3g}"


def test_plot_contributing_images_checks_its_input(digits):
    _, X, _, machine = digits
    with pytest.raises(ValueError, match=r"image_shape \(4, 4\) holds 16 values"):
        plotting.plot_contributing_images(machine, X, image_shape=(4, 4))
    with pytest.raises(ValueError, match="X_train must be a 2-D array of the 60"):
        plotting.plot_contributing_images(machine, X[:10])
    with pytest.raises(ValueError, match="X_query must be"):
        plotting.plot_contributing_images(machine, X, X_query=X[:2])


def test_plot_contributing_images_accepts_one_query_row(regression):
    _, X, _, machine = regression
    fig, axes = plotting.plot_contributing_images(
        machine, X, 1, X_query=X[1], k=2, image_shape=(2, 2)
    )
    assert axes.shape == (3,)
    np.testing.assert_array_equal(axes[0].images[0].get_array(), X[1].reshape(2, 2))


@pytest.mark.parametrize("log", [True, False])
def test_plot_loss_curve_plots_loss_curve_(regression, log):
    est = regression[0]
    ax = plotting.plot_loss_curve(est, log=log)
    assert isinstance(ax, Axes)
    line = ax.lines[0]
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, est.n_iter_ + 1))
    np.testing.assert_allclose(line.get_ydata(), est.loss_curve_)
    assert ax.get_yscale() == ("log" if log else "linear")


def test_plot_loss_curve_needs_a_fitted_estimator():
    with pytest.raises(NotFittedError):
        plotting.plot_loss_curve(PathKernelRegressor())


def test_missing_matplotlib_names_the_extra(monkeypatch, regression):
    # None in sys.modules makes `import matplotlib...` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    message = r"plotting needs matplotlib: pip install 'sklearn-pathkernel\[plot\]'"
    est, X, _, machine = regression
    calls = [
        lambda: plotting.plot_gram(np.eye(2)),
        lambda: plotting.plot_reconstruction(machine),
        lambda: plotting.plot_contributions(machine),
        lambda: plotting.plot_contributing_images(machine, X, image_shape=(2, 2)),
        lambda: plotting.plot_loss_curve(est),
    ]
    for call in calls:
        with pytest.raises(ImportError, match=message):
            call()


def test_public_names():
    assert sorted(plotting.__all__) == sorted(
        name for name in dir(plotting) if name.startswith("plot_")
    )


def test_plot_gram_robust_colour_limits():
    K = np.eye(50) * 1000 + np.arange(50)[:, None] * 0.01
    robust = plotting.plot_gram(K).images[0].get_clim()
    full = plotting.plot_gram(K, robust=False).images[0].get_clim()
    assert robust == tuple(np.percentile(K, [1, 99]))
    assert full == (K.min(), K.max())
