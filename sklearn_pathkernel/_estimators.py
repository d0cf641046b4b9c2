"""PathKernelRegressor and PathKernelClassifier."""

import numpy as np
import scipy.sparse as sp
from scipy.special import expit, log_expit, log_softmax, softmax
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.metrics import accuracy_score, r2_score
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_array, check_consistent_length
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from ._base import BasePathKernelEstimator
from ._docstrings import fill_docstring
from ._explain._influence import influence_targets
from ._model._validation import FLOAT_DTYPES
from ._training._losses import (
    BINARY_LOGISTIC,
    POISSON,
    SOFTMAX_CROSS_ENTROPY,
    SQUARED_ERROR,
)


@fill_docstring
class PathKernelRegressor(RegressorMixin, BasePathKernelEstimator):
    """A neural network regressor whose training path gives a kernel.

    Trains a torch network on the squared error ``0.5 * ||f(x) - y||^2``
    (or, with ``loss="poisson"``, the Poisson loss of counts) by
    (minibatch) gradient descent, records the path of its parameters, and
    exposes the path kernel ``K_path(x, x') = sum_t eps_t J_t(x) J_t(x')^T``
    (Domingos, 2020) through :meth:`kernel`. Standardize X and y: the step
    size is absolute, so targets in the hundreds make gradient descent
    diverge (Poisson counts stay unscaled: their log is what is learnt).

    {parameters}
    loss : {{"squared_error", "poisson"}}, default="squared_error"
        MLPRegressor's loss. "squared_error": ``0.5 * ||f - y||^2``, the
        output ``f`` is the prediction. "poisson": the network's output is
        the log of the mean (the log link), :meth:`predict` returns
        ``exp(f)``, ``y`` must be non-negative, and each row's loss is the
        half Poisson deviance ``exp(f) - y f + y log(y) - y`` (MLP's, so
        that ``loss_curve_`` compares; its gradient is ``exp(f) - y``).
        The kernel, :meth:`decompose` and :meth:`influence` then describe
        ``f = log(mu)``: the decomposition's ``prediction()`` is the log of
        :meth:`predict`.

    Attributes
    ----------
    {attributes}
    out_activation_ : str
        As MLPRegressor's: "identity" (the output is the prediction), or
        "exp" for ``loss="poisson"`` (the prediction is its exponential).

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

    Counts with the Poisson loss: the network learns the log of their mean.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X_counts = rng.standard_normal((100, 2))
    >>> counts = rng.poisson(np.exp(0.5 * X_counts[:, 0]))
    >>> est = PathKernelRegressor((8,), loss="poisson", max_iter=100,
    ...                           dtype="float64", random_state=0)
    >>> est = est.fit(X_counts, counts)
    >>> est.out_activation_
    'exp'
    >>> bool((est.predict(X_counts[:3]) > 0).all())
    True
    >>> log_mu = est.decompose(X_counts[:3], exact=True).prediction()
    >>> bool(np.allclose(np.exp(log_mu).ravel(), est.predict(X_counts[:3])))
    True
    """

    _parameter_constraints: dict = {
        **BasePathKernelEstimator._parameter_constraints,
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
        if self.loss == "poisson":
            _check_counts(y, name="y")
        return X, y

    def _encode_targets(self, y):
        targets = y.reshape(-1, 1) if y.ndim == 1 else y
        loss = POISSON if self.loss == "poisson" else SQUARED_ERROR
        # Set now, not with the fitted attributes: early stopping's scores
        # need the link during training (a failed fit restores the old one).
        # Kept, so that set_params(loss=...) after fit changes neither
        # predict's link nor influence's loss derivatives.
        self._fit_loss = loss.name
        return targets, loss, {"_y_ndim": y.ndim}

    def _validation_score(self, outputs, targets, sample_weight):
        # R^2 of the predictions (the means exp(f) for "poisson"), as MLP's
        # early stopping scores them; NaN, as MLP's, where they overflow.
        with np.errstate(over="ignore"):
            predictions = self._link(outputs)
        if not np.isfinite(predictions).all():
            return np.nan
        return r2_score(targets, predictions, sample_weight=sample_weight)

    def _link(self, outputs):
        """The prediction from the network's outputs: ``exp`` for "poisson"."""
        return np.exp(outputs) if self._trained_loss() == "poisson" else outputs

    def _trained_loss(self):
        # Files saved before loss="poisson" trained hold squared-error fits.
        return getattr(self, "_fit_loss", "squared_error")

    @property
    def _influence_loss(self):
        """Influence's loss derivatives: those of the loss trained with."""
        return self._trained_loss()

    @property
    def out_activation_(self):
        """MLP's ``out_activation_``: "identity", or "exp" for ``loss="poisson"``."""
        check_is_fitted(self)
        return "exp" if self._trained_loss() == "poisson" else "identity"

    def _outputs_targets(self, y, n_rows):
        targets = influence_targets(y, n_rows, self.n_outputs_, name="y")
        if self._trained_loss() == "poisson":
            _check_counts(targets, name="y")
        return targets

    def predict(self, X):
        """The trained network's prediction.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_targets)
            1-D when ``y`` was 1-D at fit. For ``loss="poisson"`` the mean
            ``exp(f)`` of the network's output ``f`` (the log link).
        """
        out = self._network_output(X)
        with np.errstate(over="ignore"):  # inf, as MLP's, where exp overflows
            out = self._link(out)
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
    ``K`` logits with the softmax cross-entropy; a multilabel indicator
    ``y`` of shape (n, L) trains one logit per label, each with the logistic
    loss (as MLPClassifier). The path kernel (:meth:`kernel`) is summed
    over the logits when there are several; :meth:`decompose` explains
    each logit. Labels may be any hashable values, strings included.

    {parameters}

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels; for multilabel ``y``, the label indices
        ``0, ..., L - 1`` (as MLPClassifier's).
    {attributes}
    out_activation_ : str
        As MLPClassifier's: "logistic" (two classes, one logit; or one
        logit per label for multilabel ``y``) or "softmax" (``n_classes``
        logits) turns the network's output into :meth:`predict_proba`.

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

    Multilabel: an indicator matrix, one logistic output per label.

    >>> import numpy as np
    >>> Y = np.column_stack([y, X[:, 0] > 0])
    >>> clf = PathKernelClassifier((16,), max_iter=50, random_state=0).fit(X, Y)
    >>> clf.predict(X[:2]).shape, clf.predict_proba(X[:2]).shape
    ((2, 2), (2, 2))
    >>> bool(clf.score(X, Y) > 0.8)  # subset accuracy
    True
    """

    def _validate_targets(self, X, y):
        if sp.issparse(y):  # refused with check_array's message, naming y
            check_array(y, input_name="y")
        X, y = validate_data(
            self, X, y, dtype=FLOAT_DTYPES, ensure_min_samples=2, multi_output=True
        )
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)  # as MLPClassifier
        check_classification_targets(y)
        if y.ndim == 2:
            _check_indicator(y)
        return X, y

    def _encode_targets(self, y):
        # Set now, not with the fitted attributes: early stopping's scores
        # need it during training (a failed fit restores the old value).
        self._multilabel = y.ndim == 2
        if self._multilabel:
            # One logistic output per label; classes_ as MLPClassifier's.
            classes = np.arange(y.shape[1])
            return y.astype(np.float64), BINARY_LOGISTIC, {"classes_": classes}
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

    def _is_multilabel(self):
        # Files saved before multilabel fits hold single-label ones.
        return getattr(self, "_multilabel", False)

    def _validation_score(self, outputs, targets, sample_weight):
        # Accuracy, as MLP's early stopping; subset accuracy for multilabel.
        if self._is_multilabel():
            correct = ((outputs > 0) == (targets > 0.5)).all(axis=1)
        elif outputs.shape[1] == 1:
            correct = (outputs[:, 0] > 0) == (targets[:, 0] > 0.5)
        else:
            correct = outputs.argmax(axis=1) == targets.argmax(axis=1)
        return accuracy_score(
            np.ones_like(correct), correct, sample_weight=sample_weight
        )

    @property
    def _influence_loss(self):
        """Influence's loss: the logistic loss on each output for multilabel."""
        return "binary_log_loss" if self._is_multilabel() else "log_loss"

    @property
    def out_activation_(self):
        """MLP's ``out_activation_``: "softmax" for 3+ classes, else "logistic"."""
        check_is_fitted(self)
        single = len(self.classes_) > 2 and not self._is_multilabel()
        return "softmax" if single else "logistic"

    def _outputs_targets(self, y, n_rows):
        """Labels as the logits see them: codes for one logit, one-hot rows;
        indicator rows for multilabel."""
        if self._is_multilabel():
            targets = influence_targets(y, n_rows, len(self.classes_), name="y")
            _check_indicator(targets)
            return targets
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

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def decision_function(self, X):
        """The network's logits.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,) or (n_samples, n_classes)
            One logit per row for two classes (positive favours
            ``classes_[1]``), else one per class; for multilabel ``y``, one
            per label (positive: the label is predicted).
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
            For multilabel ``y``, each label's probability (the logistic
            function of its logit); rows need not sum to 1.
        """
        scores = self.decision_function(X)
        if self._is_multilabel():
            return expit(scores)
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
        if self._is_multilabel():
            return log_expit(scores)
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
        y : ndarray of shape (n_samples,) or (n_samples, n_labels)
            For multilabel ``y``, the indicator matrix (int) of the labels
            whose logit is positive, as MLPClassifier's.
        """
        scores = self.decision_function(X)
        if self._is_multilabel():
            return (scores > 0).astype(int)
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


def _check_counts(y, *, name):
    """The Poisson loss's targets: non-negative (counts, rates)."""
    if (y < 0).any():
        raise ValueError(
            f"{name} must be non-negative for loss='poisson' (counts or rates, "
            f"whose mean exp(f) the network learns); got {int((y < 0).sum())} "
            f"negative values, the smallest {float(y.min())!r}."
        )


def _check_indicator(y):
    """Multilabel targets: an indicator matrix of 0/1 (or booleans) per label."""
    kind = type_of_target(y)
    if kind != "multilabel-indicator" or not np.isin(y, (0, 1)).all():
        raise ValueError(
            f"y of shape {y.shape} must be 1-D labels or a multilabel indicator "
            f"matrix (0/1 per row and label); got {kind} targets. For several "
            "multiclass outputs use sklearn.multioutput.MultiOutputClassifier."
        )
