"""Kernel approximations: explicit features whose inner products give the path kernel.

scikit-learn keeps its samplers together (``sklearn.kernel_approximation``);
so do we. :class:`PathKernelFeatures` draws random features that estimate
the path kernel without bias at a cost linear in the rows;
:class:`PathKernelNystroem` builds Nyström features from landmark rows, exact
on the landmarks. Both train a clone of their estimator in ``fit`` and hold
it as ``estimator_``.
"""

import warnings
from numbers import Integral

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from ._base import BasePathKernelEstimator
from ._docstrings import fill_docstring
from ._kernels._features import path_features
from ._kernels._normalize import row_factors
from ._model._validation import check_finite_result, validate_X
from ._transformers import BasePathKernelTransformer

# scikit-learn's Nystroem clips the singular values of K(L, L) at 1e-12.
_ABSOLUTE_FLOOR = 1e-12


def inverse_sqrt(K, *, rtol):
    """``K^(-1/2)`` of a symmetric positive semi-definite matrix, floored.

    Eigenvalues below ``max(1e-12, rtol * largest)`` (rounding noise, and the
    negative ones that rounding gives a PSD matrix) are raised to that floor,
    so that no direction is amplified by more than ``floor ** -0.5``. With no
    eigenvalue floored the result is the exact ``K^(-1/2)`` and the Nyström
    features ``Z = K K^(-1/2)`` give ``Z Z^T = K``; a floored eigenvalue
    ``s >= 0`` contributes ``s^2 / floor < s`` to it instead of ``s``.

    Parameters
    ----------
    K : ndarray of shape (m, m)
        Symmetric (only its lower triangle is read, as ``numpy.linalg.eigh``
        does).
    rtol : float
        The floor relative to the largest eigenvalue.

    Returns
    -------
    K_inv_sqrt : ndarray of float64, shape (m, m)
        Exactly symmetric.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_pathkernel._kernel_approximation import inverse_sqrt
    >>> inverse_sqrt(np.array([[4.0, 0.0], [0.0, 0.25]]), rtol=1e-15)
    array([[0.5, 0. ],
           [0. , 2. ]])
    """
    eigenvalues, eigenvectors = np.linalg.eigh(np.asarray(K, dtype=np.float64))
    largest = max(float(eigenvalues[-1]), 0.0)
    floor = max(_ABSOLUTE_FLOOR, rtol * largest)
    scaled = eigenvectors / np.sqrt(np.maximum(eigenvalues, floor))
    K_inv_sqrt = scaled @ eigenvectors.T
    return (K_inv_sqrt + K_inv_sqrt.T) / 2


class _KernelApproximation(BasePathKernelTransformer):
    """What the two approximations share: ``n_components`` features of a clone."""

    _parameter_constraints: dict = {
        **BasePathKernelTransformer._parameter_constraints,
        "n_components": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self, estimator=None, *, n_components=100, normalize=None, random_state=None
    ):
        self.estimator = estimator
        self.n_components = n_components
        self.normalize = normalize
        self.random_state = random_state


