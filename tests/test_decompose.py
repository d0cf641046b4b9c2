"""The kernel machine (Theorem 1): first-order and exact decompositions."""

import time
import warnings
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from _dispatch import Dispatched
from _oracle import jacobian_rows, tangent_kernel_reference
from _property import given, settings, st
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_iris
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.preprocessing import scale

from sklearn_pathkernel import KernelMachine, PathKernelClassifier, PathKernelRegressor
from sklearn_pathkernel._compute import _blocking, _stacks
from sklearn_pathkernel._explain import _decompose
from sklearn_pathkernel._explain._decompose import decompose_path
from sklearn_pathkernel._kernels import _path
from sklearn_pathkernel.engines import select_engine


def _fit(Est, X, y, sample_weight=None, **params):
    params = {
        "hidden_layer_sizes": (16,),
        "dtype": "float64",
        "random_state": 0,
        "tol": 0.0,
        **params,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return Est(**params).fit(X, y, sample_weight=sample_weight)


@pytest.fixture(scope="module")
def diabetes():
    X, y = load_diabetes(return_X_y=True)
    return scale(X), scale(y)


def test_first_order_error_halves_with_the_step_size(diabetes):
    """Theorem 1's approximation is first order: at equal eps * T, halving
    the step roughly halves the reconstruction error."""
    X, y = diabetes
    X, y = X[:150], y[:150]  # a third of the rows: the same first-order law
    errors = []
    for eps, steps in [(0.08, 25), (0.04, 50), (0.02, 100), (0.01, 200)]:
        est = _fit(PathKernelRegressor, X, y, learning_rate_init=eps, max_iter=steps)
        errors.append(est.decompose(X[:20]).error["max_rel"])
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 1.6) & (ratios < 2.5)), (errors, ratios)


@pytest.mark.parametrize(
    "case",
    ["regression", "binary", "multiclass", "minibatch", "sample_weight", "alpha"],
)
def test_exact_form_reproduces_the_network(case, diabetes):
    X, y = diabetes
    Est, params, weights = PathKernelRegressor, {"max_iter": 25}, None
    if case == "binary":
        X, y = load_breast_cancer(return_X_y=True)
        X, Est = scale(X), PathKernelClassifier
    elif case == "multiclass":
        X, y = load_iris(return_X_y=True)
        X, Est = scale(X), PathKernelClassifier
    elif case == "minibatch":
        params.update(batch_size=100, max_iter=5)
    elif case == "sample_weight":
        weights = np.random.RandomState(0).uniform(0, 3, len(X))
    elif case == "alpha":
        params.update(alpha=0.05)
    est = _fit(Est, X, y, sample_weight=weights, **params)
    machine = est.decompose(X[:25], exact=True)
    assert machine.error["max_rel"] < 1e-8, machine.error
    assert machine.exact
    np.testing.assert_allclose(
        machine.network_output.ravel(),
        est.decision_function(X[:25]).ravel()
        if Est is PathKernelClassifier
        else est.predict(X[:25]),
    )


SOLVERS = {
    "momentum": {"solver": "sgd", "momentum": 0.9, "nesterovs_momentum": False},
    "nesterov": {"solver": "sgd", "momentum": 0.9, "nesterovs_momentum": True},
    "adam": {"solver": "adam", "learning_rate_init": 0.01},
    "adamw": {"solver": "adamw", "learning_rate_init": 0.01},
}


@pytest.fixture(scope="module")
def small_problems():
    """60 rows for each loss: squared (regressor), logistic, softmax."""
    X, y = load_diabetes(return_X_y=True)
    problems = {"squared": (PathKernelRegressor, scale(X[:60]), scale(y[:60]))}
    X, y = load_breast_cancer(return_X_y=True)
    problems["logistic"] = (PathKernelClassifier, scale(X)[:60], y[:60])
    X, y = load_iris(return_X_y=True)
    problems["softmax"] = (PathKernelClassifier, scale(X)[::2][:60], y[::2][:60])
    return problems


@pytest.mark.parametrize("loss", ["squared", "logistic", "softmax"])
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_exact_form_reproduces_every_solver(solver, loss, small_problems):
    """Minibatches, sample weights and L2 (decoupled for adamw) at once."""
    Est, X, y = small_problems[loss]
    weights = np.random.RandomState(0).uniform(0.2, 2, len(X))
    params = {"learning_rate_init": 0.02, **SOLVERS[solver]}
    est = _fit(
        Est, X, y, weights, hidden_layer_sizes=(8,), batch_size=20, max_iter=2,
        alpha=0.05, **params,
    )  # fmt: skip
    assert est.trajectory_.n_steps == 6
    # Six nodes: Adam moves every weight by about eps per step, and on the
    # 30 features of the logistic case four nodes leave up to ~1e-10.
    machine = est.decompose(X[:4], exact=True, n_nodes=6)
    assert machine.error["max_rel"] <= 1e-10, machine.error


