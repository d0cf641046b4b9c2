"""scikit-learn's estimator checks on every estimator of the package."""

import functools

import pytest
from sklearn.utils.estimator_checks import (
    _get_check_estimator_ids,
    estimator_checks_generator,
)

from sklearn_pathkernel import (
    PathKernelClassifier,
    PathKernelFeatures,
    PathKernelRegressor,
    PathKernelTransformer,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning"  # short training, on purpose
)

# Small networks and short training keep the ~60 checks per estimator fast;
# the defaults of the optimiser are left as users get them.
# The default dtype (float32) runs every check. float64 must pass every check
# too, but most checks test the API, which does not depend on the dtype: the
# float64 twins run the checks whose outcome depends on numbers or dtypes
# (FLOAT64_CHECKS), including every check float32 fails on rounding alone.
# The kernel transformer with its default estimator (a 100-unit network that
# follows the checks' targets: a classifier for labels, a regressor for
# values) runs the checks that see what that estimator does
# (DEFAULT_ESTIMATOR_CHECKS); the whole battery runs on a small network.
# Twenty epochs, not the default 200: a check calls the same code whatever
# the number of epochs, and fits tens of times, each for every epoch (then
# works on every recorded step). The checks that ask for a trained model
# still pass with room to spare: 0.90 accuracy on sklearn's blobs (it asks
# for 0.83; 0.93 after 200 epochs), R^2 0.75 on its regression data (it asks
# for 0.5; 0.83). The default estimator keeps the default.
MAX_ITER = 20
DEFAULT_DTYPE = [
    cls(hidden_layer_sizes=(16,), max_iter=MAX_ITER, random_state=0)
    for cls in (PathKernelRegressor, PathKernelClassifier)
]
FLOAT64_TWINS = [
    cls(hidden_layer_sizes=(16,), dtype="float64", max_iter=MAX_ITER, random_state=0)
    for cls in (PathKernelRegressor, PathKernelClassifier)
]
DEFAULT_ESTIMATOR = PathKernelTransformer(random_state=0)
FULL_BATTERY = DEFAULT_DTYPE + [
    # Around a small float64 network, with a normalisation.
    PathKernelTransformer(
        PathKernelRegressor((16,), dtype="float64", max_iter=MAX_ITER, random_state=0),
        normalize="cosine",
    ),
    PathKernelFeatures(
        # Every tenth step: the features' per-row Jacobians cost per checkpoint.
        PathKernelRegressor(
            (16,), dtype="float64", max_iter=MAX_ITER, record_every=10, random_state=0
        ),
        n_components=20,
        normalize="mean_diagonal",
        random_state=0,
    ),
]

FLOAT64_CHECKS = {
    "check_sample_weight_equivalence_on_dense_data",
    "check_methods_subset_invariance",
    "check_methods_sample_order_invariance",
    "check_fit_idempotent",
    "check_estimators_dtypes",
    "check_dtype_object",
    "check_regressors_int",
    "check_regressors_train",
    "check_classifiers_train",
    "check_estimators_pickle",
    "check_readonly_memmap_input",
    "check_estimators_nan_inf",
}
DEFAULT_ESTIMATOR_CHECKS = {
    # What the default estimator does with labels and with values.
    "check_transformer_general",
    "check_transformer_data_not_an_array",
    "check_fit_score_takes_y",
    "check_estimators_pickle",
    # Construction, parameters and tags: no fitting, no cost.
    "check_no_attributes_set_in_init",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_estimator_cloneable",
    "check_estimator_repr",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_estimators_unfitted",
    "check_mixin_order",
    "check_valid_tag_types",
    "check_estimator_tags_renamed",
}


_FLOAT32_ROUNDING = {
    "check_sample_weight_equivalence_on_dense_data": (
        "weights and repeated rows sum in a different order; float32 results "
        "agree to about 5e-7 relative, the check asks for 1e-7 (float64 passes)"
    ),
    "check_methods_subset_invariance": (
        "float32 matrix products round differently for different batch sizes; "
        "results agree to about 3e-7 relative (float64 passes)"
    ),
}  # Rounding, so luck: after 20 epochs the float32 regressor passes (XPASS).


def _dtype(estimator):
    """The network's dtype: the estimator's own, or its wrapped estimator's."""
    network = getattr(estimator, "estimator", None) or estimator
    return getattr(network, "dtype", "float32")  # None wraps a float32 default


_ONE_COLUMN_PER_TRAINING_ROW = {
    "check_sample_weight_equivalence_on_dense_data": (
        "the output has one column per training row, so repeating rows instead "
        "of weighting them changes its width (as for KNeighborsTransformer)"
    ),
}


def _expected_failed_checks(estimator):
    float32 = _FLOAT32_ROUNDING if _dtype(estimator) == "float32" else {}
    if isinstance(estimator, PathKernelTransformer):
        # Its float32 kernel rounds like the estimators' (1.2e-7 relative
        # with the default 20 Simpson nodes; it passed by luck with 200).
        return {**float32, **_ONE_COLUMN_PER_TRAINING_ROW}
    return float32


def _check_name(check):
    while isinstance(check, functools.partial):
        check = check.func
    return check.__name__


def _cases():
    """``(estimator, check)`` pairs: each estimator with the checks it runs."""
    runs = [(e, None) for e in FULL_BATTERY]
    runs += [(e, FLOAT64_CHECKS) for e in FLOAT64_TWINS]
    runs += [(DEFAULT_ESTIMATOR, DEFAULT_ESTIMATOR_CHECKS)]
    cases = []
    for estimator, selected in runs:
        for case in estimator_checks_generator(
            estimator,
            expected_failed_checks=_expected_failed_checks(estimator),
            mark="xfail",
        ):
            check = case.values[1] if hasattr(case, "values") else case[1]
            if selected is None or _check_name(check) in selected:
                cases.append(case)
    return cases


def test_the_selections_name_real_checks():
    """A renamed check must not silently drop out of a selection."""
    names = {
        _check_name(check)
        for estimator in FULL_BATTERY + [DEFAULT_ESTIMATOR]
        for _, check in estimator_checks_generator(estimator)
    }
    assert FLOAT64_CHECKS <= names
    assert DEFAULT_ESTIMATOR_CHECKS <= names


@pytest.mark.parametrize("estimator, check", _cases(), ids=_get_check_estimator_ids)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
