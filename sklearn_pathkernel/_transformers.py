"""PathKernelTransformer: the path kernel against the training rows, in a Pipeline."""

from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
    clone,
)
from sklearn.utils._param_validation import HasMethods, StrOptions
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from ._docstrings import fill_docstring
from ._estimators import PathKernelClassifier, PathKernelRegressor
from ._kernels._normalize import NORMALIZATIONS
from ._model._validation import FLOAT_DTYPES, refuse_nd, validate_X


class BasePathKernelTransformer(
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
            classes = type_of_target(y) in (
                "binary",
                "multiclass",
                "multilabel-indicator",
            )
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


@fill_docstring
class PathKernelTransformer(BasePathKernelTransformer):
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
        (binary, multiclass or a multilabel indicator, as ``type_of_target``
        says; integer targets count as classes) and ``PathKernelRegressor()``
        otherwise.
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
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
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
