"""Continuing a recorded path: partial_fit and warm_start (design section 13).

The functions of ``_training/_continuation.py`` against plain references on
small data first; then the estimators' continuations end to end, against one
uninterrupted fit and the kernel oracle.
"""

import pickle
import types
import warnings

import numpy as np
import pytest
import torch
from _fits import interrupt_at_step, quiet_fit
from _oracle import path_kernel_reference
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from sklearn_pathkernel import PathKernel, PathKernelClassifier, PathKernelRegressor
from sklearn_pathkernel._model._network import make_mlp
from sklearn_pathkernel._training import _continuation as continuation
from sklearn_pathkernel.exceptions import DivergenceWarning


@pytest.fixture
def toy():
    rng = np.random.RandomState(0)
    X = rng.randn(40, 3)
    return X, X[:, 0] - 0.5 * X[:, 1] ** 2


@pytest.fixture(scope="module")
def momentum_fit():
    """A tiny fitted path with momentum (so it keeps an optimiser state)."""
    X = np.random.RandomState(0).randn(12, 3)
    est = PathKernelRegressor((4,), momentum=0.9, max_iter=1, random_state=0)
    return quiet_fit(est, X, X[:, 0])


# -- the refusals ----------------------------------------------------------------
def _settings(est, **change):
    settings = {
        "solver": est.trajectory_.solver,
        "record_every": est.record_every,
        "quadrature": est.quadrature,
        "kernel_nodes": est.kernel_nodes,
        "dtype": torch.float32,
        "hidden_widths": [4],
    }
    settings.update(change)
    return settings


def _check(est, settings, has_targets=True, state="kept"):
    continuation.check_continuable(
        "Est",
        est.trajectory_,
        est.module_,
        settings,
        has_targets=has_targets,
        optimizer_state=est._optimizer_state if state == "kept" else state,
    )


def test_an_unchanged_path_may_continue(momentum_fit):
    _check(momentum_fit, _settings(momentum_fit))
    assert (
        continuation.changed_settings(
            momentum_fit.trajectory_, momentum_fit.module_, _settings(momentum_fit)
        )
        == []
    )


def test_every_change_is_named_in_order(momentum_fit):
    sgd = momentum_fit.trajectory_.solver
    other_rule = type(sgd)("sgd", momentum=0.5, nesterov=True)
    changes = {
        "solver": other_rule,
        "record_every": 2,
        "quadrature": "trapezoid",
        "kernel_nodes": 5,
        "dtype": torch.float64,
        "hidden_widths": [5],
    }
    names = continuation.changed_settings(
        momentum_fit.trajectory_,
        momentum_fit.module_,
        _settings(momentum_fit, **changes),
    )
    assert names[1:] == [
        "record_every",
        "quadrature",
        "kernel_nodes",
        "dtype",
        "hidden_layer_sizes",
    ]
    assert names[0].startswith("the update rule (solver, momentum")
    with pytest.raises(
        ValueError,
        match=r"^Est cannot continue its path .*: record_every, dtype changed",
    ):
        _check(
            momentum_fit, _settings(momentum_fit, record_every=3, dtype=torch.float64)
        )


def test_a_path_without_targets_or_state_is_refused(momentum_fit):
    with pytest.raises(
        ValueError, match="^This Est was saved by a version that did not"
    ):
        _check(momentum_fit, _settings(momentum_fit), has_targets=False)
    with pytest.raises(ValueError, match="did not keep its optimiser's state"):
        _check(momentum_fit, _settings(momentum_fit), state=None)


def test_plain_sgd_needs_no_state():
    X = np.random.RandomState(0).randn(8, 2)
    est = quiet_fit(PathKernelRegressor((3,), max_iter=1, random_state=0), X, X[:, 0])
    settings = _settings(est, hidden_widths=[3])
    _check(est, settings, state=None)  # no error: plain sgd keeps no state