@pytest.mark.parametrize(
    "params, base",
    [
        ({"momentum": 0.5, "nesterovs_momentum": False}, 0.04),
        ({"solver": "adam"}, 1e-3),
    ],
)
def test_first_order_error_shrinks_with_the_step_size_for_other_solvers(
    diabetes, params, base
):
    """Momentum and Adam: at equal eps * T, halving the step about halves
    the first-order error (Adam's large first steps make the first ratio
    smaller)."""
    X, y = diabetes
    X, y = X[:60], y[:60]
    errors = []
    for factor, steps in [(2, 20), (1, 40), (0.5, 80)]:
        est = _fit(
            PathKernelRegressor, X, y, hidden_layer_sizes=(8,),
            learning_rate_init=base * factor, max_iter=steps, **params,
        )  # fmt: skip
        errors.append(est.decompose(X[:10], kernel="loss_weighted").error["max_rel"])
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 1.4) & (ratios < 2.6)), (errors, ratios)


def test_early_stopping_path_still_reconstructs_exactly():
    """The path ends at the best validation epoch, and so does the module."""
    X, y = load_iris(return_X_y=True)
    X = scale(X)
    est = _fit(
        PathKernelClassifier, X, y, hidden_layer_sizes=(8,), solver="adam",
        learning_rate_init=0.05, batch_size=30, max_iter=10, early_stopping=True,
        n_iter_no_change=3, validation_fraction=0.2,
    )  # fmt: skip
    steps_per_epoch = 4  # 120 training rows in batches of 30
    assert est.trajectory_.n_steps < est.n_iter_ * steps_per_epoch
    machine = est.decompose(X[:5], exact=True, n_nodes=6)
    assert machine.error["max_rel"] <= 1e-10, machine.error


def test_error_measures_the_distance_to_the_network():
    bias = np.array([[1.0], [-2.0]])
    contributions = np.array([[[0.5], [0.25]], [[1.0], [0.0]]])  # sums 0.75, 1
    network = np.array([[2.0], [-1.5]])  # off by 0.25 and 0.5
    machine = KernelMachine(bias, contributions, network, np.ones((2, 2)), True)
    np.testing.assert_array_equal(machine.prediction(), [[1.75], [-1.0]])
    assert machine.error == {"max_abs": 0.5, "max_rel": 0.25}


def _reference_decomposition(est, X_train, X):
    """Theorem 1 term by term, with full O x O kernels from the autograd oracle."""
    traj, module = est.trajectory_, est.module_
    n_outputs = est.n_outputs_
    phi = np.zeros((len(X), len(X_train), n_outputs))
    bias = (
        torch.func.functional_call(module, traj.parameters(0), (torch.tensor(X),))
        .detach()
        .numpy()
        .reshape(len(X), -1)
    )
    for t in range(traj.n_steps):
        step, params = traj.step(t), traj.parameters(t)
        batch = step.batch.numpy()
        K = tangent_kernel_reference(module, params, X, X_train[batch], trace=False)
        c, g = step.batch_weights.numpy(), step.output_gradients.numpy()
        phi[:, batch] -= step.step_size * np.einsum("ijab,j,jb->ija", K, c, g)
        if traj.alpha:
            flat = torch.cat([p.reshape(-1) for p in params.values()]).numpy()
            from _oracle import jacobian_rows

            J = jacobian_rows(module, params, X)
            bias -= traj.alpha * step.step_size * J @ flat
    return phi, bias