@fill_docstring
class PathKernelNystroem(_KernelApproximation):
    """Nyström features of a trained network's path kernel.

    Like ``sklearn.kernel_approximation.Nystroem``, but for the path kernel
    of a network trained on ``(X, y)``: ``fit(X, y)`` trains a clone of
    ``estimator``, draws ``n_components`` landmark rows ``L`` among the
    training rows (uniformly, without replacement) and keeps
    ``K_path(L, L)^(-1/2)``; ``transform(X)`` returns::

        Z = K_path(X, L) @ K_path(L, L)^(-1/2)        (n_samples, n_components)

    so that ``Z Z^T = K(X, L) K(L, L)^(-1) K(L, X)`` approximates
    ``K_path(X, X)``, exactly on the landmarks (up to rounding). A linear
    model (``LinearSVC``, ``RidgeClassifier``, ``SGDClassifier``) on ``Z``
    then approximates a kernel machine on ``K_path`` at a cost linear in the
    number of rows: ``n_samples * n_components`` kernel entries per
    ``transform`` and ``n_components ** 2`` once at ``fit``.

    ``K_path(L, L)^(-1/2)`` comes from its symmetric eigendecomposition,
    with the eigenvalues raised to at least ``max(1e-12, n_components * eps
    * largest)``, ``eps`` the machine epsilon of the network's dtype:
    scikit-learn's ``Nystroem`` clips the singular values at 1e-12; the
    relative term keeps rounding noise (and the slightly negative
    eigenvalues of a float32 kernel) from being amplified whatever the
    kernel's scale.

    Against ``PathKernelFeatures`` (unbiased random sketches of the exact
    feature map), Nyström features adapt to the data: ``Z Z^T`` is the
    kernel of the feature map projected orthogonally on the span of the
    landmarks' feature vectors, so ``K_path - Z Z^T`` is positive
    semi-definite (the diagonal is underestimated), and zero on the
    landmarks themselves. They need only ``estimator_.kernel``.

    Parameters
    ----------
    estimator : PathKernelRegressor, PathKernelClassifier or None, default=None
        The (unfitted) network whose path kernel is approximated; any
        estimator with ``fit(X, y)`` and ``kernel(X, Y)`` works. It is
        cloned at ``fit``. None takes ``PathKernelClassifier()`` when ``y``
        holds class labels (binary or multiclass, as ``type_of_target``
        says) and ``PathKernelRegressor()`` otherwise.
    n_components : int, default=100
        Number of landmarks, and of features. More than the number of
        training rows uses every row, with a warning.
    {normalize}
    random_state : int, RandomState instance or None, default=None
        Draws the landmarks, and seeds the default estimator when
        ``estimator`` is None (a given estimator keeps its own
        ``random_state``).

    Attributes
    ----------
    estimator_ : estimator
        The fitted clone of ``estimator``.
    component_indices_ : ndarray of int64, shape (n_components,)
        Indices of the landmarks among the training rows.
    components_ : ndarray of shape (n_components, n_features)
        The landmark rows ``L``.
    normalization_ : ndarray of float64, shape (n_components, n_components)
        ``K_path(L, L)^(-1/2)``, symmetric, normalised as ``normalize``
        says.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during fit, when X has string column names.

    See Also
    --------
    PathKernelFeatures : Random-sketch features of the same kernel.
    PathKernelTransformer : The exact kernel against every training row.
    sklearn.kernel_approximation.Nystroem : Nyström features of a kernel
        function.

    {references}
    C. K. I. Williams and M. Seeger, "Using the Nyström method to speed up
    kernel machines", Advances in Neural Information Processing Systems 13,
    2001.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.linear_model import RidgeClassifier
    >>> from sklearn.model_selection import train_test_split
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn_pathkernel import PathKernelClassifier
    >>> from sklearn_pathkernel import PathKernelNystroem
    >>> X, y = load_digits(return_X_y=True)
    >>> X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
    >>> net = PathKernelClassifier((16,), max_iter=50, tol=0, random_state=0)
    >>> pipe = make_pipeline(
    ...     StandardScaler(),
    ...     PathKernelNystroem(net, n_components=100, random_state=0),
    ...     RidgeClassifier(),
    ... ).fit(X_train, y_train)
    >>> pipe[:2].transform(X_test).shape
    (450, 100)
    >>> bool(pipe.score(X_test, y_test) > 0.9)
    True
    """

    def _fitted(self, X):
        n_samples = X.shape[0]
        n_components = self.n_components
        if n_components > n_samples:
            warnings.warn(
                f"n_components={n_components} is larger than the {n_samples} "
                f"training rows: every row is a landmark (n_components="
                f"{n_samples}), which computes the full path kernel.",
                UserWarning,
            )
            n_components = n_samples
        # As scikit-learn's Nystroem: the first n_components of a permutation.
        rng = check_random_state(self.random_state)
        indices = rng.permutation(n_samples)[:n_components].astype(np.int64)
        landmarks = X[indices]
        dtype = getattr(self.estimator_, "dtype", "float32")
        eps = np.finfo(np.float64 if dtype == "float64" else np.float32).eps
        self.normalization_ = inverse_sqrt(
            self._kernel(landmarks, None), rtol=n_components * eps
        )
        self.component_indices_ = indices
        self.components_ = landmarks
        self._n_features_out = n_components

    def transform(self, X):
        """The Nyström features ``K_path(X, L) @ K_path(L, L)^(-1/2)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        Z : ndarray of float64, shape (n_samples, n_components)
        """
        check_is_fitted(self)
        X = validate_X(self, X)
        return self._kernel(X, self.components_) @ self.normalization_


