"""The estimators' parameters, in scikit-learn MLP's names, as training settings.

``PathKernelRegressor`` and ``PathKernelClassifier`` take MLP's parameters;
the training loop takes a :class:`Solver` and :class:`TrainingOptions`. This
module translates: the update rule (and "lbfgs" refused with the reason),
the loop's options, the rows per step, and early stopping's split of
held-out rows (stratified, as MLP's). It reads only an estimator's public
parameters, after ``_parameter_constraints`` checked them.
"""

import numpy as np
from sklearn.model_selection import train_test_split

from ._loop import TrainingOptions
from ._solvers import Solver


def update_rule(estimator):
    """The update rule ``estimator``'s parameters describe, as a ``Solver``.

    MLP's names: ``momentum`` and ``nesterovs_momentum`` are sgd's (Nesterov
    only with momentum), ``alpha`` is L2 in the objective, or the decoupled
    weight decay of "adamw". sgd keeps MLP's velocity form (the step size
    inside the sum). "lbfgs" is refused, with the reason.

    Examples
    --------
    >>> from sklearn_pathkernel import PathKernelRegressor
    >>> rule = update_rule(PathKernelRegressor(solver="adamw", alpha=0.01))
    >>> rule.name, rule.alpha, rule.weight_decay
    ('adamw', 0.0, 0.01)
    """
    name = estimator.solver
    if name == "lbfgs":
        raise ValueError(
            f"{type(estimator).__name__} does not support solver='lbfgs': L-BFGS "
            "moves along directions built from many past gradients and chosen "
            "by a line search, so a step is not a fixed linear map of the "
            "training rows' gradients and has no step-wise path kernel or "
            "exact decomposition. Use solver='sgd' (with momentum) or 'adam'."
        )
    sgd, decoupled = name == "sgd", name == "adamw"
    return Solver(
        name,
        momentum=estimator.momentum if sgd else 0.0,
        nesterov=sgd and bool(estimator.nesterovs_momentum) and estimator.momentum > 0,
        beta_1=estimator.beta_1,
        beta_2=estimator.beta_2,
        epsilon=estimator.epsilon,
        alpha=0.0 if decoupled else estimator.alpha,
        weight_decay=estimator.alpha if decoupled else 0.0,
        # MLP's SGDOptimizer: the velocity keeps eps_s inside the sum.
        momentum_form="velocity" if sgd else "buffer",
    )


def rows_per_step(batch_size, n_samples):
    """Rows per step: ``"auto"`` is ``min(200, n_samples)``, as for MLP.

    None (full batch) and an int are kept as they are.

    Examples
    --------
    >>> rows_per_step("auto", 50), rows_per_step("auto", 500), rows_per_step(None, 50)
    (50, 200, None)
    """
    if isinstance(batch_size, str):
        return min(200, n_samples)
    return batch_size


def loop_options(estimator, solver, n_samples, validation):
    """The training loop's options, from ``estimator``'s parameters.

    ``solver`` is :func:`update_rule`'s, ``n_samples`` the training rows (for
    ``batch_size="auto"``), ``validation`` early stopping's scorer or None.
    """
    return TrainingOptions(
        learning_rate_init=estimator.learning_rate_init,
        max_iter=estimator.max_iter,
        solver=solver,
        learning_rate=estimator.learning_rate,
        power_t=estimator.power_t,
        batch_size=rows_per_step(estimator.batch_size, n_samples),
        shuffle=estimator.shuffle,
        tol=estimator.tol,
        n_iter_no_change=estimator.n_iter_no_change,
        validation=validation,
        record_every=estimator.record_every,
        quadrature=estimator.quadrature,
        kernel_nodes=estimator.kernel_nodes,
        adaptive_tol=estimator.adaptive_tol,
        trajectory_dir=estimator.trajectory_dir,
        verbose=estimator.verbose,
    )


def held_out_rows(n_rows, fraction, random_state, stratify=None):
    """Early stopping's split: ``(train, held)`` row indices, in the split's order.

    ``fraction`` of the rows held out for validation, as ``train_test_split``
    draws them from ``random_state`` (MLP's draw), stratified by ``stratify``
    when given. A split that cannot be made, or leaves fewer than 2 rows on
    either side, is a ValueError naming ``validation_fraction``.

    Examples
    --------
    >>> train, held = held_out_rows(10, 0.2, 0)
    >>> sorted(train.tolist() + held.tolist()) == list(range(10)), len(held)
    (True, 2)
    """
    try:
        train, held = train_test_split(
            np.arange(n_rows),
            test_size=fraction,
            random_state=random_state,
            stratify=stratify,
        )
    except ValueError as error:  # e.g. fewer rows of a class than classes
        raise ValueError(
            f"early_stopping cannot hold out validation_fraction="
            f"{fraction} of {n_rows} rows: {error}"
        ) from error
    if len(held) < 2 or len(train) < 2:
        raise ValueError(
            f"The validation set is too small: validation_fraction="
            f"{fraction} of {n_rows} rows leaves "
            f"{len(held)} for validation and {len(train)} for training. "
            "Increase validation_fraction or the size of the dataset."
        )
    return train, held