@pytest.mark.parametrize("n_classes", [2, 3])
def test_first_order_matches_the_theorem_term_by_term(n_classes):
    rng = np.random.RandomState(0)
    X = rng.randn(12, 3)
    y = np.arange(12) % n_classes
    est = _fit(
        PathKernelClassifier,
        X,
        y,
        max_iter=4,
        batch_size=5,
        alpha=0.1,
        sample_weight=rng.uniform(0.5, 2, 12),
    )
    machine = est.decompose(X[:4])
    phi, bias = _reference_decomposition(est, X, X[:4])
    assert machine.contributions.shape == (4, 12, 1 if n_classes == 2 else 3)
    np.testing.assert_allclose(machine.contributions, phi, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(machine.bias, bias, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("engine", ["jacobian", "ntk_vp"])
def test_engines_and_blocks_agree(diabetes, engine):
    X, y = diabetes
    est = _fit(PathKernelRegressor, X[:60], y[:60], max_iter=5, alpha=0.01)
    structured = est.decompose(X[:9], exact=True)
    est.set_params(engine=engine, working_memory=0.05)
    other = est.decompose(X[:9], exact=True)
    np.testing.assert_allclose(
        other.contributions, structured.contributions, rtol=1e-9, atol=1e-13
    )
    np.testing.assert_allclose(other.bias, structured.bias, rtol=1e-10)


def test_blocks_of_whole_tiles_give_bit_identical_results(diabetes, monkeypatch):
    X, y = diabetes
    est = _fit(PathKernelRegressor, X[:60], y[:60], max_iter=4, dtype="float32")
    monkeypatch.setattr(_blocking, "TILE_ROWS", 8)  # 30 queries: 4 blocks
    machines = [
        est.set_params(working_memory=memory).decompose(X[:30])
        for memory in (None, 1.0, 64.0)
    ]
    for other in machines[1:]:
        assert np.array_equal(other.contributions, machines[0].contributions)
        assert np.array_equal(other.bias, machines[0].bias)


class _SleepyTanh(torch.nn.Module):
    """tanh that sleeps, releasing the GIL mid-forward: threads interleave."""

    def forward(self, x):
        time.sleep(0.001)
        return torch.tanh(x)


def test_thread_tasks_never_share_a_module_mid_forward(monkeypatch):
    # functional_call swaps the module's parameters in place: the hooks
    # engine's states and the L2 term's jvp once held different locks, and
    # thread tasks computed at each other's checkpoints (bias off by 0.02).
    def make(n_features, n_outputs):
        return torch.nn.Sequential(
            torch.nn.Linear(n_features, 4),
            torch.nn.LayerNorm(4),
            _SleepyTanh(),
            torch.nn.Linear(4, n_outputs),
        )

    rng = np.random.RandomState(3)
    X, y = rng.randn(20, 3), rng.randn(20)
    est = _fit(PathKernelRegressor, X, y, module=make, hidden_layer_sizes=(),
               batch_size=10, max_iter=2, alpha=0.05)  # fmt: skip
    monkeypatch.setattr(_blocking, "TILE_ROWS", 2)  # 8 queries: 4 tasks a step
    serial = est.decompose(X[:8], exact=True)
    threads = est.set_params(n_jobs=4).decompose(X[:8], exact=True)
    assert np.array_equal(threads.contributions, serial.contributions)
    assert np.array_equal(threads.bias, serial.bias)


def test_verbose_shows_progress_over_steps(diabetes, capsys):
    X, y = diabetes
    est = _fit(PathKernelRegressor, X[:40], y[:40], max_iter=3)
    est.decompose(X[:5])
    assert capsys.readouterr() == ("", "")
    est.set_params(verbose=1).decompose(X[:5], exact=True)
    assert "decompose (exact)" in capsys.readouterr().err


def test_a_thinned_path_allows_only_the_first_order_form(diabetes):
    X, y = diabetes
    est = _fit(PathKernelRegressor, X, y, max_iter=20, record_every=4)
    with pytest.raises(ValueError, match="one checkpoint every 4 steps"):
        est.decompose(X[:3], exact=True)
    # Each checkpoint's kernel stands in for the steps it covers.
    assert est.decompose(X[:10]).error["max_rel"] < 0.1


def test_coefficients_and_the_loss_weighted_kernel(diabetes):
    X, y = diabetes
    est = _fit(PathKernelRegressor, X, y, max_iter=10)
    machine = est.decompose(X[:5])
    np.testing.assert_allclose(machine.kernel, est.kernel(X[:5], X), rtol=1e-12)
    np.testing.assert_allclose(
        machine.coefficients * machine.kernel,
        machine.contributions[:, :, 0],
        rtol=1e-10,
        atol=1e-14,
    )
    weighted = est.decompose(X[:5], kernel="loss_weighted")
    np.testing.assert_allclose(weighted.coefficients[weighted.kernel != 0], -1.0)
    with pytest.raises(ValueError, match="kernel must be 'path' or 'loss_weighted'"):
        est.decompose(X[:5], kernel="rbf")


def test_coefficients_need_one_output():
    X, y = load_iris(return_X_y=True)
    est = _fit(PathKernelClassifier, scale(X), y, max_iter=3)
    machine = est.decompose(X[:2])
    with pytest.raises(
        ValueError, match="defined for a single output; this network has 3"
    ):
        machine.coefficients
    with pytest.raises(ValueError, match="Remark 2\\) is defined for one output"):
        est.decompose(X[:2], kernel="loss_weighted")


def test_top_contributors(diabetes):
    X, y = diabetes
    machine = _fit(PathKernelRegressor, X, y, max_iter=10).decompose(X[:6])
    top = machine.top_contributors(4)
    assert top.indices.shape == (6, 4) and top.values.shape == (6, 4, 1)
    size = np.abs(machine.contributions[:, :, 0])
    for q in range(6):
        np.testing.assert_allclose(
            np.abs(top.values[q, :, 0]), np.sort(size[q])[::-1][:4]
        )
        np.testing.assert_array_equal(
            top.values[q], machine.contributions[q, top.indices[q]]
        )
    np.testing.assert_allclose(
        top.share, size[np.arange(6)[:, None], top.indices].sum(1) / size.sum(1)
    )
    assert machine.top_contributors(len(X)).share == pytest.approx(1.0)
    with pytest.raises(
        ValueError, match="k must be an integer between 1 and 442; got 0"
    ):
        machine.top_contributors(0)


def test_top_contributors_of_one_output_or_the_predicted_class():
    X, y = load_iris(return_X_y=True)
    X = scale(X)
    machine = _fit(PathKernelClassifier, X, y, max_iter=10).decompose(X[::25])
    predicted = machine.network_output.argmax(axis=1)
    top = machine.top_contributors(5, output="predicted")
    for q, c in enumerate(predicted):
        size = np.abs(machine.contributions[q, :, c])
        np.testing.assert_array_equal(
            top.indices[q], np.argsort(-size, kind="stable")[:5]
        )
        assert top.share[q] == pytest.approx(size[top.indices[q]].sum() / size.sum())
    by_class = machine.top_contributors(5, output=2)
    size = np.abs(machine.contributions[:, :, 2])
    np.testing.assert_array_equal(
        by_class.indices, np.argsort(-size, axis=1, kind="stable")[:, :5]
    )
    assert by_class.values.shape == (len(predicted), 5, 3)  # every output kept
    for bad in (3, "class", 1.0):
        with pytest.raises(ValueError, match="output must be None, 'predicted' or"):
            machine.top_contributors(5, output=bad)


def test_decompose_checks_its_input(diabetes):
    X, y = diabetes
    with pytest.raises(NotFittedError):
        PathKernelRegressor().decompose(X)
    est = _fit(PathKernelRegressor, X, y, max_iter=2)
    with pytest.raises(ValueError, match="X has 3 features, but PathKernelRegressor"):
        est.decompose(X[:, :3])
    with pytest.raises(ValueError, match="Input X contains NaN"):
        est.decompose(np.full((2, X.shape[1]), np.nan))
    assert isinstance(est.decompose(X[:1]), KernelMachine)


def test_functional_decomposition_places_its_rows(diabetes):
    # Array-likes or tensors anywhere: the rows go to the module's dtype and
    # device (an estimator fitted on a GPU, numpy rows), as path_kernel's do.
    X, y = diabetes
    est = _fit(PathKernelRegressor, X[:40], y[:40], max_iter=3)
    from_arrays = decompose_path(est.module_, est.trajectory_, X[:40], X[:3])
    from_tensors = decompose_path(
        est.module_, est.trajectory_, torch.tensor(X[:40]), torch.tensor(X[:3])
    )
    assert np.array_equal(from_arrays.contributions, from_tensors.contributions)
    with pytest.raises(ValueError, match="X has 2 features, but X_train has 10"):
        decompose_path(est.module_, est.trajectory_, X[:40], X[:3, :2])
    with pytest.raises(ValueError, match="The 'module' failed on X_train rows"):
        decompose_path(est.module_, est.trajectory_, X[:40, :2], X[:3, :2])
    with pytest.raises(ValueError, match="Input X_train contains NaN"):
        decompose_path(est.module_, est.trajectory_, np.full((2, 10), np.nan), X[:3])


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_decompose_places_its_rows_and_binds_its_engine_once(
    diabetes, solver, monkeypatch
):
    # The kernel it returns included: one conversion of each array and one
    # engine (the hooks engine probes the module with a forward pass), for
    # the engines' products (sgd) and the backward walk (adam) alike.
    X, y = diabetes
    est = _fit(PathKernelRegressor, X[:40], y[:40], max_iter=3, solver=solver)
    expected = _path.path_kernel(
        est.module_, est.trajectory_, X[:3], X[:40], engine="hooks"
    )
    calls = []

    def counting(name, real):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(_path, "select_engine", counting("engine", _path.select_engine))
    monkeypatch.setattr(_path, "kernel_rows", counting("rows", _path.kernel_rows))
    machine = decompose_path(
        est.module_, est.trajectory_, X[:40], X[:3], engine="hooks"
    )
    assert calls == ["engine"]  # rows placed by decompose_path alone
    assert np.array_equal(machine.kernel, expected)


# derandomize: CI sees the same examples every run; a failure reproduces.
@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    n_outputs=st.integers(1, 3),
    hidden=st.lists(st.integers(1, 6), min_size=0, max_size=2),
    activation=st.sampled_from(["identity", "logistic", "tanh"]),
    batch_size=st.sampled_from([None, 3]),
    alpha=st.sampled_from([0.0, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_property_exact_form_reproduces_small_smooth_networks(
    n_outputs, hidden, activation, batch_size, alpha, seed
):
    rng = np.random.RandomState(seed)
    X = rng.randn(7, 3)
    est = _fit(
        PathKernelRegressor,
        X,
        rng.randn(7, n_outputs),
        hidden_layer_sizes=tuple(hidden),
        activation=activation,
        batch_size=batch_size,
        alpha=alpha,
        max_iter=3,
        random_state=seed,
    )
    # Eight nodes: four leave a quadrature error up to ~1e-9 on some of
    # these tanh networks (hidden=[1, 2], seed=1 reaches 1.5e-9).
    machine = est.decompose(rng.randn(4, 3), exact=True, n_nodes=8)
    assert machine.error["max_abs"] < 1e-9 * max(
        1.0, np.abs(machine.network_output).max()
    )


# -- exact across kinks: piecewise-linear networks ---------------------------
RELU_SOLVERS = {
    "sgd": {},
    "minibatch": {"batch_size": 20, "alpha": 0.05},
    "momentum": {"batch_size": 25, "momentum": 0.9, "nesterovs_momentum": False},
    "adam": {"solver": "adam", "learning_rate_init": 0.05, "batch_size": 25},
}


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return scale(X)[::3], y[::3]  # 50 rows, 3 classes


@pytest.mark.parametrize(
    "layers, solver",
    [
        ((8,), "sgd"),
        ((8,), "adam"),
        ((8, 8), "minibatch"),
        ((8, 8), "momentum"),
        ((6, 6, 6), "sgd"),
        ((6, 6, 6), "adam"),
    ],
)
def test_exact_form_is_exact_across_relu_kinks(layers, solver, iris):
    """Split at the pattern changes, each piece is a polynomial of degree
    below the number of Linear layers: ceil(L / 2) nodes integrate it."""
    X, y = iris
    # A seed whose paths take these four queries across kinks in every case.
    est = _fit(
        PathKernelClassifier, X, y, hidden_layer_sizes=layers, activation="relu",
        max_iter=3, random_state=2,
        **{"learning_rate_init": 0.3, **RELU_SOLVERS[solver]},
    )  # fmt: skip
    n_nodes = (len(layers) + 2) // 2
    machine = est.decompose(X[:4], exact=True, n_nodes=n_nodes)
    assert machine.kinks and machine.error["max_rel"] <= 1e-10, machine.error
    # The same nodes across the kinks: the case has kinks to find.
    across = est.decompose(X[:4], exact=True, n_nodes=n_nodes, kinks=False)
    assert not across.kinks and across.error["max_rel"] > 1e-5


class _LeakyHardtanh(torch.nn.Module):
    """Functional calls inside forward, not modules: found all the same."""

    def __init__(self, n_features, n_outputs):
        super().__init__()
        self.a = torch.nn.Linear(n_features, 8)
        self.b = torch.nn.Linear(8, 8)
        self.c = torch.nn.Linear(8, n_outputs)

    def forward(self, x):
        h = torch.nn.functional.leaky_relu(self.a(x), 0.1)
        return self.c(torch.nn.functional.hardtanh(self.b(h), -0.5, 0.5))


def _max_pooling_cnn(n_features, n_outputs):
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(27, n_outputs),
    )


@pytest.mark.parametrize("network", ["leaky_relu, hardtanh", "max-pooling cnn"])
def test_exact_form_is_exact_across_kinks_of_user_modules(network):
    X, y = load_digits(return_X_y=True)
    X, y = X[:40] / 16, y[:40]
    if network == "max-pooling cnn":
        params = {"module": _max_pooling_cnn, "input_shape": (1, 8, 8)}
        n_nodes = 1  # conv, linear: pieces of degree 1
    else:
        params = {"module": _LeakyHardtanh}
        n_nodes = 2  # three Linear layers: degree 2
    est = _fit(
        PathKernelClassifier, X, y, max_iter=1, batch_size=20,
        learning_rate_init=0.5, **params,
    )  # fmt: skip
    machine = est.decompose(X[:3], exact=True, n_nodes=n_nodes)
    assert machine.kinks and machine.error["max_rel"] <= 1e-10, machine.error
    across = est.decompose(X[:3], exact=True, n_nodes=n_nodes, kinks=False)
    assert across.error["max_rel"] > 1e-5


def _relu_patterns(module, start, end, x, s):
    """The sign of every ReLU's input at one row, at each of the points
    ``s`` of the segment: a plain forward, layer by layer, (len(s), units)."""
    s = torch.as_tensor(s, dtype=x.dtype).reshape(-1)
    h, signs = x.expand(len(s), -1), []
    for index, layer in enumerate(module):
        if isinstance(layer, torch.nn.Linear):
            W, b = (
                start[f"{index}.{n}"]
                + s.reshape(-1, *[1] * start[f"{index}.{n}"].ndim)
                * (end[f"{index}.{n}"] - start[f"{index}.{n}"])
                for n in ("weight", "bias")
            )
            h = torch.einsum("soi,si->so", W, h) + b
        else:
            signs.append(h > 0)
            h = torch.relu(h)
    return torch.cat(signs, 1)


def _pieces(module, start, end, x):
    """[0, kinks..., 1] along the segment at one row: sampled on 401
    points, each change then bisected 50 times."""
    grid = np.linspace(0, 1, 401)
    sampled = _relu_patterns(module, start, end, x, grid)
    edges = [0.0]
    for k in (sampled[1:] != sampled[:-1]).any(1).nonzero().flatten().tolist():
        lo, hi = grid[k], grid[k + 1]
        for _ in range(50):
            mid = (lo + hi) / 2
            same = torch.equal(
                _relu_patterns(module, start, end, x, mid)[0], sampled[k]
            )
            lo, hi = (mid, hi) if same else (lo, mid)
        edges.append(hi)
    return edges + [1.0]


def _kinked_reference(est, X_train, X):
    """Plain sgd's contributions: per query and step, the pieces between
    kinks, each integrated with 8 Gauss-Legendre nodes of the oracle's
    Jacobians; ``phi -= eps c_i Jbar(x) J_t(x_i)^T g_i``."""
    traj, module = est.trajectory_, est.module_
    ends = [traj.parameters(t) for t in range(len(traj))] + [traj.final_parameters()]
    nodes, weights = np.polynomial.legendre.leggauss(8)
    phi = np.zeros((len(X), len(X_train), est.n_outputs_))
    for t in range(traj.n_steps):
        start, end = ends[t], ends[t + 1]
        step = traj.step(t)
        batch = step.batch.numpy()
        J_train = jacobian_rows(module, start, X_train[batch])
        c, g = step.batch_weights.numpy(), step.output_gradients.numpy()
        for q, x in enumerate(torch.tensor(X)):
            edges = _pieces(module, start, end, x)
            jbar = 0.0
            for a, b in zip(edges[:-1], edges[1:]):
                for node, weight in zip(nodes, weights):
                    s = a + (b - a) * (node + 1) / 2
                    point = {n: start[n] + s * (end[n] - start[n]) for n in start}
                    jbar += (b - a) * weight / 2 * jacobian_rows(module, point, x[None])
            phi[q, batch] -= traj.step_sizes[t] * np.einsum(
                "ad,jbd,j,jb->ja", jbar[0], J_train, c, g
            )
    return phi


def test_contributions_across_kinks_match_a_plain_reference():
    rng = np.random.RandomState(7)
    X, y = rng.randn(12, 3), rng.randn(12, 2)
    est = _fit(
        PathKernelRegressor, X, y, hidden_layer_sizes=(5, 5), activation="relu",
        batch_size=6, max_iter=2, learning_rate_init=0.3,
        sample_weight=rng.uniform(0.5, 2, 12), random_state=1,  # kinks crossed
    )  # fmt: skip
    machine = est.decompose(X[:3], exact=True)
    phi = _kinked_reference(est, X, X[:3])
    scale_ = np.abs(phi).max()
    np.testing.assert_allclose(
        machine.contributions, phi, rtol=1e-9, atol=1e-12 * scale_
    )
    initial = torch.func.functional_call(
        est.module_, est.trajectory_.parameters(0), (torch.tensor(X[:3]),)
    )
    np.testing.assert_allclose(machine.bias, initial.detach().numpy())  # no L2
    # The shared nodes across the kinks miss the reference.
    across = est.decompose(X[:3], exact=True, kinks=False)
    assert np.abs(across.contributions - phi).max() > 1e-6 * scale_


def test_the_engines_and_the_walk_agree_across_kinks(monkeypatch):
    """Plain sgd takes the engines' products with per-row query states when
    the engine builds them by explicit tensor code (structured), and the
    walk otherwise (hooks); both are exact and give the same contributions."""
    rng = np.random.RandomState(8)
    X, y = rng.randn(30, 3), rng.randn(30)
    est = _fit(
        PathKernelRegressor, X, y, hidden_layer_sizes=(6, 6), activation="relu",
        batch_size=10, max_iter=2, alpha=0.05, learning_rate_init=0.3,
    )  # fmt: skip
    walks = []
    walk_route = _decompose._walk_route
    monkeypatch.setattr(
        _decompose,
        "_walk_route",
        lambda *a, **k: walks.append(1) or walk_route(*a, **k),
    )
    args = (est.module_, est.trajectory_, torch.tensor(X), torch.tensor(X[:4]))
    machines = {
        engine: decompose_path(*args, exact=True, engine=engine)
        for engine in ("structured", "hooks")
    }
    assert walks == [1]  # the hooks engine's states follow no per-row point
    for machine in machines.values():
        assert machine.kinks and machine.error["max_rel"] <= 1e-10
    structured, hooks = machines["structured"], machines["hooks"]
    scale_ = np.abs(structured.contributions).max()
    np.testing.assert_allclose(
        structured.contributions, hooks.contributions, rtol=1e-10, atol=1e-13 * scale_
    )
    np.testing.assert_allclose(structured.bias, hooks.bias, rtol=1e-12)
    # n_nodes=4 on this chain of 3 layers: 2 nodes per piece, the same sums.
    fewer = decompose_path(*args, exact=True, engine="structured", n_nodes=2)
    assert np.array_equal(fewer.contributions, structured.contributions)


def test_smooth_networks_keep_their_route(diabetes):
    X, y = diabetes
    est = _fit(PathKernelRegressor, X[:60], y[:60], hidden_layer_sizes=(8,), max_iter=5)
    auto = est.decompose(X[:5], exact=True)
    across = est.decompose(X[:5], exact=True, kinks=False)
    assert not auto.kinks
    assert np.array_equal(auto.contributions, across.contributions)
    assert np.array_equal(auto.bias, across.bias)
    # Forced, the walk finds no kink: the same decomposition by the other route.
    forced = est.decompose(X[:5], exact=True, kinks=True)
    assert forced.kinks
    np.testing.assert_allclose(
        forced.contributions, across.contributions, rtol=1e-10, atol=1e-15
    )


class _DataDependent(torch.nn.Module):
    """A relu network whose forward reads a value: no torch.func.vmap."""

    def __init__(self, n_features, n_outputs):
        super().__init__()
        self.a = torch.nn.Linear(n_features, 4)
        self.b = torch.nn.Linear(4, n_outputs)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h * 2 if float(h.detach().sum()) > 1e9 else h)


def test_kinks_option_and_networks_that_cannot_be_searched(diabetes):
    X, y = diabetes
    X, y = X[:30], y[:30]
    est = _fit(PathKernelRegressor, X, y, module=_DataDependent, max_iter=2)
    with pytest.raises(ValueError, match="kinks must be 'auto', True or False"):
        est.decompose(X[:2], exact=True, kinks="yes")
    with pytest.raises(ValueError, match="kinks=True needs the network's forward"):
        est.decompose(X[:2], exact=True, kinks=True)
    with pytest.warns(UserWarning, match="could not search this network for kinks"):
        machine = est.decompose(X[:2], exact=True)
    assert not machine.kinks
    # The first-order form has no use for kinks: no search, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not est.decompose(X[:2]).kinks


# ------------------------------------------ the device tile policy (issue 21)


def _query_block_sizes(monkeypatch):
    """Records the query block of every decomposition from now on."""
    sizes = []
    original = _decompose._query_blocks

    def recording(module, trajectory, X, block):
        sizes.append(block)
        return original(module, trajectory, X, block)

    monkeypatch.setattr(_decompose, "_query_blocks", recording)
    return sizes


@pytest.mark.parametrize("exact", [False, True])
def test_device_policy_dispatches_fewer_operations_per_checkpoint(exact, monkeypatch):
    rng = np.random.RandomState(0)
    X = rng.randn(2048, 3)
    est = _fit(PathKernelRegressor, X[:40], X[:40, 0], hidden_layer_sizes=(4,),
               max_iter=2)  # fmt: skip
    sizes = _query_block_sizes(monkeypatch)
    counts = []
    for policy in (nullcontext(), _blocking.device_policy(2**34)):
        counted = Dispatched()
        with policy, counted:
            est.decompose(X, exact=exact, n_nodes=2)
        counts.append(counted)
    assert sizes == [512, 8192]  # 4 query blocks, then one
    # Launches, not views: a stack of two checkpoints under vmap trades a few
    # products for more views (metadata on the host, no kernel on a GPU).
    per_checkpoint = [c.launches / est.trajectory_.n_steps for c in counts]
    assert per_checkpoint[0] >= 3 * per_checkpoint[1], per_checkpoint
    assert counts[1].synchronising.count("_local_scalar_dense") <= (
        counts[0].synchronising.count("_local_scalar_dense")
    )


@pytest.mark.parametrize(
    "solver",
    [{}, {"solver": "adam"}],  # the engines' route; the backward walk
)
def test_device_policy_decomposition_matches_the_default(solver, monkeypatch):
    rng = np.random.RandomState(1)
    X = rng.randn(30, 3)
    est = _fit(PathKernelRegressor, X, np.sin(X[:, 0]), hidden_layer_sizes=(6,),
               max_iter=2, batch_size=10, alpha=0.01, **solver)  # fmt: skip
    sizes = _query_block_sizes(monkeypatch)
    waits = []
    task = _decompose._checkpoint_part

    def counted(*args):  # the engines' route: nothing waits for the device
        with Dispatched() as mode:
            parts = task(*args)
        waits.extend(mode.synchronising)
        return parts

    monkeypatch.setattr(_decompose, "_checkpoint_part", counted)
    # Adam's first order walks backwards as its exact form does.
    for exact in (False, True) if not solver else (False,):
        want = est.decompose(X, exact=exact)
        with _blocking.device_policy(2**17):  # a small device: blocks of 8 rows
            got = est.decompose(X, exact=exact)
        np.testing.assert_allclose(
            got.contributions, want.contributions, rtol=1e-10, atol=1e-14
        )
        np.testing.assert_allclose(got.bias, want.bias, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(got.kernel, want.kernel, rtol=1e-10, atol=1e-14)
        if not solver and not exact:  # plain sgd: Theorem 1 term by term
            phi, bias = _reference_decomposition(est, X, X)
            np.testing.assert_allclose(got.contributions, phi, rtol=1e-8, atol=1e-12)
            np.testing.assert_allclose(got.bias, bias, rtol=1e-8, atol=1e-12)
    assert sizes[0] == 512 and 1 < sizes[1] < 30, sizes
    assert waits == []


@pytest.mark.parametrize("solver, task", [("sgd", "_checkpoint_part"),
                                          ("adam", "walk_block")])  # fmt: skip
def test_device_out_of_memory_retries_with_half_the_block(solver, task, monkeypatch):
    rng = np.random.RandomState(1)
    X = rng.randn(30, 3)
    est = _fit(PathKernelRegressor, X, np.sin(X[:, 0]), hidden_layer_sizes=(6,),
               max_iter=2, batch_size=10, solver=solver)  # fmt: skip
    exact = solver == "sgd"  # Adam's first order walks backwards too
    want = est.decompose(X, exact=exact)
    sizes, original = [], getattr(_decompose, task)

    def failing(shared, q0, q1, *args):
        sizes.append(q1 - q0)
        if len(sizes) == 2:  # the second task: what the first gave is dropped
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return original(shared, q0, q1, *args)

    monkeypatch.setattr(_decompose, task, failing)
    with (
        _blocking.device_policy(2**17),
        pytest.warns(RuntimeWarning, match="decomposition ran out of CUDA memory"),
    ):
        got = est.decompose(X, exact=exact)
    assert sizes[2] == sizes[0] // 2, sizes
    np.testing.assert_allclose(
        got.contributions, want.contributions, rtol=1e-10, atol=1e-14
    )
    np.testing.assert_allclose(got.bias, want.bias, rtol=1e-10, atol=1e-14)


# ----------------------------- stacks of checkpoints on a device (issue 21)


def _stacked_tasks(monkeypatch):
    """Records the size of every stack, and what waits for the device in it."""
    sizes, waits, task = [], [], _decompose._stacked_checkpoint_part

    def recording(walk, q0, q1, start, steps):
        sizes.append(next(iter(start.values())).shape[0])
        with Dispatched() as mode:
            parts = task(walk, q0, q1, start, steps)
        waits.extend(mode.synchronising)
        return parts

    monkeypatch.setattr(_decompose, "_stacked_checkpoint_part", recording)
    return sizes, waits


@pytest.mark.parametrize("params", [{}, {"batch_size": 10, "alpha": 0.01}])
def test_stacked_checkpoints_match_the_default_and_the_theorem(params, monkeypatch):
    rng = np.random.RandomState(1)
    X = rng.randn(30, 3)
    est = _fit(PathKernelRegressor, X, np.sin(X[:, 0]), hidden_layer_sizes=(6,),
               max_iter=3, **params)  # fmt: skip
    n_checkpoints = est.trajectory_.n_steps
    sizes, waits = _stacked_tasks(monkeypatch)
    for exact in (False, True):
        want = est.decompose(X, exact=exact)
        sizes.clear()
        with _blocking.device_policy(2**30):
            got = est.decompose(X, exact=exact)
        assert sizes and sum(sizes) == n_checkpoints and max(sizes) > 1, sizes
        np.testing.assert_allclose(
            got.contributions, want.contributions, rtol=1e-12, atol=1e-15
        )
        np.testing.assert_allclose(got.bias, want.bias, rtol=1e-12, atol=1e-15)
        if exact:
            assert got.error["max_rel"] < 1e-10
        else:  # Theorem 1 term by term
            phi, bias = _reference_decomposition(est, X, X)
            np.testing.assert_allclose(got.contributions, phi, rtol=1e-8, atol=1e-12)
            np.testing.assert_allclose(got.bias, bias, rtol=1e-8, atol=1e-12)
    assert waits == []


class _Progress:
    def update(self, n):
        pass


def _w2_decomposition_ops(most, exact, checkpoints=16):
    """W2's first-order (or exact) route: 2,048 meta queries against 1,797 rows.

    ``checkpoints`` steps, one checkpoint each, full batch, stacks of
    ``most``; the tasks of one query block and the caller's fold of their
    parts, with the statics cached.
    """
    torch.manual_seed(0)
    layers = [torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 256),
              torch.nn.Tanh(), torch.nn.Linear(256, 10)]  # fmt: skip
    w2 = torch.nn.Sequential(*layers)
    parameters = {n: p.detach().to("meta") for n, p in w2.named_parameters()}
    bound = select_engine("structured", w2, list(parameters))
    X, X_train = torch.empty(2048, 64, device="meta"), torch.empty(1797, 64)
    X_train = X_train.to("meta")
    nodes, weights = _decompose._quadrature(2 if exact else 0)
    walk = _decompose._Walk(w2, bound, X_train, X, nodes, weights, 0.0)
    step = _decompose.Step(
        0.1, torch.arange(1797).to("meta"), torch.empty(1797, device="meta"),
        torch.empty(1797, 10, device="meta"),
    )  # fmt: skip
    records = [(step, parameters if exact else None)]
    if most == 1:
        function = _decompose._checkpoint_part
        tasks = [(parameters, records)] * checkpoints
    else:
        stacked = _stacks.stack_mappings([parameters] * checkpoints)
        stacked_step = _decompose.Step(
            torch.full((checkpoints,), 0.1, dtype=torch.float64),
            *(torch.stack([field] * checkpoints) for field in step[1:]),
        )
        end = stacked if exact else None
        function, tasks = (
            _decompose._stacked_checkpoint_part,
            [(stacked, [(stacked_step, end)])],
        )
    function(walk, 0, 2048, *tasks[0])  # the block's static Gram
    b = torch.empty(2048, 10, dtype=torch.float64, device="meta")
    phi = torch.zeros(2048, 1797, 10, dtype=torch.float64, device="meta")
    with Dispatched() as counted:
        for task in tasks:
            for batch, part, bias_term in function(walk, 0, 2048, *task):
                phi.index_add_(1, batch.to(b.device), part.double())
                b -= bias_term
    return counted


@pytest.mark.parametrize("exact", [False, True])
def test_stacked_checkpoints_dispatch_fewer_operations_per_checkpoint(exact):
    one = _w2_decomposition_ops(1, exact, checkpoints=8)
    stacked = _w2_decomposition_ops(8, exact, checkpoints=8)
    assert one.total >= 2 * stacked.total, (one.total, stacked.total)
    assert one.launches >= 4 * stacked.launches, (one.launches, stacked.launches)
    assert one.synchronising == stacked.synchronising == []


def test_out_of_memory_in_a_stack_retries_with_smaller_stacks(monkeypatch):
    rng = np.random.RandomState(1)
    X = rng.randn(30, 3)
    est = _fit(PathKernelRegressor, X, np.sin(X[:, 0]), hidden_layer_sizes=(6,),
               max_iter=4)  # fmt: skip
    want = est.decompose(X)
    calls, task = [], _decompose._stacked_checkpoint_part

    def failing(walk, q0, q1, start, steps):
        calls.append((q1 - q0, next(iter(start.values())).shape[0]))
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return task(walk, q0, q1, start, steps)

    monkeypatch.setattr(_decompose, "_stacked_checkpoint_part", failing)
    with (
        _blocking.device_policy(2**30),  # one block of 30 rows, 4 stacked
        pytest.warns(RuntimeWarning, match="decomposition ran out of CUDA memory"),
    ):
        got = est.decompose(X)
    assert calls[0] == (30, 4)
    assert {size for _, size in calls[1:]} == {2}  # 4 // 2
    np.testing.assert_allclose(
        got.contributions, want.contributions, rtol=1e-12, atol=1e-15
    )
