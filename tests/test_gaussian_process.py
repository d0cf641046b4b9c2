"""PathKernel: the path kernel inside scikit-learn's Gaussian processes."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

from sklearn_pathkernel import PathKernel, PathKernelRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def sine():
    rng = np.random.RandomState(0)
    X = rng.uniform(-2, 2, (60, 1))
    y = np.sin(2 * X[:, 0]) + 0.1 * rng.randn(60)
    return X[:40], X[40:], y[:40], y[40:]


@pytest.fixture(scope="module")
def net(sine):
    X_train, _, y_train, _ = sine
    return PathKernelRegressor(
        (32,), max_iter=200, learning_rate_init=0.2, dtype="float64", random_state=0
    ).fit(X_train, y_train)


def test_kernel_is_the_estimators_path_kernel(net, sine):
    X, X_new, _, _ = sine
    kernel = PathKernel(net)
    np.testing.assert_array_equal(kernel(X), net.kernel(X))
    np.testing.assert_array_equal(kernel(X_new, X), net.kernel(X_new, X))
    diagonal = np.diag(net.kernel(X_new))
    np.testing.assert_allclose(kernel.diag(X_new), diagonal, rtol=1e-12)
    K, gradient = kernel(X, eval_gradient=True)
    np.testing.assert_array_equal(K, net.kernel(X))
    assert gradient.shape == (len(X), len(X), 0)
    with pytest.raises(ValueError, match="only be evaluated when Y is None"):
        kernel(X, X_new, eval_gradient=True)


def test_kernel_has_no_hyperparameters(net):
    kernel = PathKernel(net)
    assert kernel.hyperparameters == []
    assert kernel.theta.shape == (0,) and kernel.bounds.shape == (0,)
    assert kernel.n_dims == 0
    assert kernel.get_params() == {"estimator": net}
    assert not kernel.is_stationary()
    assert kernel.requires_vector_input
    assert "PathKernel" in repr(kernel)


def test_clone_keeps_the_fitted_network(net, sine):
    X = sine[0]
    kernel = PathKernel(net)
    for copy in (clone(kernel), kernel.clone_with_theta(kernel.theta)):
        assert copy.estimator is net
        np.testing.assert_array_equal(copy(X), kernel(X))
    composite = clone(ConstantKernel() * PathKernel(net) + WhiteKernel())
    assert composite.k1.k2.estimator is net


def test_gaussian_process_fits_and_predicts_with_uncertainty(net, sine):
    X_train, X_test, y_train, y_test = sine
    kernel = ConstantKernel() * PathKernel(net) + WhiteKernel()
    gp = GaussianProcessRegressor(kernel=kernel).fit(X_train, y_train)
    # The kernel the GP fitted is a clone that still holds the trained network.
    assert gp.kernel_.k1.k2.estimator is net
    mean, std = gp.predict(X_test, return_std=True)
    assert mean.shape == std.shape == (len(X_test),)
    assert (std > 0).all()
    assert gp.score(X_test, y_test) > 0.8
    # Far from the training rows the GP is less sure than among them.
    _, std_far = gp.predict(np.array([[6.0], [-6.0]]), return_std=True)
    assert std_far.min() > std.max()
    # The noise the GP learned is about the true 0.1 standard deviation.
    assert 0.03 < np.sqrt(gp.kernel_.k2.noise_level) < 0.3
    _, cov = gp.predict(X_test[:5], return_cov=True)
    # diag() (tiled) agrees with the full covariance.
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), std[:5], rtol=1e-8)


def test_gaussian_process_pickles_and_clones(net, sine):
    X_train, X_test, y_train, _ = sine
    kernel = ConstantKernel() * PathKernel(net) + WhiteKernel()
    gp = GaussianProcessRegressor(kernel=kernel).fit(X_train, y_train)
    loaded = pickle.loads(pickle.dumps(gp))
    np.testing.assert_allclose(loaded.predict(X_test), gp.predict(X_test))
    refit = clone(gp).fit(X_train, y_train)
    np.testing.assert_allclose(refit.predict(X_test), gp.predict(X_test))


def test_sum_with_a_stationary_kernel(net, sine):
    X_train, X_test, y_train, y_test = sine
    kernel = ConstantKernel() * PathKernel(net) + RBF() + WhiteKernel()
    gp = GaussianProcessRegressor(kernel=kernel).fit(X_train, y_train)
    assert not gp.kernel_.is_stationary()
    assert gp.score(X_test, y_test) > 0.8


def test_unfitted_estimator_raises(sine):
    with pytest.raises(NotFittedError):
        PathKernel(PathKernelRegressor())(sine[0])


def test_repeated_evaluations_reuse_the_matrix_safely(sine):
    X, X_new, y, _ = sine
    est = PathKernelRegressor((8,), max_iter=20, random_state=0).fit(X, y)
    kernel = PathKernel(est)
    first = kernel(X)
    first[0, 0] += 100.0  # callers may change the matrix they get in place
    np.testing.assert_array_equal(kernel(X), est.kernel(X))
    np.testing.assert_array_equal(kernel(X_new, X), est.kernel(X_new, X))
    np.testing.assert_array_equal(kernel(X), est.kernel(X))
    est.set_params(kernel_normalize="cosine")
    np.testing.assert_allclose(np.diag(kernel(X)), 1.0)
    est.set_params(kernel_normalize="none", max_iter=5).fit(X, y)  # a new path
    np.testing.assert_array_equal(kernel(X), est.kernel(X))
    changed = X.copy()
    changed[0] += 1.0
    np.testing.assert_array_equal(kernel(changed), est.kernel(changed))
