"""PathKernelRegressor and PathKernelClassifier: behaviour a user relies on."""

import re
import warnings

import numpy as np
import pytest
import torch
from _fits import quiet_fit
from _oracle import path_kernel_reference
from scipy.special import expit, log_expit
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.exceptions import ConvergenceWarning, DataConversionWarning
from sklearn.kernel_ridge import KernelRidge
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from sklearn_pathkernel import PathKernelClassifier, PathKernelRegressor
from sklearn_pathkernel.exceptions import DivergenceWarning

ESTIMATORS = [PathKernelRegressor, PathKernelClassifier]


@pytest.fixture(scope="module")
def diabetes():
    X, y = load_diabetes(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
    scaler = StandardScaler().fit(X_train)
    mean, std = y_train.mean(), y_train.std()
    return (
        scaler.transform(X_train),
        scaler.transform(X_test),
        (y_train - mean) / std,
        (y_test - mean) / std,
    )


@pytest.fixture(scope="module")
def cancer():
    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, random_state=0, stratify=y
    )
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_test), y_train, y_test


@pytest.fixture
def toy():
    rng = np.random.RandomState(0)
    X = rng.randn(40, 3)
    return X, X[:, 0] - 0.5 * X[:, 1] ** 2


# -- the kernel with scikit-learn's kernel machines --------------------------
def test_kernel_ridge_on_the_path_kernel_of_diabetes(diabetes):
    X_train, X_test, y_train, y_test = diabetes
    reg = PathKernelRegressor(max_iter=100, random_state=0).fit(X_train, y_train)
    K_train, K_test = reg.kernel(X_train), reg.kernel(X_test, X_train)
    assert K_train.shape == (len(X_train), len(X_train))
    assert K_test.shape == (len(X_test), len(X_train))
    assert K_train.dtype == np.float64
    ridge = KernelRidge(kernel="precomputed", alpha=10.0).fit(K_train, y_train)
    # A linear model reaches about 0.4 R^2 here; an untrained kernel is useless.
    assert ridge.score(K_test, y_test) > 0.3
    assert reg.score(X_test, y_test) > 0.3


def test_svc_on_the_path_kernel_of_breast_cancer(cancer):
    X_train, X_test, y_train, y_test = cancer
    clf = PathKernelClassifier(max_iter=60, random_state=0)
    clf = quiet_fit(clf, X_train, y_train)
    precomputed = SVC(kernel="precomputed").fit(clf.kernel(X_train), y_train)
    assert precomputed.score(clf.kernel(X_test, X_train), y_test) > 0.9
    callable_kernel = SVC(kernel=clf.kernel).fit(X_train, y_train)
    assert callable_kernel.score(X_test, y_test) > 0.9
    np.testing.assert_array_equal(
        callable_kernel.predict(X_test),
        precomputed.predict(clf.kernel(X_test, X_train)),
    )
    assert clf.score(X_test, y_test) > 0.9


def test_kernel_is_symmetric_psd_and_agrees_with_itself(toy):
    X, y = toy
    reg = quiet_fit(PathKernelRegressor((12,), max_iter=30, random_state=0), X, y)
    K = reg.kernel(X)
    assert np.array_equal(K, K.T)
    assert np.linalg.eigvalsh(K).min() > -1e-6 * np.abs(K).max()
    # float32: a cross block and the symmetric one round differently (on a
    # GPU too), so compare at float32 precision of the kernel's scale.
    scale = np.abs(K).max()
    np.testing.assert_allclose(
        reg.kernel(X[:5], X), K[:5], rtol=1e-6, atol=1e-6 * scale
    )


def test_loss_decreases_and_attributes_are_set(toy):
    X, y = toy
    reg = quiet_fit(PathKernelRegressor((16,), max_iter=50, random_state=0), X, y)
    assert len(reg.loss_curve_) == reg.n_iter_ == 50
    assert reg.loss_curve_[-1] < 0.5 * reg.loss_curve_[0]
    assert len(reg.trajectory_) == reg.trajectory_.n_steps == 50
    np.testing.assert_allclose(reg.trajectory_.weights, 0.1)
    assert reg.n_features_in_ == 3 and reg.n_outputs_ == 1