def test_hidden_widths_are_compared_only_for_the_default_mlp():
    mlp = make_mlp(3, 1, [4, 2], "tanh", random_state=np.random.RandomState(0))
    assert continuation.same_hidden_widths(mlp, [4, 2])
    assert continuation.same_hidden_widths(mlp, (4, 2))
    assert not continuation.same_hidden_widths(mlp, [4])
    assert continuation.same_hidden_widths(mlp, None)  # a user module
    conv = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten())
    assert continuation.same_hidden_widths(conv, [7])  # not an MLP: nothing to compare


def test_another_number_of_outputs_is_refused():
    continuation.check_same_outputs(np.zeros(5), 1, "Est")
    continuation.check_same_outputs(np.zeros((5, 2)), 2, "Est")
    with pytest.raises(ValueError, match=r"^y has 2 output\(s\) \(columns\), but this"):
        continuation.check_same_outputs(np.zeros((5, 2)), 1, "Est")


# -- the optimiser's state ----------------------------------------------------------
def test_the_state_copy_shares_no_tensor():
    state = {0: {"step": torch.tensor(3.0), "momentum_buffer": torch.ones(2), "n": 1}}
    copied = continuation.copy_optimizer_state(state, device="cpu")
    copied[0]["momentum_buffer"] += 1
    copied[0]["step"] += 1
    assert torch.equal(state[0]["momentum_buffer"], torch.ones(2))
    assert state[0]["step"].item() == 3.0 and copied[0]["n"] == 1


def _optimizer(kind, parameter):
    if kind == "adam":
        return torch.optim.Adam([parameter], lr=0.1)
    return torch.optim.SGD([parameter], lr=0.1, momentum=0.9, nesterov=True)


