"""PathKernelTransformer and PathKernelFeatures: the path kernel in a Pipeline."""

from numbers import Integral

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
    clone,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from ._base import BasePathKernelEstimator
from ._estimators import PathKernelClassifier, PathKernelRegressor, _docstring
from ._kernels._features import path_features
from ._kernels._normalize import NORMALIZATIONS, row_factors
from ._model._validation import FLOAT_DTYPES, check_finite_result, refuse_nd, validate_X


class _BasePathKernelTransformer(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator
):
    """Fit a clone of a path-kernel estimator in ``fit``; subclasses transform."""

    _parameter_constraints: dict = {
        "estimator": [None, HasMethods(["fit", "kernel"])],
        "normalize": [None, StrOptions(set(NORMALIZATIONS))],
        "random_state": ["random_state"],
    }

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, sample_weight=None):
        """Train a clone of ``estimator`` on ``(X, y)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        sample_weight : array-like of shape (n_samples,), default=None
            Passed to the estimator's ``fit``.

        Returns
        -------
        self : object
        """
        refuse_nd(X, name="X")
        X, y = validate_data(self, X, y, multi_output=True, dtype=FLOAT_DTYPES)
        if self.estimator is None:
            classes = type_of_target(y) in ("binary", "multiclass")
            default = PathKernelClassifier if classes else PathKernelRegressor
            estimator = default(random_state=self.random_state)
        else:
            estimator = clone(self.estimator)
        fit_params = {} if sample_weight is None else {"sample_weight": sample_weight}
        self.estimator_ = estimator.fit(X, y, **fit_params)
        self._fitted(X)
        return self

    def _fitted(self, X):
        """Set what the subclass keeps from the validated training rows."""
        raise NotImplementedError

    def _normalize_mode(self):
        if self.normalize is not None:
            return self.normalize
        return getattr(self.estimator_, "kernel_normalize", "none")

    def _kernel(self, X, Y):
        """``estimator_.kernel(X, Y)``, normalised as ``normalize`` says."""
        if self.normalize is None:  # any estimator with kernel(X, Y) works
            return self.estimator_.kernel(X, Y)
        return self.estimator_.kernel(X, Y, normalize=self.normalize)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # The network trains on (X, y); the input is raw features, not a
        # precomputed kernel, so the input is not "pairwise".
        tags.target_tags.required = True
        return tags


@_docstring
class PathKernelTransformer(_BasePathKernelTransformer):
    """Map rows to their path kernel against the training rows.

    ``fit(X, y)`` trains a clone of ``estimator`` on ``(X, y)`` and keeps
    ``X``; ``transform(X)`` returns ``K_path(X, X_fit)``, of shape
    ``(n_samples, n_samples_fit)``, like ``KNeighborsTransformer``. Put it in
    front of any estimator that takes ``kernel="precomputed"``
    (``SVC``, ``KernelRidge``, ``SpectralClustering``...): in a ``Pipeline``
    under ``GridSearchCV`` or ``cross_val_score`` each fold trains the
    network on that fold's training rows only, and nested parameters
    (``pk__estimator__learning_rate_init``, ``svc__C``) are searched as usual.

    Parameters
    ----------
    estimator : PathKernelRegressor, PathKernelClassifier or None, default=None
        The (unfitted) network whose path kernel is used; any estimator with
        ``fit(X, y)`` and ``kernel(X, Y)`` works. It is cloned at ``fit``.
        None takes ``PathKernelClassifier()`` when ``y`` holds class labels
        (binary or multiclass, as ``type_of_target`` says; integer targets
        count as classes) and ``PathKernelRegressor()`` otherwise.
    {normalize}
    random_state : int, RandomState instance or None, default=None
        Seeds the default estimator when ``estimator`` is None; a given
        estimator keeps its own ``random_state``.

    Attributes
    ----------
    estimator_ : estimator
        The fitted clone of ``estimator``.
    X_fit_ : ndarray of shape (n_samples_fit, n_features)
        The training rows, the columns of every transformed matrix.
    n_samples_fit_ : int
        Number of training rows: the width of the output.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when X has string column names.

    See Also
    --------
    PathKernelFeatures : Explicit random features of the same kernel.
    PathKernel : The path kernel as a Gaussian-process kernel.
    sklearn.neighbors.KNeighborsTransformer : The same shape of output.

    {references}

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> from sklearn.model_selection import cross_val_score
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn.svm import SVC
    >>> from sklearn_pathkernel import PathKernelClassifier, PathKernelTransformer
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> net = PathKernelClassifier((16,), max_iter=30, random_state=0)
    >>> pipe = make_pipeline(
    ...     StandardScaler(),
    ...     PathKernelTransformer(net, normalize="mean_diagonal"),
    ...     SVC(kernel="precomputed"),
    ... )
    >>> scores = cross_val_score(pipe, X, y, cv=3)
    >>> bool(scores.mean() > 0.9)
    True
    """

    def __init__(self, estimator=None, *, normalize=None, random_state=None):
        self.estimator = estimator
        self.normalize = normalize
        self.random_state = random_state

    def _fitted(self, X):
        self.X_fit_ = X
        self.n_samples_fit_ = X.shape[0]
        self._n_features_out = X.shape[0]

    def transform(self, X):
        """``K_path(X, X_fit)``, normalised as ``normalize`` says.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        K : ndarray of float64, shape (n_samples, n_samples_fit)
        """
        check_is_fitted(self)
        X = validate_X(self, X)
        return self._kernel(X, self.X_fit_)

    def fit_transform(self, X, y, sample_weight=None):
        """Fit, then the symmetric kernel of the training rows.

        Same as ``fit(X, y).transform(X)`` up to rounding, but only one
        triangle is computed and the result is exactly symmetric.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        K : ndarray of float64, shape (n_samples, n_samples)
        """
        self.fit(X, y, sample_weight=sample_weight)
        return self._kernel(self.X_fit_, None)


@_docstring
class PathKernelFeatures(_BasePathKernelTransformer):
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
    feature_names_in_ : ndarray of shape (n_features_in_,)
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
        **_BasePathKernelTransformer._parameter_constraints,
        "estimator": [None, BasePathKernelEstimator],
        "n_components": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self, estimator=None, *, n_components=100, normalize=None, random_state=None
    ):
        self.estimator = estimator
        self.n_components = n_components
        self.normalize = normalize
        self.random_state = random_state

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
        X = est._validate_X(validate_X(self, X))
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
        scale = est._training_scale() if mode == "mean_diagonal" else None
        factors = row_factors(mode, diagonal=diagonal, scale=scale)
        return check_finite_result(
            features * factors[:, None],
            what="The path-kernel features",
            dtype=est.dtype,
            X=X,
        )
