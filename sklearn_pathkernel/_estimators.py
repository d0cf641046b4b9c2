"""PathKernelRegressor and PathKernelClassifier."""

import numpy as np
from scipy.special import expit, log_softmax, softmax
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.metrics import accuracy_score, r2_score
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_consistent_length
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ._base import BasePathKernelEstimator
from ._docstrings import fill_docstring
from ._explain._influence import influence_targets
from ._model._validation import FLOAT_DTYPES
from ._training._losses import BINARY_LOGISTIC, SOFTMAX_CROSS_ENTROPY, SQUARED_ERROR


@fill_docstring
class PathKernelRegressor(RegressorMixin, BasePathKernelEstimator):
    """A neural network regressor whose training path gives a kernel.

    Trains a torch network on the squared error ``0.5 * ||f(x) - y||^2`` by
    (minibatch) gradient descent, records the path of its parameters, and
    exposes the path kernel ``K_path(x, x') = sum_t eps_t J_t(x) J_t(x')^T``
    (Domingos, 2020) through :meth:`kernel`. Standardize X and y: the step
    size is absolute, so targets in the hundreds make gradient descent
    diverge.

    {parameters}
    loss : {{"squared_error", "poisson"}}, default="squared_error"
        MLPRegressor's loss. "poisson" (with its log link) is refused at fit:
        it is not supported yet.

    Attributes
    ----------
    {attributes}
    out_activation_ : str
        "identity": as MLPRegressor's, the output is the prediction.

    See Also
    --------
    PathKernelClassifier : The same for classification.
    sklearn.neural_network.MLPRegressor : A network without the kernel.

    {references}

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.kernel_ridge import KernelRidge
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_pathkernel import PathKernelRegressor
    >>> X, y = load_diabetes(return_X_y=True)
    >>> X, y = scale(X), scale(y)
    >>> est = PathKernelRegressor(max_iter=50, random_state=0).fit(X, y)
    >>> est.predict(X[:2]).shape
    (2,)
    >>> K = est.kernel(X)
    >>> K.shape
    (442, 442)
    >>> ridge = KernelRidge(kernel="precomputed").fit(K, y)
    """

    _parameter_constraints: dict = {
        **BasePathKernelEstimator._parameter_constraints,
        # "poisson" is accepted here to be refused at fit with the reason.
        "loss": [StrOptions({"squared_error", "poisson"})],
    }

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        *,
        loss="squared_error",
        activation="tanh",
        module=None,
        input_shape=None,
        tokens=False,
        solver="sgd",
        learning_rate_init=0.1,
        learning_rate="constant",
        power_t=0.5,
        momentum=0.0,
        nesterovs_momentum=True,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-08,
        max_iter=200,
        batch_size=None,
        shuffle=True,
        alpha=0.0,
        tol=0.0001,
        n_iter_no_change=10,
        early_stopping=False,
        validation_fraction=0.1,
        record_every=1,
        quadrature="simpson",
        kernel_nodes=0.1,
        adaptive_tol=0.05,
        trajectory_dir=None,
        device="auto",
        dtype="float32",
        engine="auto",
        kernel_normalize="none",
        working_memory=None,
        n_jobs=None,
        random_state=None,
        verbose=0,
        warm_start=False,
        max_fun=15000,
    ):
        # The base's parameters, passed on as they came: scikit-learn reads
        # them from this signature, which adds MLPRegressor's loss.
        # (locals() first: inside a comprehension it is the comprehension's.)
        params = dict(locals())
        for name in ("self", "loss", "__class__"):
            params.pop(name, None)
        super().__init__(**params)
        self.loss = loss

    def _refuse_unsupported(self):
        super()._refuse_unsupported()
        if self.loss == "poisson":
            raise ValueError(
                f"{type(self).__name__} does not support loss='poisson' yet: its "
                "log link would need its own kernel and decomposition. Use "
                "loss='squared_error' (on log-transformed targets, for counts)."
            )

    def _validate_targets(self, X, y):
        # y separately: check_X_y would keep text and sparse targets, which
        # training cannot use; here they fail in check_array(input_name="y").
        X, y = validate_data(
            self,
            X,
            y,
            validate_separately=(
                {"dtype": FLOAT_DTYPES, "ensure_min_samples": 2},
                {"dtype": np.float64, "ensure_2d": False},
            ),
        )
        check_consistent_length(X, y)  # which validate_separately does not do
        return X, y

    def _encode_targets(self, y):
        targets = y.reshape(-1, 1) if y.ndim == 1 else y
        return targets, SQUARED_ERROR, {"_y_ndim": y.ndim}

    def _validation_score(self, outputs, targets, sample_weight):
        return r2_score(targets, outputs, sample_weight=sample_weight)

    _influence_loss = "squared_error"

    @property
    def out_activation_(self):
        """MLP's ``out_activation_``: "identity", the squared error's link."""
        check_is_fitted(self)
        return "identity"

    def _influence_targets(self, y, n_rows):
        return influence_targets(y, n_rows, self.n_outputs_, name="y")

    def predict(self, X):
        """The trained network's prediction.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_targets)
            1-D when ``y`` was 1-D at fit.
        """
        out = self._network_output(X)
        return out.ravel() if self._y_ndim == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch of training on ``X``, continuing the recorded path.

        As MLPRegressor's: one pass over the rows in minibatches of
        ``batch_size``, no stopping rule, ``early_stopping`` ignored. The
        first call starts a path; later calls append their steps to it, from
        the current parameters and optimiser state, and the rows join the
        kernel machine's rows from the step they were seen (see
        ``fit`` with ``warm_start=True``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training rows; the same features on every call.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Targets; the same number of outputs on every call.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights.

        Returns
        -------
        self : object
            The estimator, trained one more epoch.

        Examples
        --------
        >>> from sklearn.datasets import load_diabetes
        >>> from sklearn.preprocessing import scale
        >>> from sklearn_pathkernel import PathKernelRegressor
        >>> X, y = load_diabetes(return_X_y=True)
        >>> X, y = scale(X), scale(y)
        >>> est = PathKernelRegressor((8,), batch_size=100, random_state=0)
        >>> for rows in (slice(0, 200), slice(200, 442)):
        ...     est = est.partial_fit(X[rows], y[rows])
        >>> est.n_iter_, est.t_, est.trajectory_.n_steps, est.kernel(X[:3]).shape
        (2, 442, 5, (3, 3))
        """
        return self._partial_fit(X, y, sample_weight=sample_weight)


@fill_docstring
class PathKernelClassifier(ClassifierMixin, BasePathKernelEstimator):
    """A neural network classifier whose training path gives a kernel.

    Two classes train one logit with the logistic loss; ``K`` classes train
    ``K`` logits with the softmax cross-entropy. The path kernel
    (:meth:`kernel`) is summed over the logits when there are several.
    Labels may be any hashable values, strings included.

    {parameters}

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels.
    {attributes}
    out_activation_ : str
        As MLPClassifier's: "logistic" (two classes, one logit) or
        "softmax" (``n_classes`` logits) turns the network's output into
        :meth:`predict_proba`.

    See Also
    --------
    PathKernelRegressor : The same for regression.
    sklearn.neural_network.MLPClassifier : A network without the kernel.

    {references}

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> from sklearn.preprocessing import scale
    >>> from sklearn.svm import SVC
    >>> from sklearn_pathkernel import PathKernelClassifier
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> X = scale(X)
    >>> clf = PathKernelClassifier(max_iter=50, random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:2]).shape
    (2, 2)
    >>> svc = SVC(kernel=clf.kernel).fit(X, y)
    >>> bool(svc.score(X, y) > 0.9)
    True
    """

    def _validate_targets(self, X, y):
        X, y = validate_data(self, X, y, dtype=FLOAT_DTYPES, ensure_min_samples=2)
        check_classification_targets(y)
        return X, y

    def _encode_targets(self, y):
        encoder = LabelEncoder()
        codes = encoder.fit_transform(y)
        classes = encoder.classes_
        if len(classes) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes in "
                f"y; got only one class: {classes.tolist()[0]!r}."
            )
        loss = BINARY_LOGISTIC if len(classes) == 2 else SOFTMAX_CROSS_ENTROPY
        return _logit_targets(codes, len(classes)), loss, {"classes_": classes}

    def _validation_score(self, outputs, targets, sample_weight):
        if outputs.shape[1] == 1:
            correct = (outputs[:, 0] > 0) == (targets[:, 0] > 0.5)
        else:
            correct = outputs.argmax(axis=1) == targets.argmax(axis=1)
        return accuracy_score(
            np.ones_like(correct), correct, sample_weight=sample_weight
        )

    _influence_loss = "log_loss"

    @property
    def out_activation_(self):
        """MLP's ``out_activation_``: "logistic" for 2 classes, else "softmax"."""
        check_is_fitted(self)
        return "logistic" if len(self.classes_) == 2 else "softmax"

    def _influence_targets(self, y, n_rows):
        """Labels as the logits see them: codes for one logit, one-hot rows."""
        y = np.asarray(y)
        if y.shape != (n_rows,):
            raise ValueError(
                f"y must have shape ({n_rows},): one label per row of X; got "
                f"shape {y.shape}."
            )
        known = np.isin(y, self.classes_)
        if not known.all():
            raise ValueError(
                f"y contains labels not seen in training: "
                f"{np.unique(y[~known])[:5].tolist()}; classes_ is "
                f"{self.classes_.tolist()}."
            )
        return _logit_targets(np.searchsorted(self.classes_, y), len(self.classes_))

    def decision_function(self, X):
        """The network's logits.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,) or (n_samples, n_classes)
            One logit per row for two classes (positive favours
            ``classes_[1]``), else one per class.
        """
        out = self._network_output(X)
        return out.ravel() if out.shape[1] == 1 else out

    def predict_proba(self, X):
        """Class probabilities from the network's logits.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        scores = self.decision_function(X)
        if scores.ndim == 1:
            positive = expit(scores)
            return np.column_stack([1.0 - positive, positive])
        return softmax(scores, axis=1)

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`, computed stably.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
        """
        scores = self.decision_function(X)
        if scores.ndim == 1:
            scores = np.column_stack([np.zeros_like(scores), scores])
        return log_softmax(scores, axis=1)

    def predict(self, X):
        """The most probable class for each row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,)
        """
        scores = self.decision_function(X)
        codes = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[codes]

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch of training on ``X``, continuing the recorded path.

        As MLPClassifier's: one pass over the rows in minibatches of
        ``batch_size``, no stopping rule, ``early_stopping`` ignored;
        ``classes`` is required on the first call and fixes ``classes_``.
        Later calls append their steps to the path, from the current
        parameters and optimiser state, and the rows join the kernel
        machine's rows from the step they were seen.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training rows; the same features on every call.
        y : array-like of shape (n_samples,)
            Labels, each one of ``classes``; one call need not hold them all.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights.
        classes : array-like of shape (n_classes,), default=None
            Every label of every call; required on the first call (of an
            unfitted estimator), then optional and the same. After
            ``sample_weight``, as in MLPClassifier's signature.

        Returns
        -------
        self : object
            The estimator, trained one more epoch.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn.datasets import load_iris
        >>> from sklearn.preprocessing import scale
        >>> from sklearn_pathkernel import PathKernelClassifier
        >>> X, y = load_iris(return_X_y=True)
        >>> X = scale(X)
        >>> clf = PathKernelClassifier((8,), random_state=0)
        >>> clf = clf.partial_fit(X[::2], y[::2], classes=np.unique(y))
        >>> clf = clf.partial_fit(X[1::2], y[1::2])
        >>> clf.classes_.tolist(), clf.n_iter_, clf.trajectory_.n_steps
        ([0, 1, 2], 2, 2)
        >>> clf.decompose(X[:2]).contributions.shape  # both calls' rows
        (2, 150, 3)
        """
        return self._partial_fit(X, y, sample_weight=sample_weight, classes=classes)


def _logit_targets(codes, n_classes):
    """Class codes as the logits see them: one 0/1 column for two classes
    (one logit), one-hot rows for more. Training and influence share it."""
    if n_classes == 2:
        return codes.reshape(-1, 1).astype(np.float64)
    return np.eye(n_classes)[codes]