def test_max_iter_warns_and_tol_stops(toy):
    X, y = toy
    with pytest.warns(ConvergenceWarning, match="reached max_iter=3 epochs"):
        PathKernelRegressor((4,), max_iter=3, random_state=0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        reg = PathKernelRegressor((4,), tol=10.0, random_state=0).fit(X, y)
    # The first epoch sets the best loss; then, as MLP, more than
    # n_iter_no_change epochs fail to beat it.
    assert reg.n_iter_ == reg.n_iter_no_change + 2


def test_minibatch_sgd_and_record_every(toy):
    X, y = toy
    reg = quiet_fit(
        PathKernelRegressor(
            (8,), batch_size=16, max_iter=10, record_every=4, random_state=0
        ),
        X,
        y,
    )
    assert reg.trajectory_.n_steps == 10 * 3  # batches of 16, 16 and 8 rows
    assert len(reg.trajectory_) == 8  # ceil(30 / 4)
    np.testing.assert_allclose(reg.trajectory_.weights.sum(), 0.1 * 30)
    assert reg.loss_curve_[-1] < reg.loss_curve_[0]


def test_sample_weight_equals_repeating_rows_in_float32(toy):
    X, y = toy
    weights = np.arange(len(X)) % 3
    repeated = np.repeat(np.arange(len(X)), weights)
    a = quiet_fit(
        PathKernelRegressor((8,), max_iter=20, random_state=0),
        X,
        y,
        sample_weight=weights,
    )
    b = quiet_fit(
        PathKernelRegressor((8,), max_iter=20, random_state=0), X[repeated], y[repeated]
    )
    np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
def test_every_activation_learns(toy, activation):
    X, y = toy
    reg = quiet_fit(
        PathKernelRegressor((16,), activation=activation, max_iter=40, random_state=0),
        X,
        y,
    )
    assert reg.loss_curve_[-1] < reg.loss_curve_[0]


def test_empty_hidden_layers_give_a_linear_model(toy):
    X, y = toy
    reg = quiet_fit(PathKernelRegressor((), max_iter=5, random_state=0), X, y)
    assert isinstance(reg.module_[0], torch.nn.Linear) and len(reg.module_) == 1
    # The path kernel of a linear model is (sum of step sizes) * (X X^T + 1).
    np.testing.assert_allclose(reg.kernel(X), 0.5 * (X @ X.T + 1), rtol=1e-5)


# -- targets ----------------------------------------------------------------
def test_regressor_keeps_the_shape_of_y(toy):
    X, y = toy
    one_d = quiet_fit(PathKernelRegressor((4,), max_iter=2), X, y)
    column = quiet_fit(PathKernelRegressor((4,), max_iter=2), X, y[:, None])
    two = quiet_fit(PathKernelRegressor((4,), max_iter=2), X, np.column_stack([y, -y]))
    assert one_d.predict(X).shape == (40,)
    assert column.predict(X).shape == (40, 1)
    assert two.predict(X).shape == (40, 2) and two.n_outputs_ == 2
    assert two.kernel(X[:3]).shape == (3, 3)


def test_binary_classifier_with_string_labels(toy):
    X, y = toy
    labels = np.where(y > 0, "yes", "no")
    clf = quiet_fit(PathKernelClassifier((8,), max_iter=40, random_state=0), X, labels)
    assert list(clf.classes_) == ["no", "yes"] and clf.n_outputs_ == 1
    scores, proba = clf.decision_function(X), clf.predict_proba(X)
    assert scores.shape == (40,) and proba.shape == (40, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.log(proba), clf.predict_log_proba(X), atol=1e-12)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[proba.argmax(axis=1)])
    assert clf.score(X, labels) > 0.8


def test_multiclass_classifier(toy):
    X, _ = toy
    y = np.digitize(X[:, 0], [-0.5, 0.5])
    clf = quiet_fit(PathKernelClassifier((8,), max_iter=60, random_state=0), X, y)
    assert clf.n_outputs_ == 3 and clf.decision_function(X).shape == (40, 3)
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.predict(X), proba.argmax(axis=1))
    assert clf.score(X, y) > 0.8


# -- user modules -------------------------------------------------------------
def test_user_module_instance_is_copied_not_trained_in_place(toy):
    X, y = toy
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 6), torch.nn.GELU(), torch.nn.Linear(6, 1)
    )
    before = [p.detach().clone() for p in net.parameters()]
    reg = quiet_fit(PathKernelRegressor(module=net, max_iter=20), X, y)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert reg.module_ is not net and reg.loss_curve_[-1] < reg.loss_curve_[0]
    refit = quiet_fit(clone(reg), X, y)  # same starting weights: same result
    assert np.array_equal(refit.predict(X), reg.predict(X))