@fill_docstring
class PathKernelFeatures(_KernelApproximation):
    """Explicit random features whose inner products estimate the path kernel.

    Like ``Nystroem`` or ``RBFSampler``, but for the path kernel of a trained
    network: ``fit(X, y)`` trains a clone of ``estimator``, and
    ``transform(X)`` returns ``phi(X)`` of shape ``(n_samples,
    n_components)`` with ``E[phi(x) . phi(x')] = K_path(x, x')``, so that a
    linear model (``LinearSVC``, ``Ridge``, ``SGDClassifier``) on ``phi``
    approximates a kernel machine on ``K_path`` at a cost linear in the
    number of rows.

    The features sketch the path kernel's exact feature map
    ``Phi(x) = concat_k sqrt(w_k) vec J_k(x)`` (every checkpoint's Jacobian,
    flattened over outputs and parameters, scaled by the square root of its
    weight; ``Phi(x) . Phi(x') = K_path(x, x')`` exactly) with independent
    Gaussian factors per checkpoint and piece, so the estimate is unbiased
    and its error falls like ``1 / sqrt(n_components)``. How depends on the
    estimator's ``engine`` (``"auto"`` as for its kernel):

    - the **structured** engine (MLPs and other ``nn.Sequential`` of Linear
      layers and elementwise activations) uses the outer-product form of a
      Linear layer's gradient, ``d_o(x) a(x)^T``: feature ``r`` is::

          phi_r(x) = sum_k sqrt(w_k / m) sum_l (u . vec D_l(x)) (v . [a_l(x), 1])

      a Kronecker sketch costing ``2 m (O h_l + h_{{l-1}} + 1)`` FLOPs per row,
      layer and checkpoint (``m = n_components``, ``h`` the widths), about
      as much as an ``m``-column slice of the exact kernel. Its variance is
      that of a Gaussian projection plus a term that is largest (four times
      the variance on the diagonal) when one layer and checkpoint carry the
      whole kernel, and small when many checkpoints share it;
    - any other engine projects ``vec J_k(x)`` with a Gaussian ``P_k``,
      ``phi(x) = sum_k sqrt(w_k / m) P_k^T vec J_k(x)``: about
      ``2 O d m`` FLOPs per row and checkpoint, and a variance of
      ``(K(x, x) K(x', x') + K(x, x')^2) / m``.

    Each factor is drawn once per ``transform``, in float64 on the CPU from
    a ``torch.Generator`` seeded by ``(seed_, checkpoint, piece)``, so the
    same seed gives the same features on any device and for any blocking of
    the rows (docs/design.md, section 6). The exact ``K_path(x, x)``, needed
    by "cosine", comes from the same pass.

    Parameters
    ----------
    estimator : PathKernelRegressor, PathKernelClassifier or None, default=None
        The (unfitted) network, cloned at ``fit``. None takes
        ``PathKernelClassifier()`` when ``y`` holds class labels (binary or
        multiclass, as ``type_of_target`` says) and ``PathKernelRegressor()``
        otherwise.
    n_components : int, default=100
        Number of features.
    {normalize}
        "mean_diagonal" divides the features by the square root of the mean
        exact training diagonal, "cosine" each row by the square root of its
        exact ``K_path(x, x)``: both estimates stay unbiased.
    random_state : int, RandomState instance or None, default=None
        Seeds the projections, and the default estimator when ``estimator``
        is None (a given estimator keeps its own ``random_state``).

    Attributes
    ----------
    estimator_ : PathKernelRegressor or PathKernelClassifier
        The fitted clone of ``estimator``.
    seed_ : int
        The seed of the projections, drawn from ``random_state`` at fit.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during fit, when X has string column names.

    See Also
    --------
    PathKernelTransformer : The exact kernel against the training rows.
    sklearn.kernel_approximation.Nystroem : Features for a kernel function.

    {references}

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn.svm import LinearSVC
    >>> from sklearn_pathkernel import PathKernelClassifier, PathKernelFeatures
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> net = PathKernelClassifier((16,), max_iter=30, random_state=0)
    >>> features = PathKernelFeatures(
    ...     net, n_components=50, normalize="mean_diagonal", random_state=0
    ... )
    >>> pipe = make_pipeline(StandardScaler(), features, LinearSVC()).fit(X, y)
    >>> pipe[:2].transform(X[:3]).shape
    (3, 50)
    >>> bool(pipe.score(X, y) > 0.9)
    True
    """

    _parameter_constraints: dict = {
        **_KernelApproximation._parameter_constraints,
        "estimator": [None, BasePathKernelEstimator],
    }

    def _fitted(self, X):
        rng = check_random_state(self.random_state)
        self.seed_ = int(rng.randint(np.iinfo(np.int32).max))
        self._n_features_out = self.n_components

    def transform(self, X):
        """The random features ``phi(X)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        phi : ndarray of float64, shape (n_samples, n_components)
        """
        check_is_fitted(self)
        est = self.estimator_
        # The estimator's own checks too: token ids, for tokens=True.
        X = est.__pathkernel_validate__(validate_X(self, X))
        features, diagonal = path_features(
            est.module_,
            est.trajectory_,
            X,
            n_components=self.n_components,
            seed=self.seed_,
            engine=est.engine,
            working_memory=est.working_memory,
            n_jobs=est.n_jobs,
        )
        mode = self._normalize_mode()
        scale = est.__pathkernel_scale__() if mode == "mean_diagonal" else None
        factors = row_factors(mode, diagonal=diagonal, scale=scale)
        return check_finite_result(
            features * factors[:, None],
            what="The path-kernel features",
            dtype=est.dtype,
            X=X,
        )