def _descend(optimizer, parameter, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        ((parameter - torch.arange(3.0)) ** 4).sum().backward()
        optimizer.step()


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_a_kept_and_resumed_state_steps_as_one_optimiser(kind):
    """Reference: one optimiser taking three steps. Kept after two steps and
    loaded into a new optimiser, the state takes the third bit for bit."""
    one = torch.zeros(3, requires_grad=True)
    _descend(_optimizer(kind, one), one, 3)
    part = torch.zeros(3, requires_grad=True)
    first = _optimizer(kind, part)
    _descend(first, part, 2)
    done = types.SimpleNamespace(diverged=False, validation_scores=None)
    kept = continuation.state_at_path_end(done, first)
    path = types.SimpleNamespace(n_steps=2, step_sizes=np.array([0.1, 0.1]))
    second = _optimizer(kind, part)
    continuation.resume_optimizer(second, kept, path)
    _descend(second, part, 1)
    assert torch.equal(part, one)
    assert all(not torch.equal(kept[0][k], second.state[part][k]) for k in kept[0])


def test_the_resumed_rate_is_the_last_steps_size():
    parameter = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.SGD([parameter], lr=0.5, momentum=0.9)
    state = {0: {"momentum_buffer": torch.ones(2)}}
    continuation.resume_optimizer(
        optimizer, state, types.SimpleNamespace(n_steps=1, step_sizes=[0.25])
    )
    assert optimizer.param_groups[0]["lr"] == 0.25
    fresh = torch.optim.SGD([parameter], lr=0.5, momentum=0.9)
    continuation.resume_optimizer(fresh, None, None)  # plain sgd: nothing kept
    assert fresh.param_groups[0]["lr"] == 0.5 and not fresh.state


@pytest.mark.parametrize(
    "diverged, scores, kept",
    [
        (False, None, True),
        (True, None, False),
        (False, [0.1, 0.3, 0.2], False),
        (False, [0.1, 0.2, 0.3], True),
    ],
)
def test_a_state_off_the_paths_end_is_not_kept(diverged, scores, kept):
    parameter = torch.zeros(3, requires_grad=True)
    optimizer = _optimizer("sgd", parameter)
    _descend(optimizer, parameter, 1)
    result = types.SimpleNamespace(diverged=diverged, validation_scores=scores)
    state = continuation.state_at_path_end(result, optimizer)
    assert (state is not None) == kept


# -- the rows and the records ------------------------------------------------------
def _brute_offset(stored, rows):
    """Reference: the first start whose block equals ``rows``, else appended."""
    n, total = rows[0].shape[0], stored[0].shape[0]
    for start in range(total - n + 1):
        if all(np.array_equal(a[start : start + n], b) for a, b in zip(stored, rows)):
            return start
    return total


def test_the_row_offset_is_the_first_equal_block():
    rng = np.random.RandomState(0)
    X = rng.randint(0, 2, (30, 2)).astype(float)  # rows repeat often
    weight, targets = rng.randint(1, 3, 30).astype(float), rng.randint(0, 2, (30, 1))
    stored = (X, weight, targets.astype(float))
    for start, n in [(0, 30), (3, 4), (11, 1), (20, 10), (7, 31)]:
        rows = tuple(a[start : start + n] for a in stored)
        assert continuation.row_offset(stored, rows) == _brute_offset(stored, rows)
    for column in range(3):  # another X, weight or target: appended
        rows = [a[5:9].copy() for a in stored]
        rows[column][2] += 7
        assert continuation.row_offset(stored, tuple(rows)) == 30


def test_the_row_search_looks_at_a_bounded_number_of_starts():
    n = continuation.MAX_ROW_MATCHES + 10
    X, weight = np.zeros((n, 2)), np.ones(n)
    targets = np.zeros((n, 1))
    targets[-2:] = 1  # identical X everywhere: the match is past the bound
    rows = (X[-2:], weight[-2:], targets[-2:])
    assert _brute_offset((X, weight, targets), rows) == n - 2
    assert continuation.row_offset((X, weight, targets), rows) == n


def test_rows_held_stay_and_new_rows_are_appended():
    stored = (np.zeros((3, 2)), np.ones(3), np.zeros((3, 1)))
    rows = (np.ones((2, 2)), np.full(2, 2.0), np.ones((2, 1)))
    assert continuation.joined_rows(stored, rows, 1) is stored
    X, weight, targets = continuation.joined_rows(stored, rows, 3)
    assert np.array_equal(X, np.vstack([stored[0], rows[0]]))
    assert weight.tolist() == [1, 1, 1, 2, 2] and targets.shape == (5, 1)


def test_the_records_add_up_and_the_bests_are_over_all_calls():
    previous = {
        "loss_curve": [3.0, 2.0],
        "best_loss": 2.0,
        "validation_scores": None,
        "best_validation_score": None,
        "n_iter": 2,
    }
    result = types.SimpleNamespace(
        loss_curve=[2.5],
        best_loss=2.5,
        validation_scores=[0.4],
        best_validation_score=0.4,
        n_iter=1,
    )
    joined = continuation.joined_history(previous, result)
    assert joined == {
        "loss_curve": [3.0, 2.0, 2.5],
        "best_loss": 2.0,
        "validation_scores": [0.4],
        "best_validation_score": 0.4,
        "n_iter": 3,
    }
    later = types.SimpleNamespace(
        loss_curve=[],
        best_loss=None,
        validation_scores=None,
        best_validation_score=None,
        n_iter=0,
    )
    assert continuation.joined_history(joined, later) == joined


class _Path:
    """Records what ``extending`` asks of a trajectory."""

    def __init__(self):
        self.calls = []

    def _shift_rows(self, first_step, offset):
        self.calls.append(("shift", first_step, offset))

    def _rewind(self, mark):
        self.calls.append(("rewind", mark))


def test_extending_joins_the_new_steps_or_takes_them_back():
    path, mark = _Path(), (4, "w_T")
    with continuation.extending(path, mark, 10):
        pass
    assert path.calls == [("shift", 4, 10)]
    path.calls.clear()
    with pytest.raises(KeyboardInterrupt), continuation.extending(path, mark, 10):
        raise KeyboardInterrupt
    assert path.calls == [("rewind", mark)]
    with continuation.extending(None, None, 0):  # a new path: nothing to do
        pass


# -- the estimators' continuations, end to end --------------------------------------
CONTINUED = {
    "sgd": {},
    "nesterov": {"momentum": 0.9},
    "adam": {"solver": "adam", "learning_rate_init": 0.01},
}


def _same_parameters(a, b):
    pa, pb = a.trajectory_.final_parameters(), b.trajectory_.final_parameters()
    return all(torch.equal(pa[name], pb[name]) for name in pa)


@pytest.mark.parametrize(
    "solver", [*CONTINUED, "invscaling"], ids=[*CONTINUED, "invscaling"]
)
def test_continuing_takes_the_steps_one_fit_takes(toy, solver):
    """Full batch, so that each epoch is one step whatever the seed: three
    partial_fit calls, and fit + warm-start fit, take bit for bit the steps
    of one fit of three epochs. A fresh optimiser (lost momentum, Adam's
    step count) or a restarted invscaling schedule would not."""
    X, y = toy
    params = CONTINUED.get(solver, {"learning_rate": "invscaling", "momentum": 0.5})
    params = dict(hidden_layer_sizes=(5,), dtype="float64", random_state=0, **params)
    one = quiet_fit(PathKernelRegressor(max_iter=3, tol=0, **params), X, y)
    parts = PathKernelRegressor(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # partial_fit: none
        for _ in range(3):
            parts.partial_fit(X, y)
    warm = quiet_fit(PathKernelRegressor(max_iter=1, warm_start=True, **params), X, y)
    quiet_fit(warm.set_params(max_iter=2, tol=0), X, y)
    for est in (parts, warm):
        assert _same_parameters(est, one)
        assert est.loss_curve_ == one.loss_curve_
        assert (est.n_iter_, est.t_, est.trajectory_.n_steps) == (3, 120, 3)
        assert est._fit_X.shape == (40, 3)  # the same rows are kept once
    assert np.array_equal(parts.kernel(X[:5]), one.kernel(X[:5]))


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_three_partial_fits_on_other_rows_give_one_exact_path(toy, solver):
    """Each call's rows join the kernel machine from its first step on: the
    kernel is the oracle's over the whole path, and the exact decomposition
    over all the rows reproduces the final network."""
    X, y = toy
    weights = np.random.RandomState(1).uniform(0.5, 2, len(X))
    est = PathKernelRegressor(
        (5,), dtype="float64", batch_size=8, random_state=0, **CONTINUED[solver]
    )
    for rows in (slice(0, 10), slice(10, 25), slice(25, 40)):
        est.partial_fit(X[rows], y[rows], sample_weight=weights[rows])
    trajectory = est.trajectory_
    assert trajectory.n_steps == 2 + 2 + 2 and est.t_ == 40 and est.n_iter_ == 3
    assert np.array_equal(est._fit_X, X) and np.array_equal(
        est._fit_sample_weight, weights
    )
    last_call = [trajectory.step(t).batch for t in (4, 5)]  # 25..39, shuffled
    assert sorted(torch.cat(last_call).tolist()) == list(range(25, 40))
    K = est.kernel(X[:6], X[30:])
    want = path_kernel_reference(est.module_, trajectory, X[:6], X[30:])
    np.testing.assert_allclose(K, want, rtol=1e-10, atol=1e-12)
    machine = est.decompose(X[:4], exact=True, n_nodes=6)
    assert machine.contributions.shape == (4, 40, 1)
    assert machine.error["max_rel"] <= 1e-10, machine.error


def test_warm_start_on_new_rows_extends_the_path_in_float32(toy):
    X, y = toy
    est = PathKernelClassifier((5,), momentum=0.9, batch_size=10, random_state=0)
    labels = (y > 0).astype(int)
    quiet_fit(est.set_params(max_iter=2), X[:20], labels[:20])
    quiet_fit(est.set_params(warm_start=True, max_iter=3), X[20:], labels[20:])
    assert est.trajectory_.n_steps == 4 + 6 and est._fit_X.shape == (40, 3)
    assert len(est.loss_curve_) == est.n_iter_ == 5 and est.t_ == 40 + 60
    A, B = X[:5].astype(np.float32), X[18:24].astype(np.float32)
    K = est.kernel(A, B)
    want = path_kernel_reference(est.module_, est.trajectory_, A, B)
    np.testing.assert_allclose(K, want, rtol=1e-6, atol=1e-7)
    contributions = est.decompose(X[:3], exact=True).contributions
    assert np.abs(contributions[:, 20:]).sum() > 0  # the new rows count


def test_warm_start_with_float64_decomposes_exactly(toy):
    X, y = toy
    est = PathKernelRegressor((5,), dtype="float64", momentum=0.9, random_state=0)
    quiet_fit(est.set_params(max_iter=3, batch_size=10), X[:25], y[:25])
    quiet_fit(est.set_params(warm_start=True, max_iter=2), X[25:], y[25:])
    machine = est.decompose(X[:4], exact=True, n_nodes=6)
    assert machine.error["max_rel"] <= 1e-10, machine.error
    K = est.kernel(X[:4])
    want = path_kernel_reference(est.module_, est.trajectory_, X[:4])
    np.testing.assert_allclose(K, want, rtol=1e-10, atol=1e-12)


def test_classifier_partial_fit_takes_classes_first_and_keeps_them(toy):
    X, y = toy
    labels = np.where(y > 0, "yes", "no")
    est = PathKernelClassifier((4,), random_state=0, early_stopping=True)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        est.partial_fit(X, labels)
    with pytest.raises(ValueError, match="classes of at least 2 labels"):
        est.partial_fit(X, labels, classes=["yes"])
    assert not hasattr(est, "classes_")
    est.partial_fit(X[:5], labels[:5], classes=["yes", "no", "maybe"])
    assert est.classes_.tolist() == ["maybe", "no", "yes"]
    assert est.validation_scores_ is None  # early_stopping is ignored, as by MLP
    with pytest.raises(ValueError, match=r"labels not seen in training: \['never'\]"):
        est.partial_fit(X[:2], ["yes", "never"])
    with pytest.raises(ValueError, match="is not the same as on last call"):
        est.partial_fit(X[:2], labels[:2], classes=["no", "yes"])
    with pytest.raises(ValueError, match="X has 2 features, but PathKernelClassifier"):
        est.partial_fit(X[:2, :2], labels[:2])
    assert est._fit_X.shape == (5, 3) and est.n_iter_ == 1


def test_continuing_refuses_another_network_or_update_rule(toy):
    X, y = toy
    est = PathKernelRegressor((4,), momentum=0.9, random_state=0).partial_fit(X, y)
    with pytest.raises(ValueError, match="y has 2 output"):
        est.partial_fit(X, np.column_stack([y, y]))
    for change, what in [
        ({"momentum": 0.5}, "the update rule"),
        ({"hidden_layer_sizes": (6,)}, "hidden_layer_sizes"),
        ({"dtype": "float64", "record_every": 2}, "record_every, .*dtype"),
    ]:
        est_changed = pickle.loads(pickle.dumps(est)).set_params(**change)
        with pytest.raises(ValueError, match=f"cannot continue its path.*{what}"):
            est_changed.partial_fit(X, y)
    # Without the optimiser's state (an older file) momentum cannot go on;
    # plain sgd, which has none, can.
    del est._optimizer_state
    with pytest.raises(ValueError, match="did not keep its optimiser's state"):
        est.partial_fit(X, y)
    plain = PathKernelRegressor((4,), random_state=0).partial_fit(X, y)
    del plain._optimizer_state, plain._rows_seen
    assert plain.partial_fit(X, y).t_ == 80


def test_interrupted_continuation_takes_its_steps_back_off_the_path(toy, monkeypatch):
    X, y = toy
    est = PathKernelRegressor((5,), momentum=0.9, batch_size=10, random_state=0)
    est.partial_fit(X, y)
    before = dict(vars(est))
    n_steps, K = est.trajectory_.n_steps, est.kernel(X[:6])
    state = {k: v.clone() for k, v in est._optimizer_state[0].items()}
    interrupt_at_step(monkeypatch, 2)  # the second of two steps
    with pytest.raises(KeyboardInterrupt):
        est.partial_fit(X[:20] + 1, y[:20])
    monkeypatch.undo()
    assert all(vars(est)[name] is value for name, value in before.items())
    assert est.trajectory_.n_steps == n_steps
    assert np.array_equal(est.kernel(X[:6]), K)
    assert all(torch.equal(state[k], est._optimizer_state[0][k]) for k in state)
    reference = PathKernelRegressor((5,), momentum=0.9, batch_size=10, random_state=0)
    reference.partial_fit(X, y).partial_fit(X[:20] + 1, y[:20])
    assert _same_parameters(est.partial_fit(X[:20] + 1, y[:20]), reference)


def test_a_gaussian_process_kernel_sees_the_extended_path(toy):
    """PathKernel remembers its last matrix per path: a continuation, which
    extends the same trajectory object, must not be served the old one."""
    X, y = toy
    est = PathKernelRegressor((4,), random_state=0).partial_fit(X, y)
    kernel = PathKernel(est)
    before = kernel(X[:5])
    assert np.array_equal(kernel(X[:5]), before)  # remembered
    est.partial_fit(X, y)
    assert np.array_equal(kernel(X[:5]), est.kernel(X[:5]))
    assert not np.array_equal(kernel(X[:5]), before)


def test_a_continuation_that_diverges_keeps_the_path_before_it(toy):
    """The diverging step is dropped, its epoch is not counted, and the
    optimiser's state (which took that step) is not kept: no continuation."""
    X, y = toy
    est = PathKernelRegressor((6,), activation="relu", momentum=0.9, random_state=0)
    est.partial_fit(X, y)
    final, curve = est.trajectory_.final_parameters(), list(est.loss_curve_)
    est.set_params(learning_rate_init=1e4)
    with pytest.warns(DivergenceWarning, match="training diverged at step 2"):
        est.partial_fit(X, y * 1e6)
    assert est.trajectory_.n_steps == 1 and est.loss_curve_ == curve
    assert est.n_iter_ == 1 and est._fit_X.shape == (80, 3)
    assert all(
        torch.equal(final[k], v) for k, v in est.trajectory_.final_parameters().items()
    )
    with pytest.raises(ValueError, match="training diverged and stepped back"):
        est.partial_fit(X, y)


def test_repeated_batches_are_the_same_training_rows(toy):
    """A loop of partial_fit calls over the same batches (epochs of a stream)
    keeps one copy of each row; other targets make other rows."""
    X, y = toy
    est = PathKernelRegressor((5,), dtype="float64", batch_size=10, random_state=0)
    for _ in range(2):
        for rows in (slice(0, 20), slice(20, 40)):
            est.partial_fit(X[rows], y[rows])
    assert est._fit_X.shape == (40, 3) and est.t_ == 80
    steps = est.trajectory_.step
    assert steps(5).batch.max() < 20 <= steps(7).batch.min()  # each batch's rows
    assert est.decompose(X[:3], exact=True).error["max_rel"] <= 1e-10
    est.partial_fit(X[5:25], y[5:25] + 1)
    assert est._fit_X.shape == (60, 3)