def test_user_module_factory_is_seeded(toy):
    X, y = toy

    def factory(n_features, n_outputs):
        return torch.nn.Sequential(
            torch.nn.Linear(n_features, 5),
            torch.nn.Tanh(),
            torch.nn.Linear(5, n_outputs),
        )

    fits = [
        quiet_fit(PathKernelRegressor(module=factory, max_iter=5, random_state=1), X, y)
        for _ in range(2)
    ]
    assert np.array_equal(fits[0].kernel(X[:4]), fits[1].kernel(X[:4]))


def test_user_module_with_wrong_output_is_refused(toy):
    X, y = toy
    with pytest.raises(
        ValueError, match=r"outputs of shape \(n_samples, 1\); got \(2, 4\)"
    ):
        PathKernelRegressor(module=torch.nn.Linear(3, 4)).fit(X, y)
    with pytest.raises(ValueError, match="The 'module' failed on an input of shape"):
        PathKernelRegressor(module=torch.nn.Linear(5, 1)).fit(X, y)


# -- scikit-learn integration ---------------------------------------------
def test_pipeline_grid_search_and_clone(toy):
    X, y = toy
    pipe = make_pipeline(StandardScaler(), PathKernelRegressor((6,), random_state=0))
    grid = GridSearchCV(
        pipe, {"pathkernelregressor__learning_rate_init": [0.03, 0.1]}, cv=2
    )
    quiet_fit(grid, X, y)
    assert grid.best_params_["pathkernelregressor__learning_rate_init"] in (0.03, 0.1)
    cloned = clone(grid.best_estimator_[-1])
    assert not hasattr(cloned, "module_")


# -- bad input ----------------------------------------------------------------
@pytest.mark.parametrize("Est", ESTIMATORS)
@pytest.mark.parametrize(
    "bad_X, message",
    [
        (lambda X: np.where(X > 2, np.nan, X), "Input X contains NaN"),
        (lambda X: np.where(X > 2, np.inf, X), "Input X contains infinity"),
        (lambda X: X[:1], "Found array with 1 sample"),
        (lambda X: X[:0], "Found array with 0 sample"),
        (lambda X: X[:, :0], "0 feature"),
        (lambda X: X[:, 0], "Expected 2D array"),
        (lambda X: X * 1e39, "X contains values that are not finite in torch.float32"),
    ],
)
def test_bad_X_at_fit(Est, toy, bad_X, message):
    X, y = toy
    y = y if Est is PathKernelRegressor else (y > 0).astype(int)
    bad = bad_X(X)
    with pytest.raises(ValueError, match=message):
        Est(max_iter=2).fit(bad, y[: len(bad)])


def test_nan_in_y_is_refused(toy):
    X, y = toy
    with pytest.raises(ValueError, match="Input y contains NaN"):
        PathKernelRegressor().fit(X, np.where(y > 1, np.nan, y))


def test_one_class_is_refused(toy):
    X, _ = toy
    with pytest.raises(
        ValueError, match="at least 2 classes in y; got only one class: 'a'"
    ):
        PathKernelClassifier().fit(X, ["a"] * len(X))


@pytest.mark.parametrize(
    "weights, message",
    [
        (lambda n: -np.ones(n), "Negative values in data passed to `sample_weight`"),
        (lambda n: np.zeros(n), "Sample weights must contain at least one non-zero"),
        (lambda n: np.ones(n + 1), r"sample_weight.shape == \(41,\), expected \(40,\)"),
    ],
)
def test_bad_sample_weight(toy, weights, message):
    X, y = toy
    with pytest.raises(ValueError, match=message):
        PathKernelRegressor(max_iter=2).fit(X, y, sample_weight=weights(len(X)))


def test_wrong_number_of_features_after_fit(toy):
    X, y = toy
    reg = quiet_fit(PathKernelRegressor((4,), max_iter=2), X, y)
    expected = "X has 2 features, but PathKernelRegressor is expecting 3 features"
    with pytest.raises(ValueError, match=expected):
        reg.predict(X[:, :2])
    with pytest.raises(ValueError, match=expected):
        reg.kernel(X[:, :2])
    with pytest.raises(ValueError, match="Y has 2 features, but PathKernelRegressor"):
        reg.kernel(X, X[:, :2])
    with pytest.raises(ValueError, match="Input Y contains NaN"):
        reg.kernel(X, np.full((2, 3), np.nan))


