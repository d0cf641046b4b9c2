"""Influence and self-influence against per-example loss gradients and Captum."""

import copy

import numpy as np
import pytest
import torch
from _oracle import flat_metric, jacobian_rows
from torch import nn

from sklearn_pathkernel import PathKernelClassifier, PathKernelRegressor, load, save
from sklearn_pathkernel._explain._influence import (
    path_influence,
    path_self_influence,
)


def _blobs(n, n_features=4, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    centres = rng.normal(size=(n_classes, n_features)) * 2
    return centres[y] + rng.normal(size=(n, n_features)), y


def _classifier(solver="sgd", n_classes=3, n=30, **options):
    X, y = _blobs(n, n_classes=n_classes)
    clf = PathKernelClassifier(
        (6,),
        solver=solver,
        learning_rate_init=0.05 if solver == "adam" else 0.3,
        max_iter=8,
        dtype="float64",
        random_state=0,
        **options,
    )
    return clf.fit(X, y), X, y


def _loss_gradients(module, parameters, X, T, loss):
    """``J(x)^T g`` per row, from the oracle's Jacobians: (n, d) float64."""
    J = jacobian_rows(module, parameters, torch.as_tensor(X))
    with torch.no_grad():
        f = torch.func.functional_call(module, parameters, (torch.as_tensor(X),))
    f, T = f.double(), torch.as_tensor(T, dtype=torch.float64)
    if loss == "squared_error":
        g = f - T
    elif loss == "poisson":
        g = torch.exp(f) - T
    elif loss == "binary_log_loss" or f.shape[1] == 1:
        g = torch.sigmoid(f) - T
    else:
        g = torch.softmax(f, dim=1) - T
    return np.einsum("no,nod->nd", g.numpy(), J)


def _reference(est, X, T, loss, names=None):
    """``sum_k weight_k G_k(X) M_k G_k(train)^T`` and its self part, explicitly."""
    traj = est.trajectory_
    total, own = 0.0, 0.0
    for step, weight in traj.kernel_nodes():
        at = traj.parameters_at(step)
        module = copy.deepcopy(est.module_)
        module.load_state_dict(at, strict=False)
        trained = {n: at[n] for n in names or traj.parameter_names}
        metric = traj.kernel_metric_at(step)
        m = 1.0 if metric is None else flat_metric(trained, metric)
        G = _loss_gradients(module, trained, X, T, loss)
        G_train = _loss_gradients(module, trained, est._fit_X, est._fit_targets, loss)
        total = total + weight * (G * m) @ G_train.T
        own = own + weight * ((G * m) * G).sum(axis=1)
    return total, own


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_influence_is_the_loss_gradient_path_sum(solver):
    clf, X, y = _classifier(solver)
    T = np.eye(3)[y]
    want, own = _reference(clf, X[:4], T[:4], "log_loss")
    np.testing.assert_allclose(clf.influence(X[:4], y[:4]), want, rtol=1e-10)
    np.testing.assert_allclose(clf.self_influence(X[:4], y[:4]), own, rtol=1e-10)
    # The training rows by default, with the targets fit kept.
    np.testing.assert_allclose(clf.self_influence()[:4], own, rtol=1e-10)


def test_regressor_and_binary_classifier_influence():
    X, _ = _blobs(24)
    Y = np.column_stack([np.sin(X[:, 0]), X[:, 1]])
    reg = PathKernelRegressor(
        (5,), max_iter=6, learning_rate_init=0.05, dtype="float64", random_state=0
    ).fit(X, Y)
    want, own = _reference(reg, X[:3], Y[:3], "squared_error")
    np.testing.assert_allclose(reg.influence(X[:3], Y[:3]), want, rtol=1e-10)
    np.testing.assert_allclose(reg.self_influence(X[:3], Y[:3]), own, rtol=1e-10)
    labels = np.where(X[:, 0] > 0, "yes", "no")
    clf = PathKernelClassifier((5,), max_iter=6, dtype="float64", random_state=0)
    clf.fit(X, labels)
    want, _ = _reference(clf, X[:3], (labels[:3] == "yes")[:, None], "log_loss")
    np.testing.assert_allclose(clf.influence(X[:3], labels[:3]), want, rtol=1e-10)


def test_poisson_and_multilabel_influence_use_their_loss_derivatives():
    X, _ = _blobs(24)
    counts = np.random.default_rng(1).poisson(np.exp(0.5 * X[:, 0]))
    params = {"max_iter": 6, "dtype": "float64", "random_state": 0}
    reg = PathKernelRegressor((5,), loss="poisson", learning_rate_init=0.05, **params)
    reg.fit(X, counts)
    want, own = _reference(reg, X[:3], counts[:3, None], "poisson")
    np.testing.assert_allclose(reg.influence(X[:3], counts[:3]), want, rtol=1e-10)
    np.testing.assert_allclose(reg.self_influence()[:3], own, rtol=1e-10)
    # Multilabel: the logistic loss on each label's logit, not the softmax.
    Y = np.column_stack([X[:, 0] > 0, X[:, 1] > 0, X[:, 2] > 1]).astype(int)
    clf = PathKernelClassifier((5,), **params).fit(X, Y)
    want, own = _reference(clf, X[:3], Y[:3], "binary_log_loss")
    np.testing.assert_allclose(clf.influence(X[:3], Y[:3]), want, rtol=1e-10)
    np.testing.assert_allclose(clf.self_influence(X[:3], Y[:3]), own, rtol=1e-10)
    softmax, _ = _reference(clf, X[:3], Y[:3], "log_loss")
    assert not np.allclose(want, softmax)
    with pytest.raises(ValueError, match=r"y must have shape \(2, 3\)"):
        clf.influence(X[:2], Y[:2, 0])
    with pytest.raises(ValueError, match="multilabel indicator"):
        clf.influence(X[:2], 2 * Y[:2])


def test_self_influence_is_the_diagonal_and_blocking_keeps_the_bits():
    clf, X, y = _classifier(batch_size=8)
    T = clf._fit_targets
    args = (clf.module_, clf.trajectory_, X, T)
    full = path_influence(*args, loss="log_loss")
    np.testing.assert_array_equal(full, full.T)  # no X: symmetric
    own = path_self_influence(*args, loss="log_loss")
    np.testing.assert_allclose(own, np.diag(full), rtol=1e-12)
    assert (own > 0).all()
    small = dict(working_memory=0.01, n_jobs=2)
    np.testing.assert_array_equal(
        path_self_influence(*args, loss="log_loss", **small), own
    )
    some = path_influence(*args, X[:5], T[:5], loss="log_loss")
    np.testing.assert_allclose(some, full[:5], rtol=1e-12)
    np.testing.assert_array_equal(
        path_influence(*args, X[:5], T[:5], loss="log_loss", **small), some
    )


@pytest.mark.parametrize("engine", ["hooks", "jacobian", "ntk_vp"])
def test_every_engine_gives_the_same_influence(engine):
    clf, X, y = _classifier("adam", n=12)
    args = (clf.module_, clf.trajectory_, X, clf._fit_targets, X[:3], np.eye(3)[y[:3]])
    want = path_influence(*args, loss="log_loss")
    got = path_influence(*args, loss="log_loss", engine=engine)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    own = path_self_influence(*args[:2], X[:3], args[5], loss="log_loss")
    got = path_self_influence(*args[:2], X[:3], args[5], loss="log_loss", engine=engine)
    np.testing.assert_allclose(got, own, rtol=1e-10)


@pytest.mark.parametrize("engine", ["structured", "hooks", "jacobian"])
def test_a_parameter_subset_holds_the_rest_at_each_node(engine):
    clf, X, y = _classifier()
    last = ["2.weight", "2.bias"]
    want, own = _reference(clf, X[:3], np.eye(3)[y[:3]], "log_loss", names=last)
    args = (clf.module_, clf.trajectory_, X, clf._fit_targets)
    options = dict(loss="log_loss", parameter_names=last, engine=engine)
    got = path_influence(*args, X[:3], np.eye(3)[y[:3]], **options)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    got = path_self_influence(
        clf.module_, clf.trajectory_, X[:3], np.eye(3)[y[:3]], **options
    )
    np.testing.assert_allclose(got, own, rtol=1e-10)


def test_a_callable_loss_gradient():
    clf, X, y = _classifier()
    args = (clf.module_, clf.trajectory_, X, clf._fit_targets)

    def doubled(outputs, targets):
        return 2 * (torch.softmax(outputs, dim=1) - targets)

    np.testing.assert_allclose(
        path_self_influence(*args, loss=doubled),
        4 * path_self_influence(*args, loss="log_loss"),
        rtol=1e-12,
    )


def test_influence_errors_name_the_problem():
    clf, X, y = _classifier()
    with pytest.raises(ValueError, match="labels not seen in training: \\[7\\]"):
        clf.influence(X[:2], [0, 7])
    with pytest.raises(ValueError, match=r"y must have shape \(2,\)"):
        clf.influence(X[:2], y[:3])
    with pytest.raises(ValueError, match="X and y go together"):
        clf.self_influence(X[:2])
    reg = PathKernelRegressor((4,), max_iter=2, random_state=0).fit(X, X[:, 0])
    with pytest.raises(ValueError, match="y contains NaN or infinity"):
        reg.influence(X[:2], [0.0, np.nan])
    with pytest.raises(ValueError, match=r"y must have shape \(2, 1\)"):
        reg.self_influence(X[:2], np.zeros((2, 2)))
    args = (clf.module_, clf.trajectory_, X, clf._fit_targets)
    with pytest.raises(ValueError, match="loss must be one of"):
        path_influence(*args, loss="hinge")
    with pytest.raises(ValueError, match="X and Y go together"):
        path_influence(*args, X[:2], loss="log_loss")
    with pytest.raises(ValueError, match="subset of the trajectory's parameters"):
        path_influence(*args, loss="log_loss", parameter_names=["9.weight"])
    with pytest.raises(ValueError, match="Y_train must have shape \\(30, 3\\)"):
        path_influence(*args[:3], y, loss="log_loss")
    with pytest.raises(ValueError, match="one number per row and output"):
        path_self_influence(*args, loss=lambda f, t: f[:, :1])


def test_saved_estimators_keep_the_training_targets(tmp_path):
    clf, X, y = _classifier()
    save(clf, tmp_path / "clf.skpk")
    loaded = load(tmp_path / "clf.skpk")
    np.testing.assert_array_equal(loaded.self_influence(), clf.self_influence())
    del loaded._fit_targets  # as a file of an older version
    with pytest.raises(ValueError, match="did not keep the training targets"):
        loaded.influence(X[:1], y[:1])


# -- Captum's TracInCP (optional test dependency) --------------------------------


def _captum_checkpoints(est):
    """Captum's view of the kernel nodes: one load function, lr = node weight."""
    traj = est.trajectory_
    nodes = traj.kernel_nodes()
    model = copy.deepcopy(est.module_)

    def load_node(model, checkpoint):
        step, weight = nodes[int(checkpoint)]
        model.load_state_dict(traj.parameters_at(step), strict=False)
        return weight

    return model, [str(k) for k in range(len(nodes))], load_node


def _tracin(est, X, labels, loss_fn, fast_layer=None):
    captum = pytest.importorskip("captum.influence")
    model, checkpoints, load_node = _captum_checkpoints(est)
    data = torch.utils.data.TensorDataset(torch.as_tensor(est._fit_X), labels)
    if fast_layer is not None:
        return captum.TracInCPFast(
            model,
            fast_layer(model),
            data,
            checkpoints,
            checkpoints_load_func=load_node,
            loss_fn=loss_fn,
            batch_size=64,
        )
    return captum.TracInCP(
        model,
        data,
        checkpoints,
        checkpoints_load_func=load_node,
        loss_fn=loss_fn,
        batch_size=64,
        sample_wise_grads_per_batch=True,
    )


@pytest.mark.slow  # importing captum takes seconds
def test_influence_is_captums_tracincp_on_an_mlp():
    clf, X, y = _classifier(batch_size=10)
    tracin = _tracin(clf, X, torch.as_tensor(y), nn.CrossEntropyLoss(reduction="sum"))
    test = (torch.as_tensor(X[:5]), torch.as_tensor(y[:5]))
    want = tracin.influence(test).numpy()
    np.testing.assert_allclose(clf.influence(X[:5], y[:5]), want, rtol=1e-10)
    own = tracin.self_influence(outer_loop_by_checkpoints=True).numpy()
    np.testing.assert_allclose(clf.self_influence(), own, rtol=1e-10)
    # The last layer's weight alone: TracInCPFast.
    fast = _tracin(
        clf,
        X,
        torch.as_tensor(y),
        nn.CrossEntropyLoss(reduction="sum"),
        fast_layer=lambda model: model[2],
    )
    got = path_influence(
        clf.module_,
        clf.trajectory_,
        X,
        clf._fit_targets,
        X[:5],
        np.eye(3)[y[:5]],
        loss="log_loss",
        parameter_names=["2.weight"],
    )
    np.testing.assert_allclose(got, fast.influence(test).numpy(), rtol=1e-10)


@pytest.mark.slow
def test_influence_is_captums_tracincp_for_squared_error_and_a_cnn():
    """Half the summed squares is our loss; a small CNN goes through the hooks."""
    X, _ = _blobs(20, n_features=16)
    Y = np.sin(X[:, :2])

    def make(n_features, n_outputs):
        return nn.Sequential(
            nn.Unflatten(1, (1, 4, 4)),
            nn.Conv2d(1, 2, 3),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(8, n_outputs),
        )

    reg = PathKernelRegressor(
        module=make,
        max_iter=5,
        learning_rate_init=0.05,
        dtype="float64",
        random_state=0,
    ).fit(X, Y)

    def half_squares(f, t):
        return 0.5 * ((f - t) ** 2).sum()

    half_squares.reduction = "sum"
    tracin = _tracin(reg, X, torch.as_tensor(Y), half_squares)
    test = (torch.as_tensor(X[:4]), torch.as_tensor(Y[:4]))
    np.testing.assert_allclose(
        reg.influence(X[:4], Y[:4]), tracin.influence(test).numpy(), rtol=1e-10
    )
