"""The estimators' parameters as training settings (``_training/_settings.py``)."""

import dataclasses

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from sklearn_pathkernel import PathKernelClassifier, PathKernelRegressor
from sklearn_pathkernel._training._settings import (
    held_out_rows,
    loop_options,
    rows_per_step,
    update_rule,
)
from sklearn_pathkernel._training._solvers import Solver


@pytest.mark.parametrize(
    "params, want",
    [
        ({}, Solver("sgd", momentum_form="velocity")),
        (
            {"momentum": 0.9, "alpha": 0.1},
            Solver(
                "sgd", momentum=0.9, nesterov=True, alpha=0.1, momentum_form="velocity"
            ),
        ),
        (
            {"momentum": 0.9, "nesterovs_momentum": False},
            Solver("sgd", momentum=0.9, momentum_form="velocity"),
        ),
        # Nesterov needs momentum; adam ignores sgd's momentum.
        ({"momentum": 0.0}, Solver("sgd", momentum_form="velocity")),
        (
            {"solver": "adam", "momentum": 0.9, "alpha": 0.1, "beta_1": 0.8},
            Solver("adam", beta_1=0.8, alpha=0.1),
        ),
        ({"solver": "adamw", "alpha": 0.1}, Solver("adamw", weight_decay=0.1)),
    ],
    ids=["sgd", "nesterov", "heavy-ball", "no-momentum", "adam", "adamw"],
)
def test_the_update_rule_reads_mlps_names(params, want):
    assert update_rule(PathKernelRegressor(**params)) == want


def test_lbfgs_is_refused_naming_the_estimator():
    with pytest.raises(
        ValueError, match=r"^PathKernelClassifier does not support solver='lbfgs'"
    ):
        update_rule(PathKernelClassifier(solver="lbfgs"))


def test_the_loop_options_are_the_parameters():
    est = PathKernelRegressor(
        learning_rate_init=0.05,
        max_iter=7,
        learning_rate="invscaling",
        power_t=0.25,
        batch_size="auto",
        shuffle=False,
        tol=1e-3,
        n_iter_no_change=4,
        record_every=2,
        quadrature="trapezoid",
        kernel_nodes=5,
        adaptive_tol=0.1,
        trajectory_dir="somewhere",
        verbose=1,
    )
    solver, validation = update_rule(est), object()
    options = dataclasses.asdict(loop_options(est, solver, 300, validation))
    params = est.get_params()
    for name, value in options.items():
        if name not in ("solver", "validation", "batch_size"):
            assert value == params[name], name
    assert options["batch_size"] == 200
    assert loop_options(est, solver, 300, validation).validation is validation


def test_rows_per_step_is_mlps():
    assert rows_per_step("auto", 150) == 150
    assert rows_per_step("auto", 1000) == 200
    assert rows_per_step(32, 10) == 32 and rows_per_step(None, 10) is None


def test_the_held_out_split_is_train_test_splits():
    """Reference: ``train_test_split`` itself, with the same draw."""
    labels = np.repeat([0, 1], 10)
    for stratify in (None, labels):
        train, held = held_out_rows(20, 0.2, np.random.RandomState(3), stratify)
        want = train_test_split(
            np.arange(20),
            test_size=0.2,
            random_state=np.random.RandomState(3),
            stratify=stratify,
        )
        assert train.tolist() == want[0].tolist() and held.tolist() == want[1].tolist()
    assert np.bincount(labels[held]).tolist() == [2, 2]  # stratified


def test_a_split_that_cannot_be_made_names_validation_fraction():
    with pytest.raises(
        ValueError, match=r"^early_stopping cannot hold out validation_fraction=0.1"
    ):
        held_out_rows(10, 0.1, 0, stratify=np.arange(10) % 3)
    with pytest.raises(
        ValueError,
        match=r"^The validation set is too small: validation_fraction=0.1 of 10 rows "
        "leaves 1 for validation and 9 for training",
    ):
        held_out_rows(10, 0.1, 0)