def test_divergence_warns_and_keeps_a_finite_usable_model(toy):
    X, y = toy
    with pytest.warns(
        DivergenceWarning, match="Use a smaller learning_rate_init \\(now 1000"
    ):
        reg = PathKernelRegressor(
            (16,),
            learning_rate_init=1e3,
            activation="relu",
            max_iter=50,
            random_state=0,
        ).fit(X, 100 * y)
    assert np.isfinite(reg.predict(X)).all()
    assert np.isfinite(reg.kernel(X)).all()
    machine = reg.decompose(X[:5])  # the kept path still decomposes
    assert np.isfinite(machine.contributions).all()
    np.testing.assert_allclose(machine.network_output[:, 0], reg.predict(X[:5]))
    assert reg.trajectory_.n_steps < 50
    # Full batch: one epoch per step, and only kept epochs are counted.
    assert len(reg.loss_curve_) == reg.n_iter_ == reg.trajectory_.n_steps


def test_huge_targets_fail_at_the_first_step(toy):
    X, y = toy
    with pytest.raises(ValueError, match="not finite at the initial parameters"):
        PathKernelRegressor().fit(X, y * 1e30)


@pytest.mark.parametrize("Est", [PathKernelRegressor, PathKernelClassifier])
def test_every_parameter_is_documented(Est):
    doc = Est.__doc__
    assert "\n    Parameters\n    ----------\n    hidden_layer_sizes :" in doc
    for name in Est().get_params():
        assert f"\n    {name} : " in doc, name
    assert "{" + "parameters}" not in doc and "arXiv:2012.00152" in doc


@pytest.mark.parametrize("Est", [PathKernelRegressor, PathKernelClassifier])
def test_training_warnings_point_at_the_callers_line(Est, toy):
    X, y = toy
    y = y if Est is PathKernelRegressor else (y > 0).astype(int)
    with pytest.warns(ConvergenceWarning) as record:
        Est((4,), max_iter=2, tol=0, random_state=0).fit(X, y)
    assert record[0].filename == __file__


def test_partial_fit_warnings_point_at_the_callers_line(toy):
    X, y = toy  # partial_fit is one call deeper than fit, and says so
    net = PathKernelRegressor(
        (16,), activation="relu", learning_rate_init=1e3, batch_size=2, random_state=0
    )
    with pytest.warns(DivergenceWarning) as record:
        net.partial_fit(X, 100 * y)
    assert record[0].filename == __file__


def test_a_loss_that_grows_but_stays_finite_is_divergence(toy):
    X, y = toy
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        reg = PathKernelRegressor(
            (16,), learning_rate_init=0.9, max_iter=8, tol=0, random_state=0
        ).fit(X, 3 * y)
    assert [type(w.message) for w in record] == [DivergenceWarning]  # no "improving"
    assert re.match(
        r"PathKernelRegressor: the training loss grew from 5\.77\d* to .*Use a "
        r"smaller learning_rate_init \(now 0\.9\)",
        str(record[0].message),
    )
    assert np.isfinite(reg.loss_curve_).all() and reg.n_iter_ == 8


# -- solvers under scikit-learn MLP's names ---------------------------------

MLP_PARAMETER_DICTS = {
    "sgd": dict(
        solver="sgd",
        learning_rate_init=0.05,
        learning_rate="invscaling",
        power_t=0.25,
        momentum=0.9,
        nesterovs_momentum=True,
        batch_size=32,
        shuffle=True,
        alpha=1e-4,
        tol=1e-4,
        n_iter_no_change=5,
        early_stopping=True,
        validation_fraction=0.2,
    ),
    "adam": dict(
        solver="adam",
        learning_rate_init=0.01,
        beta_1=0.8,
        beta_2=0.99,
        epsilon=1e-7,
        batch_size="auto",
        alpha=1e-3,
        early_stopping=False,
        n_iter_no_change=3,
    ),
}


@pytest.mark.parametrize("solver", list(MLP_PARAMETER_DICTS))
def test_mlp_parameter_dicts_carry_over(solver, cancer):
    from sklearn.neural_network import MLPClassifier

    X, _, y, _ = cancer
    params = dict(
        MLP_PARAMETER_DICTS[solver],
        hidden_layer_sizes=(8,),
        activation="tanh",
        max_iter=6,
        random_state=0,
    )
    mlp = quiet_fit(MLPClassifier(**params), X, y)
    ours = quiet_fit(PathKernelClassifier(**params), X, y)
    assert ours.get_params()["solver"] == mlp.get_params()["solver"] == solver
    assert ours.score(X, y) > 0.8
    assert (mlp.best_validation_score_ is None) == (ours.best_validation_score_ is None)


