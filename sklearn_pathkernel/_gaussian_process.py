"""PathKernel: a fitted network's path kernel as a Gaussian-process kernel."""

import warnings
from contextlib import contextmanager

import numpy as np
from sklearn.gaussian_process.kernels import Kernel


class PathKernel(Kernel):
    """The path kernel of a fitted estimator, for ``GaussianProcessRegressor``.

    ``PathKernel(est)(X, Y)`` is ``est.kernel(X, Y)``: the network is fixed,
    so the kernel has no hyperparameters of its own. Combine it with
    scikit-learn's kernels for a scale and a noise level, e.g.
    ``ConstantKernel() * PathKernel(est) + WhiteKernel()``, whose
    hyperparameters the Gaussian process fits by maximising the marginal
    likelihood.

    Train the estimator with ``dtype="float64"``: a float32 path kernel is
    positive semi-definite only up to rounding (eigenvalues down to about
    ``-1e-7`` times the largest), which makes the GP's Cholesky
    factorisation fail once the fitted noise level gets that small.

    Cloning (which ``GaussianProcessRegressor.fit`` does to its kernel)
    keeps the same fitted estimator: the clone computes the same kernel and
    nothing is retrained. Train ``est`` on the GP's training rows only, or
    on rows held apart from any rows the GP is scored on.

    X and Y are checked by the estimator, as its ``kernel`` checks them.
    ``GaussianProcessRegressor`` passes plain arrays even when it was fitted
    on a DataFrame (it checks the feature names itself), so an estimator
    fitted with feature names takes arrays here without warning; a
    DataFrame whose names differ from the estimator's is still refused.

    Parameters
    ----------
    estimator : PathKernelRegressor or PathKernelClassifier
        A fitted estimator; anything with ``kernel(X, Y=None)`` works, and
        ``kernel_diagonal(X)`` makes :meth:`diag` cheap. Its
        ``kernel_normalize`` applies.

    See Also
    --------
    PathKernelTransformer : The same kernel as a Pipeline step.

    References
    ----------
    P. Domingos, "Every Model Learned by Gradient Descent Is Approximately a
    Kernel Machine", arXiv:2012.00152, 2020.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.gaussian_process import GaussianProcessRegressor
    >>> from sklearn.gaussian_process.kernels import ConstantKernel, WhiteKernel
    >>> from sklearn_pathkernel import PathKernel, PathKernelRegressor
    >>> rng = np.random.RandomState(0)
    >>> X = rng.uniform(-2, 2, (40, 1))
    >>> y = np.sin(2 * X[:, 0]) + 0.1 * rng.randn(40)
    >>> net = PathKernelRegressor((16,), max_iter=50, dtype="float64", random_state=0)
    >>> net = net.fit(X, y)
    >>> kernel = ConstantKernel() * PathKernel(net) + WhiteKernel()
    >>> gp = GaussianProcessRegressor(kernel=kernel).fit(X, y)
    >>> mean, std = gp.predict(X[:3], return_std=True)
    >>> mean.shape, std.shape
    ((3,), (3,))
    """

    def __init__(self, estimator):
        self.estimator = estimator

    def __call__(self, X, Y=None, eval_gradient=False):
        """The kernel ``k(X, Y)`` and, if asked, its (empty) gradient.

        Parameters
        ----------
        X : ndarray of shape (n_samples_X, n_features)
        Y : ndarray of shape (n_samples_Y, n_features), default=None
            None means ``Y = X``.
        eval_gradient : bool, default=False
            Also return the gradient with respect to the log of the
            hyperparameters: there are none, so it has shape
            ``(n_samples_X, n_samples_X, 0)``. Only valid when Y is None.

        Returns
        -------
        K : ndarray of shape (n_samples_X, n_samples_Y)
        K_gradient : ndarray of shape (n_samples_X, n_samples_X, 0)
            Only when ``eval_gradient`` is True.
        """
        if eval_gradient and Y is not None:
            raise ValueError("Gradient can only be evaluated when Y is None.")
        K = self._kernel(X, Y)
        if eval_gradient:
            return K, np.empty((K.shape[0], K.shape[0], 0))
        return K

    def _kernel(self, X, Y):
        """``estimator.kernel(X, Y)``, remembering the last result.

        Fitting a Gaussian process evaluates the kernel on the same training
        rows at every step of its optimiser, with the network unchanged: the
        last matrix is reused while the rows, the fitted path and the
        normalisation are the same. A copy is returned, since callers may
        add to its diagonal in place.
        """
        trajectory = getattr(self.estimator, "trajectory_", None)
        key = (
            trajectory,
            getattr(self.estimator, "kernel_normalize", None),
            # partial_fit and warm starts extend the same trajectory in place
            getattr(trajectory, "n_steps", None),
        )
        cached = getattr(self, "_last", None)
        if (
            key[0] is not None
            and cached is not None
            and cached[0][0] is key[0]
            and cached[0][1:] == key[1:]
            and _same(cached[1], X)
            and _same(cached[2], Y)
        ):
            return cached[3].copy()
        with _arrays_without_names():
            K = self.estimator.kernel(X, Y)
        if key[0] is not None:
            copy = None if Y is None else np.asarray(Y).copy()
            self._last = (key, np.asarray(X).copy(), copy, K.copy())
        return K

    def diag(self, X):
        """``k(x, x)`` for every row, without the full matrix.

        Parameters
        ----------
        X : ndarray of shape (n_samples_X, n_features)

        Returns
        -------
        K_diag : ndarray of shape (n_samples_X,)
        """
        diagonal = getattr(self.estimator, "kernel_diagonal", None)
        with _arrays_without_names():
            if diagonal is not None:
                return diagonal(X)
            return np.diag(self.estimator.kernel(X))

    def is_stationary(self):
        """False: the path kernel depends on where the rows are."""
        return False

    @property
    def requires_vector_input(self):
        """True: the network takes rows of numbers."""
        return True

    def __sklearn_clone__(self):
        # scikit-learn's clone would clone the estimator too, throwing away
        # the trained network; the kernel is defined by that network.
        return type(self)(self.estimator)

    def __repr__(self):
        return f"PathKernel(estimator={type(self.estimator).__name__}(...))"

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_last", None)
        return state


def _same(a, b):
    if a is None or b is None:
        return a is None and b is None
    # Plain arrays only, as GaussianProcessRegressor passes them: anything
    # else (a DataFrame, whose names the estimator checks; lists) is computed.
    if not isinstance(b, np.ndarray):
        return False
    return a.shape == b.shape and np.array_equal(a, b)


@contextmanager
def _arrays_without_names():
    """Silence "X does not have valid feature names": see the class notes.

    scikit-learn's warning says X for the Y of ``kernel(X, Y)`` too, so the
    one filter covers both arrays.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=".*does not have valid feature names",
            category=UserWarning,
        )
        yield