def test_lbfgs_is_refused_with_the_reason(toy):
    X, y = toy
    with pytest.raises(ValueError, match=r"solver='lbfgs'.*line search"):
        PathKernelRegressor(solver="lbfgs").fit(X, y)


@pytest.mark.parametrize(
    "params",
    [
        dict(solver="sgd", momentum=0.9),
        dict(solver="sgd", momentum=0.9, nesterovs_momentum=False),
        dict(solver="adam", learning_rate_init=0.01),
        dict(solver="adamw", learning_rate_init=0.01, alpha=0.1),
    ],
    ids=["momentum", "heavy-ball", "adam", "adamw"],
)
def test_every_solver_learns_and_gives_a_psd_kernel(toy, params):
    X, y = toy
    est = quiet_fit(
        PathKernelRegressor((8,), max_iter=40, random_state=0, **params), X, y
    )
    assert est.loss_curve_[-1] < 0.5 * est.loss_curve_[0]
    K = est.kernel(X[:20])
    np.testing.assert_array_equal(K, K.T)
    assert np.linalg.eigvalsh(K).min() > -1e-8 * np.abs(K).max()


def test_adamw_alpha_is_the_decoupled_decay(toy):
    X, y = toy
    est = quiet_fit(
        PathKernelRegressor((4,), solver="adamw", alpha=0.3, max_iter=3), X, y
    )
    solver = est.trajectory_.solver
    assert (solver.alpha, solver.weight_decay) == (0.0, 0.3)


def test_momentum_without_nesterov_when_momentum_is_zero(toy):
    X, y = toy
    est = quiet_fit(PathKernelRegressor((4,), momentum=0.0, max_iter=2), X, y)
    assert est.trajectory_.solver.nesterov is False


def test_early_stopping_ends_the_path_at_the_best_epoch(cancer):
    X, _, y, _ = cancer
    est = quiet_fit(
        PathKernelClassifier(
            (16,),
            solver="adam",
            learning_rate_init=0.05,
            batch_size=64,
            early_stopping=True,
            validation_fraction=0.25,
            n_iter_no_change=3,
            max_iter=60,
            random_state=0,
        ),
        X,
        y,
    )
    scores = est.validation_scores_
    best = int(np.argmax(scores))  # the first best epoch, as MLP keeps it
    assert est.best_validation_score_ == scores[best]
    assert est.best_loss_ is None
    assert est.n_iter_ == len(scores) == len(est.loss_curve_)
    steps_per_epoch = -(-est._fit_X.shape[0] // 64)
    assert est.trajectory_.n_steps == (best + 1) * steps_per_epoch
    # The held-out quarter is never a training row of the kernel machine.
    assert est._fit_X.shape[0] == X.shape[0] - int(np.ceil(0.25 * X.shape[0]))
    # The network is the path's end.
    final = est.trajectory_.final_parameters()
    for name, p in est.module_.named_parameters():
        torch.testing.assert_close(p.detach().cpu(), final[name])


def test_early_stopping_needs_a_validation_set(toy):
    X, y = toy
    with pytest.raises(ValueError, match="The validation set is too small"):
        PathKernelRegressor(early_stopping=True, validation_fraction=0.01).fit(
            X[:10], y[:10]
        )


def test_adaptive_schedule_divides_the_step_by_five(toy):
    X, y = toy
    est = quiet_fit(
        PathKernelRegressor(
            (4,),
            learning_rate="adaptive",
            learning_rate_init=0.1,
            # No improvement after the first epoch: it fires every 3 epochs
            # (more than n_iter_no_change without gain, as MLP).
            tol=10.0,
            n_iter_no_change=2,
            max_iter=7,
        ),
        X,
        y,
    )
    np.testing.assert_allclose(
        est.trajectory_.step_sizes, [0.1, 0.1, 0.1, 0.1, 0.02, 0.02, 0.02]
    )


def test_invscaling_schedule_follows_rows_seen(toy):
    X, y = toy
    est = quiet_fit(
        PathKernelRegressor(
            (4,), learning_rate="invscaling", power_t=0.5, batch_size=25, max_iter=3
        ),
        X,
        y,
    )
    n = X.shape[0]
    per_epoch = -(-n // 25)
    expected = np.repeat(
        [0.1, 0.1 / (n + 1) ** 0.5, 0.1 / (2 * n + 1) ** 0.5], per_epoch
    )
    np.testing.assert_allclose(est.trajectory_.step_sizes, expected)


def test_schedules_are_for_sgd_only_as_in_mlp(toy):
    X, y = toy
    est = quiet_fit(
        PathKernelRegressor(
            (4,), solver="adam", learning_rate="invscaling", max_iter=3
        ),
        X,
        y,
    )
    np.testing.assert_array_equal(est.trajectory_.step_sizes, 0.1)


# -- MLP's parameters and fitted attributes ---------------------------------------
def _mlp_pair(kind, n_classes, hidden):
    """Small data, and our estimator and MLP's with the same settings, fitted."""
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 4))
    if kind == "regressor":
        y = X[:, 0] - X[:, 1] ** 2 if n_classes == 1 else X[:, :2]
        ours, mlp = PathKernelRegressor, MLPRegressor
    else:
        y = np.arange(30) % n_classes
        ours, mlp = PathKernelClassifier, MLPClassifier
    # tol=0: both run all their epochs, so that t_ counts the same rows.
    params = dict(hidden_layer_sizes=hidden, max_iter=4, tol=0.0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = ours(**params, dtype="float64", batch_size=7).fit(X, y)
        reference = mlp(**params, activation="tanh", batch_size=7).fit(X, y)
    return X, est, reference


@pytest.mark.parametrize(
    "kind, n_classes, hidden",
    [
        ("regressor", 1, (5, 3)),
        ("regressor", 2, ()),
        ("classifier", 2, (5,)),
        ("classifier", 3, (5, 3)),
    ],
)
def test_mlp_attributes_have_mlps_names_shapes_and_values(kind, n_classes, hidden):
    X, est, mlp = _mlp_pair(kind, n_classes, hidden)
    assert [c.shape for c in est.coefs_] == [c.shape for c in mlp.coefs_]
    assert [b.shape for b in est.intercepts_] == [b.shape for b in mlp.intercepts_]
    assert (est.n_layers_, est.out_activation_) == (mlp.n_layers_, mlp.out_activation_)
    assert est.n_layers_ == len(hidden) + 2
    assert (est.t_, est.n_iter_) == (mlp.t_, mlp.n_iter_) == (4 * 30, 4)
    assert est.loss_ == est.loss_curve_[-1] and isinstance(est.loss_, float)
    linears = [m for m in est.module_ if isinstance(m, torch.nn.Linear)]
    np.testing.assert_array_equal(est.coefs_[0], linears[0].weight.detach().numpy().T)
    assert est.coefs_[0].dtype == np.float64 and est.coefs_[0].flags.c_contiguous
    # MLP's forward pass, in numpy, from the attributes alone.
    out = X
    for i, (W, b) in enumerate(zip(est.coefs_, est.intercepts_)):
        out = out @ W + b
        out = np.tanh(out) if i < len(est.coefs_) - 1 else out
    if kind == "regressor":
        np.testing.assert_allclose(est.predict(X), out.reshape(est.predict(X).shape))
    else:
        scores = est.decision_function(X)
        np.testing.assert_allclose(scores, out.reshape(scores.shape))


def test_mlp_attributes_are_copies_read_from_the_network():
    X, est, _ = _mlp_pair("classifier", 2, (5,))
    before = est.decision_function(X)
    est.coefs_[0][:] = 0.0
    est.intercepts_[0][:] = 0.0
    np.testing.assert_array_equal(est.decision_function(X), before)
    with torch.no_grad():
        est.module_[0].weight.mul_(2.0)  # the attributes follow the network
    np.testing.assert_array_equal(
        est.coefs_[0], est.module_[0].weight.detach().numpy().T
    )
    with pytest.raises(AttributeError):
        est.coefs_ = []


def test_mlp_attributes_before_fit_and_for_other_networks():
    names = ["coefs_", "intercepts_", "n_layers_", "out_activation_", "loss_", "t_"]
    for cls in ESTIMATORS:
        assert not any(hasattr(cls(), name) for name in names)
    X, y = np.random.default_rng(0).standard_normal((20, 3)), np.arange(20) % 2
    conv = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    conv.append(torch.nn.Linear(4, 1))
    est = quiet_fit(PathKernelClassifier(module=conv, max_iter=2), X, y)
    for name in ["coefs_", "intercepts_", "n_layers_"]:
        with pytest.raises(AttributeError, match=rf"{name} describes the default MLP"):
            getattr(est, name)
    assert (est.out_activation_, est.t_) == ("logistic", 2 * 20)
    # A user nn.Sequential of the default MLP's form has them.
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    mlp.append(torch.nn.Linear(4, 1))
    est = quiet_fit(PathKernelClassifier(module=mlp, max_iter=2), X, y)
    assert [c.shape for c in est.coefs_] == [(3, 4), (4, 1)]


def test_mlps_parameter_dicts_construct_and_fit():
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    X, y = np.random.default_rng(0).standard_normal((40, 3)), np.arange(40) % 3
    for ours, mlp, target in [
        (PathKernelClassifier, MLPClassifier, y),
        (PathKernelRegressor, MLPRegressor, X[:, 0]),
    ]:
        params = mlp().get_params()
        est = ours(**params)
        assert {k: v for k, v in est.get_params().items() if k in params} == params
        est.set_params(max_iter=3, hidden_layer_sizes=(8,))
        quiet_fit(est, X, target)
        assert est.n_iter_ == 3 and clone(est).get_params() == est.get_params()


def test_the_regressor_takes_the_base_parameters_and_mlps_loss():
    import inspect

    base = inspect.signature(PathKernelClassifier).parameters
    ours = dict(inspect.signature(PathKernelRegressor).parameters)
    assert ours.pop("loss").default == "squared_error"
    assert list(ours.values()) == list(base.values())
    est = PathKernelRegressor((3,), alpha=0.5, max_fun=7, loss="poisson")
    assert (est.hidden_layer_sizes, est.alpha, est.max_fun) == ((3,), 0.5, 7)
    assert est.loss == "poisson"


# -- Poisson regression (log link) and multilabel classification ------------
def _counts(n=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    return X, rng.poisson(np.exp(0.7 * X[:, 0] - 0.3 * X[:, 1]))


def test_poisson_learns_the_log_mean_and_decomposes_it():
    X, y = _counts()
    est = quiet_fit(
        PathKernelRegressor(
            (6,), loss="poisson", max_iter=15, dtype="float64", random_state=0
        ),
        X,
        y,
    )
    f = est._network_output(X[:4])
    assert est.out_activation_ == "exp"
    np.testing.assert_array_equal(est.predict(X[:4]), np.exp(f).ravel())
    assert est.loss_curve_[-1] < est.loss_curve_[0]
    # The kernel machine decomposes the network's output f = log(mu).
    machine = est.decompose(X[:4], exact=True)
    np.testing.assert_allclose(machine.prediction(), f, rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        np.exp(machine.prediction()).ravel(), est.predict(X[:4]), rtol=1e-9
    )
    np.testing.assert_allclose(
        est.kernel(X[:4], X[4:7]),
        path_kernel_reference(est.module_, est.trajectory_, X[:4], X[4:7]),
        rtol=1e-10,
    )
    # The loss trained with stays: set_params changes neither link nor loss.
    est.set_params(loss="squared_error")
    assert est.out_activation_ == "exp" and est._influence_loss == "poisson"


def test_poisson_trains_as_mlp_and_scores_its_predictions():
    from sklearn.neural_network import MLPRegressor

    X, y = _counts(60)
    params = {"hidden_layer_sizes": (8,), "loss": "poisson", "max_iter": 150}
    params.update(solver="sgd", momentum=0.0, batch_size=60, activation="tanh")
    params.update(learning_rate_init=0.1, alpha=0.0)
    ours = quiet_fit(PathKernelRegressor(**params, random_state=0), X, y)
    mlp = quiet_fit(MLPRegressor(**params, random_state=0), X, y)
    # The same loss scale: MLP's half deviance, from its own start.
    assert abs(ours.loss_curve_[-1] - mlp.loss_curve_[-1]) < 0.05
    assert ours.score(X, y) == pytest.approx(r2_score(y, ours.predict(X)))
    early = quiet_fit(
        PathKernelRegressor(**params, early_stopping=True, random_state=0), X, y
    )
    assert len(early.validation_scores_) == early.n_iter_
    assert np.isfinite(early.validation_scores_).all()


def test_poisson_needs_non_negative_targets():
    X, y = _counts()
    est = PathKernelRegressor((4,), loss="poisson", max_iter=2)
    with pytest.raises(ValueError, match=r"y must be non-negative for loss='poisson'"):
        est.fit(X, y - 1.0)
    assert not hasattr(est, "module_")
    quiet_fit(est, X, y)
    with pytest.raises(ValueError, match=r"y must be non-negative for loss='poisson'"):
        est.influence(X[:2], [1.0, -2.0])


def _multilabel(n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    Y = np.column_stack([X[:, 0] > 0, X[:, 1] > 0.5, X[:, 0] + X[:, 2] > 0])
    return X, Y.astype(int)


def test_multilabel_as_mlp_with_one_logit_per_label():
    from sklearn.neural_network import MLPClassifier

    X, Y = _multilabel()
    clf = quiet_fit(
        PathKernelClassifier((8,), max_iter=40, dtype="float64", random_state=0),
        X,
        Y,
    )
    mlp = quiet_fit(MLPClassifier((8,), max_iter=5, random_state=0), X, Y)
    np.testing.assert_array_equal(clf.classes_, mlp.classes_)
    assert clf.out_activation_ == mlp.out_activation_ == "logistic"
    assert clf.n_outputs_ == 3 and clf.__sklearn_tags__().classifier_tags.multi_label
    scores = clf.decision_function(X)
    assert scores.shape == Y.shape
    np.testing.assert_array_equal(clf.predict(X), (scores > 0).astype(int))
    assert clf.predict(X).dtype == mlp.predict(X).dtype
    np.testing.assert_allclose(clf.predict_proba(X), expit(scores))
    np.testing.assert_allclose(clf.predict_log_proba(X), log_expit(scores))
    subset = (clf.predict(X) == Y).all(axis=1).mean()
    assert clf.score(X, Y) == subset > 0.7
    # The kernel machine decomposes each label's logit.
    machine = clf.decompose(X[:4], exact=True)
    np.testing.assert_allclose(machine.prediction(), scores[:4], rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        clf.kernel(X[:4]),
        path_kernel_reference(clf.module_, clf.trajectory_, X[:4]),
        rtol=1e-10,
    )


def test_multilabel_early_stopping_scores_subset_accuracy():
    X, Y = _multilabel(60)
    params = {"max_iter": 20, "dtype": "float64", "random_state": 0}
    clf = PathKernelClassifier((8,), early_stopping=True, n_iter_no_change=50, **params)
    clf = quiet_fit(clf, X, Y)
    # The last epoch's score is the final network's on the held-out rows:
    # they are the rows early stopping did not train on.
    held = ~(X[:, None, :] == clf._fit_X[None]).all(axis=2).any(axis=1)
    assert held.sum() == 6
    assert clf.validation_scores_[-1] == clf.score(X[held], Y[held])


@pytest.mark.parametrize(
    "y, match",
    [
        (np.column_stack([np.arange(12) % 2, np.arange(12) % 3]), "multiclass-multi"),
        (np.column_stack([np.arange(12) % 2, 2 * (np.arange(12) % 2)]), "0/1 per"),
        (np.column_stack([np.arange(12) % 2, np.arange(12) * 0.5]), "continuous"),
    ],
)
def test_2d_y_must_be_a_multilabel_indicator(y, match):
    X = np.random.default_rng(0).standard_normal((12, 2))
    with pytest.raises(ValueError, match=match):
        PathKernelClassifier((3,), max_iter=1).fit(X, y)


def test_a_column_of_labels_is_one_label_per_row():
    X, Y = _multilabel()
    params = {"max_iter": 3, "random_state": 0}
    with pytest.warns(DataConversionWarning, match="column-vector y"):
        column = quiet_fit(PathKernelClassifier((4,), **params), X, Y[:, :1])
    flat = quiet_fit(PathKernelClassifier((4,), **params), X, Y[:, 0])
    np.testing.assert_array_equal(
        column.decision_function(X), flat.decision_function(X)
    )
    assert column.predict(X).shape == (40,)


def test_saved_files_keep_the_loss_and_the_multilabel_fit(tmp_path):
    from sklearn_pathkernel import load, save

    X, y = _counts()
    reg = quiet_fit(PathKernelRegressor((4,), loss="poisson", max_iter=3), X, y)
    X, Y = _multilabel()
    clf = quiet_fit(PathKernelClassifier((4,), max_iter=3), X, Y[:, :2])
    for est in (reg, clf):
        save(est, tmp_path / "est.skpk")
        loaded = load(tmp_path / "est.skpk")
        np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
        assert loaded.out_activation_ == est.out_activation_
    assert loaded.predict_proba(X).shape == (40, 2)  # 2 labels: 2 logits
