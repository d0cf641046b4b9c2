"""Shared estimator base: parameters, validation, device, training, kernel."""

import copy
import dataclasses
import os
import warnings
from contextlib import contextmanager
from functools import wraps
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, _fit_context, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    StrOptions,
    validate_parameter_constraints,
)
from sklearn.utils.multiclass import _check_partial_fit_first_call
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)

from ._explain._decompose import decompose_path
from ._explain._influence import path_influence, path_self_influence
from ._kernels._normalize import NORMALIZATIONS, normalize_kernel
from ._kernels._path import path_kernel, path_kernel_diagonal
from ._model._network import (
    ACTIVATIONS,
    adapt_input,
    build_module,
    check_module_output,
    check_rows_independent,
    check_token_range,
    forward,
    make_mlp,
    mlp_linears,
    mode_changes_output,
    placement,
    trainable_parameters,
)
from ._model._validation import (
    DTYPES,
    check_finite_result,
    check_input_shape,
    check_layout,
    refuse_nd,
    resolve_device,
    to_tensor,
    validate_other,
    validate_X,
)
from ._training._continuation import (
    check_continuable,
    check_same_outputs,
    extending,
    joined_history,
    joined_rows,
    resume_optimizer,
    row_offset,
    state_at_path_end,
)
from ._training._draws import MLPStream, first_seed, seeded_global_rng
from ._training._loop import train
from ._training._quadrature import RULES
from ._training._settings import held_out_rows, loop_options, update_rule
from ._training._solvers import SCHEDULES, SOLVERS
from .engines import ENGINES

# Rows per forward pass at predict time: bounds activation memory on large X.
_PREDICT_CHUNK = 8192

# Rows on which fit compares the trained module's outputs in training and in
# eval mode (dropout makes them differ).
_MODE_PROBE_ROWS = 64

# The arguments of methods that take options, checked on entry as
# ``_parameter_constraints`` checks the constructor's at fit.
_METHOD_CONSTRAINTS = {"normalize": [None, StrOptions(set(NORMALIZATIONS))]}

# What validation sets from X (and a continuation checks X against).
_INPUT_ATTRIBUTES = ("n_features_in_", "feature_names_in_")


@dataclasses.dataclass
class _TrainingJob:
    """One run of ``train`` for fit or partial_fit, and what it produced.

    ``extend``: the run continues ``trajectory`` (``mark`` is where it
    ended, ``offset`` where the run's rows go in the kernel machine's).
    """

    extend: bool
    partial: bool
    module: object = None
    X_t: object = None
    Y_t: object = None
    weight_t: object = None
    X_all: object = None
    rows: tuple = ()
    loss: object = None
    target_attributes: dict = dataclasses.field(default_factory=dict)
    options: object = None
    optimizer: object = None
    generator: object = None
    seed: int = 0
    device: object = None
    trajectory: object = None
    mark: tuple = None
    rows_seen: int = 0
    offset: int = 0
    mode_changed: bool = False
    result: object = None


def _restore_on_failure(fit):
    """Undo every change ``fit`` made to the estimator when it does not finish.

    A fit interrupted by Ctrl-C (KeyboardInterrupt), or stopped by an error
    after validation already set ``n_features_in_``, leaves the estimator as
    it was before the call: the previous model stays whole and usable.
    """

    @wraps(fit)
    def wrapper(self, *args, **kwargs):
        before = dict(vars(self))
        try:
            return fit(self, *args, **kwargs)
        except BaseException:
            vars(self).clear()
            vars(self).update(before)
            raise

    return wrapper


class BasePathKernelEstimator(BaseEstimator):
    """Train a torch network by gradient descent and record its path.

    Subclasses say how targets become network outputs and which loss is used
    (``_encode_targets``); everything else, training, recording and the path
    kernel, lives here. Not meant to be used directly.

    Objects that wrap a fitted estimator (``PathKernelFeatures``) reach what
    they need beyond the public methods through two hooks, public by
    convention like scikit-learn's ``__sklearn_tags__``:
    ``__pathkernel_validate__(X)`` checks rows as the estimator's own methods
    do, and ``__pathkernel_scale__()`` is the divisor of "mean_diagonal".
    """

    _parameter_constraints: dict = {
        # Checked whole (every width) where the MLP is built, by
        # _hidden_layer_sizes: constraints cannot look inside a sequence.
        "hidden_layer_sizes": "no_validation",
        "activation": [StrOptions(set(ACTIVATIONS))],
        "module": [None, callable],
        # Checked whole at fit, by _input_shape, like hidden_layer_sizes.
        "input_shape": "no_validation",
        "tokens": ["boolean"],
        # "lbfgs" is accepted here to be refused at fit with the reason.
        "solver": [StrOptions({*SOLVERS, "lbfgs"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "learning_rate": [StrOptions(set(SCHEDULES))],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "nesterovs_momentum": ["boolean"],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [
            None,
            StrOptions({"auto"}),
            Interval(Integral, 1, None, closed="left"),
        ],
        "shuffle": ["boolean"],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "record_every": [Interval(Integral, 1, None, closed="left")],
        "quadrature": [StrOptions(set(RULES))],
        "kernel_nodes": [
            None,
            Interval(Integral, 2, None, closed="left"),
            Interval(Real, 0, 1, closed="right"),
        ],
        "adaptive_tol": [Interval(Real, 0, None, closed="neither")],
        "trajectory_dir": [None, str, os.PathLike],
        # Checked at fit by resolve_device, which the functional API shares.
        "device": "no_validation",
        "dtype": [StrOptions(set(DTYPES))],
        "engine": [StrOptions({"auto", *ENGINES})],
        "kernel_normalize": [StrOptions(set(NORMALIZATIONS))],
        "working_memory": [None, Interval(Real, 0, None, closed="neither")],
        "n_jobs": [None, Integral],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        # MLP's: True makes fit continue the recorded path (as partial_fit).
        "warm_start": ["boolean"],
        # MLP's budget of lbfgs's function calls; lbfgs itself is refused.
        "max_fun": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        *,
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
        epsilon=1e-8,
        max_iter=200,
        batch_size=None,
        shuffle=True,
        alpha=0.0,
        tol=1e-4,
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
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.module = module
        self.input_shape = input_shape
        self.tokens = tokens
        self.solver = solver
        self.learning_rate_init = learning_rate_init
        self.learning_rate = learning_rate
        self.power_t = power_t
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.alpha = alpha
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.record_every = record_every
        self.quadrature = quadrature
        self.kernel_nodes = kernel_nodes
        self.adaptive_tol = adaptive_tol
        self.trajectory_dir = trajectory_dir
        self.device = device
        self.dtype = dtype
        self.engine = engine
        self.kernel_normalize = kernel_normalize
        self.working_memory = working_memory
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.max_fun = max_fun

    # -- subclass hooks ---------------------------------------------------
    def _validate_targets(self, X, y):
        """Return ``(X, y)`` validated; sets ``n_features_in_``."""
        raise NotImplementedError

    def _encode_targets(self, y):
        """Return ``(targets (n, O) float array, loss, fitted attributes)``.

        The attributes (e.g. ``classes_``) are a dict that ``fit`` assigns
        together with the others once training has finished.
        """
        raise NotImplementedError

    def _validation_score(self, outputs, targets, sample_weight):
        """Early stopping's score of network ``outputs`` against encoded targets.

        The score ``score`` reports (accuracy, R^2), as MLP uses.
        """
        raise NotImplementedError

    # -- fitting ----------------------------------------------------------
    @_restore_on_failure
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Train the network by gradient descent and record its path.

        With ``warm_start=True`` on a fitted estimator, training continues
        the recorded path instead of starting a new one: up to ``max_iter``
        more epochs from the current parameters and optimiser state (see
        ``partial_fit``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data; standardize it (e.g. with ``StandardScaler``).
            Dense numbers only: sparse matrices raise a TypeError (convert
            with ``X.toarray()``); integers, booleans and float16 are cast.
            Images and sequences come flattened, with ``input_shape``;
            token ids as whole numbers, with ``tokens=True``.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights; each step averages its rows' losses with
            weights ``s_i / sum_{j in batch} s_j``.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        extend = bool(self.warm_start) and hasattr(self, "trajectory_")
        job = self._training_job(X, y, sample_weight, extend=extend, partial=False)
        # user <- _restore_on_failure <- _fit_context <- fit <- _train <- train
        return self._train(job, user_frame=6)

    @_restore_on_failure
    @_fit_context(prefer_skip_nested_validation=True)
    def _partial_fit(self, X, y, sample_weight=None, classes=None):
        """``partial_fit``'s body: one epoch over ``X``, extending the path if any.

        As MLP's: no stopping rule and no early stopping (``early_stopping``
        is ignored), no ConvergenceWarning; ``classes`` on a classifier's
        first call.
        """
        extend = hasattr(self, "trajectory_")
        if is_classifier(self):
            self._partial_fit_classes(classes)
        job = self._training_job(X, y, sample_weight, extend=extend, partial=True)
        # user <- partial_fit <- _restore_on_failure <- _fit_context
        # <- _partial_fit <- _train <- train
        return self._train(job, user_frame=7)

    def _train(self, job, user_frame):
        """Run ``job``'s training, then assign what it fitted.

        ``user_frame`` is how far up the stack the user's call is, from
        ``train``: its warnings point there.
        """
        with self._guarded(job):
            job.result = train(
                job.module,
                job.X_t,
                job.Y_t,
                job.loss,
                sample_weight=job.weight_t,
                options=job.options,
                generator=job.generator,
                owner=type(self).__name__,
                trajectory=job.trajectory,
                optimizer=job.optimizer,
                rows_seen=job.rows_seen,
                user_frame=user_frame,
            )
        return self._set_fitted(job)

    def _partial_fit_classes(self, classes):
        """``classes_`` from ``classes`` on the first call; later, the same or None."""
        if _check_partial_fit_first_call(self, classes) and len(self.classes_) < 2:
            raise ValueError(
                f"{type(self).__name__}.partial_fit needs classes of at least 2 "
                f"labels; got classes={self.classes_.tolist()}."
            )

    def _training_job(self, X, y, sample_weight, *, extend, partial):
        """Everything a run of ``train`` needs, checked: a new path or the current one.

        ``extend``: continue the recorded path (same module, trajectory and
        optimiser state). ``partial``: one epoch, without early stopping.
        """
        if extend:
            self._check_continuable()
        job = _TrainingJob(extend=extend, partial=partial)
        before = {k: v for k, v in vars(self).items() if k in _INPUT_ATTRIBUTES}
        X_given = X
        X, y, sample_weight, input_shape = self._validate_fit_data(X, y, sample_weight)
        if extend:
            self._check_same_inputs(X_given, before)
        targets, job.loss, job.target_attributes = self._targets(
            y, X.shape[0], extend, partial
        )
        job.device, dtype = resolve_device(self.device), DTYPES[self.dtype]
        random_state = self._random_sources(job)
        # Before the split, as MLP draws its initial network before it.
        job.module = self._training_module(
            job, X.shape[1], input_shape, targets.shape[1], dtype
        )
        validation, job.X_all = None, X  # the token check sees held-out rows too
        if self.early_stopping and not partial:  # MLP's partial_fit ignores it
            X, targets, sample_weight, validation = self._hold_out(
                X, y, targets, sample_weight, random_state, job, dtype
            )
        job.rows = (X, sample_weight, np.array(targets, dtype=np.float64))
        job.X_t = to_tensor(X, dtype=dtype, device=job.device, name="X")
        job.Y_t = to_tensor(targets, dtype=dtype, device=job.device, name="y")
        job.weight_t = to_tensor(
            sample_weight, dtype=dtype, device=job.device, name="sample_weight"
        )
        options = loop_options(self, update_rule(self), X.shape[0], validation)
        job.options = dataclasses.replace(options, max_iter=1) if partial else options
        self._continue_optimizer(job)
        return job

    def _random_sources(self, job):
        """Seed ``job``'s randomness from ``random_state``; return MLP's stream.

        The default MLP draws what scikit-learn's MLP draws, from the same
        ``RandomState`` in the same order (``MLPStream``). torch's global
        RNG, which nothing in that network uses, is seeded with the first
        int32 of a *copy* of the stream (the seed earlier versions drew), so
        that the stream stays MLP's. A user module keeps that earlier
        scheme: the int32 is drawn from the stream itself (before early
        stopping's split) and seeds the module's initialisation, the global
        RNG (dropout) and a ``torch.Generator`` that shuffles.
        """
        random_state = check_random_state(self.random_state)
        if self.module is None:
            job.seed = first_seed(copy.deepcopy(random_state))
            job.generator = MLPStream(random_state)
        else:
            job.seed = first_seed(random_state)
            job.generator = torch.Generator().manual_seed(job.seed)
        return random_state

    def _training_module(self, job, n_features, input_shape, n_outputs, dtype):
        """A new module on the device, or a copy of ``module_`` to continue.

        A copy, so that a continuation that fails leaves ``module_`` as it was.
        """
        if job.extend:
            module = copy.deepcopy(self.module_).to(device=job.device)
            module.train()
            return module
        module = self._initial_module(
            n_features, n_outputs, job.generator, job.seed, dtype
        )
        module = adapt_input(module, input_shape, self.tokens)
        module = module.to(device=job.device, dtype=dtype)
        owner = f"The 'module' of {type(self).__name__}"
        check_rows_independent(module, owner=owner)
        return module

    def _continue_optimizer(self, job):
        """The optimiser, the path and the rows seen that training starts from.

        A continuation loads the optimiser's saved state (a copy: training
        changes it in place), so that momentum buffers and Adam's moments and
        step count go on as if training had never stopped; and the last
        step's size as its rate, which the state may be scaled by (the
        velocity form keeps ``-v / eps`` in torch's buffer).
        """
        params = [p for _, p in trainable_parameters(job.module)]
        solver = job.options.solver
        job.optimizer = solver.optimizer(params, job.options.learning_rate_init)
        if not job.extend:
            return
        state = getattr(self, "_optimizer_state", None)
        resume_optimizer(job.optimizer, state, self.trajectory_)
        job.trajectory = self.trajectory_
        job.mark = self.trajectory_._mark()
        job.rows_seen = self.t_
        job.offset = row_offset(self._fit_rows(), job.rows)

    @contextmanager
    def _guarded(self, job):
        """Around ``train``: the checks, the seeded RNG, and undoing a failed run.

        A continuation joins its steps to the path, or takes them back off
        it when it does not finish (an error, Ctrl-C), which
        ``_restore_on_failure`` cannot do (it restores attributes, and the
        path is changed in place): ``extending``.
        """
        with (
            extending(job.trajectory, job.mark, job.offset),
            seeded_global_rng(job.seed, job.device),
            warnings.catch_warnings(),
        ):
            if job.partial:  # one epoch is all partial_fit asks for (not
                # DivergenceWarning, a ConvergenceWarning too)
                warnings.filterwarnings(
                    "ignore",
                    ".*gradient descent reached max_iter",
                    ConvergenceWarning,
                )
            if self.tokens:
                check_token_range(job.module, job.X_all, name="X")
            check_module_output(job.module, job.X_t[:2], job.Y_t.shape[1])
            yield
            # Kernels are computed in eval mode: the training steps differ
            # from them when the module's training mode changes its outputs.
            job.mode_changed = mode_changes_output(
                job.module, job.X_t[:_MODE_PROBE_ROWS]
            )
        job.module.eval()

    def _check_continuable(self):
        """Refuse, naming them, changes that would make the path two paths.

        ``check_continuable`` with what the parameters say now. In this
        order: "lbfgs" is refused by ``update_rule`` before any width is checked.
        """
        settings = {
            "solver": update_rule(self),
            "record_every": self.record_every,
            "quadrature": self.quadrature,
            "kernel_nodes": self.kernel_nodes,
            "dtype": DTYPES[self.dtype],
            "hidden_widths": (
                self._hidden_layer_sizes() if self.module is None else None
            ),
        }
        check_continuable(
            type(self).__name__,
            self.trajectory_,
            self.module_,
            settings,
            has_targets=getattr(self, "_fit_targets", None) is not None,
            optimizer_state=getattr(self, "_optimizer_state", None),
        )

    def _check_same_inputs(self, X_given, before):
        """A continuation takes the features it was trained on (sklearn's checks).

        ``_validate_fit_data`` reset ``n_features_in_``; put the recorded
        ones back and check ``X`` against them as ``predict`` would.
        """
        for key in _INPUT_ATTRIBUTES:
            vars(self).pop(key, None)
        vars(self).update(before)
        validate_data(self, X_given, reset=False, skip_check_array=True)

    def _targets(self, y, n_rows, extend, partial):
        """``(targets, loss, attributes)``: ``y`` as the network's outputs see it.

        A new path encodes ``y`` (``_encode_targets``). A continued one, or
        a classifier's first ``partial_fit`` (``classes`` given), encodes it
        against the outputs already fixed: a label outside ``classes_`` or
        another number of outputs is a ValueError.
        """
        classifier = is_classifier(self)
        if not extend and not (partial and classifier):
            return self._encode_targets(y)
        loss, attributes = self._continued_loss(y)
        if extend and not classifier:
            check_same_outputs(y, self.n_outputs_, type(self).__name__)
        targets = self._outputs_targets(y, n_rows)
        return targets, loss, {} if extend else attributes

    def _continued_loss(self, y):
        """``(loss, attributes)`` of a path whose outputs are fixed already.

        From ``_encode_targets`` of labels that show the outputs: a
        classifier's ``classes_`` (one call's ``y`` may lack some), or ``y``
        itself (a regressor's values, a label-indicator matrix). Encoding
        only to learn the loss leaves a fitted estimator as it was (it may
        set attributes); ``_outputs_targets`` then checks ``y`` against
        the outputs.
        """
        own_labels = not is_classifier(self) or np.ndim(y) == 2
        labels = y if own_labels else self.classes_
        before = dict(vars(self))
        _, loss, attributes = self._encode_targets(labels)
        if hasattr(self, "n_outputs_"):
            vars(self).clear()
            vars(self).update(before)
        return loss, attributes

    def _fit_rows(self):
        """The kernel machine's rows: ``(_fit_X, _fit_sample_weight, _fit_targets)``."""
        return self._fit_X, self._fit_sample_weight, self._fit_targets

    def _set_fitted(self, job):
        """Assign the fitted attributes together: an interrupted fit changes nothing.

        A continuation appends to what was there: the rows (unless they are
        the same), the loss curve, the epochs and the rows seen.
        """
        result, rows = job.result, job.rows
        rows_seen = job.rows_seen + rows[0].shape[0] * result.n_iter
        history = vars(result)
        if job.extend:
            history = joined_history(self._fitted_history(), result)
            rows = joined_rows(self._fit_rows(), rows, job.offset)
        X, sample_weight, targets = rows
        self.module_ = job.module
        self.trajectory_ = result.trajectory
        self.loss_curve_ = history["loss_curve"]
        self.best_loss_ = history["best_loss"]
        self.validation_scores_ = history["validation_scores"]
        # None when training diverged before a first epoch was scored.
        self.best_validation_score_ = (
            history["best_validation_score"] if history["validation_scores"] else None
        )
        self.n_iter_ = history["n_iter"]
        self._rows_seen = rows_seen  # t_
        self._fit_X = X  # the kernel machine sums over these rows
        self._fit_sample_weight = sample_weight  # weights the kernel's scale
        # The training rows' targets as the network's outputs see them: the
        # loss derivatives of influence and self_influence need them.
        self._fit_targets = targets
        self._fit_diagonal = None  # K_path(x_i, x_i), computed when first needed
        # dropout: decompose cannot be exact (on any part of the path)
        self._fit_mode_changed = job.mode_changed or (
            job.extend and getattr(self, "_fit_mode_changed", False)
        )
        self._optimizer_state = state_at_path_end(result, job.optimizer)
        self.n_outputs_ = targets.shape[1]
        for name, value in job.target_attributes.items():
            setattr(self, name, value)
        return self

    def _fitted_history(self):
        """The fitted records, as ``joined_history`` takes them."""
        return {
            "loss_curve": self.loss_curve_,
            "best_loss": self.best_loss_,
            "validation_scores": self.validation_scores_,
            "best_validation_score": self.best_validation_score_,
            "n_iter": self.n_iter_,
        }

    def _validate_fit_data(self, X, y, sample_weight):
        """``(X, y, sample_weight, input_shape)`` checked for training."""
        input_shape = self._input_shape()
        refuse_nd(X, name="X")
        X, y = self._validate_targets(X, y)
        check_input_shape(input_shape, X.shape[1])
        check_layout(self, X, name="X")
        sample_weight = _check_sample_weight(
            sample_weight, X, dtype=np.float64, ensure_non_negative=True
        )
        return X, y, sample_weight, input_shape

    def _hold_out(self, X, y, targets, sample_weight, random_state, job, dtype):
        """Early stopping: split off ``validation_fraction`` of the rows.

        Stratified for a classifier with one output, as MLP does (a user
        module: any classifier of 1-D labels). Returns the training part,
        in the rows' order, and ``validation(module)``, which scores the
        module on the rest; MLP's stream learns MLP's order of those rows.
        """
        mlp = isinstance(job.generator, MLPStream)
        one_output = targets.shape[1] == 1 if mlp else np.ndim(y) == 1
        stratify = y if is_classifier(self) and one_output else None
        train, held = held_out_rows(
            X.shape[0], self.validation_fraction, random_state, stratify
        )
        if mlp:  # MLP trains on X[train] in the split's order
            job.generator.rows = np.searchsorted(np.sort(train), train)
        train, held = np.sort(train), np.sort(held)
        X_held = to_tensor(X[held], dtype=dtype, device=job.device, name="X")
        targets_held, weight_held = targets[held], sample_weight[held]

        def validation(module):
            outputs = forward(module, X_held).double().cpu().numpy()
            return self._validation_score(outputs, targets_held, weight_held)

        return X[train], targets[train], sample_weight[train], validation

    def _initial_module(self, n_features, n_outputs, generator, seed, dtype):
        if self.module is not None:
            return build_module(self.module, n_features, n_outputs, seed=seed)
        if self.input_shape is not None or self.tokens:
            raise ValueError(
                f"input_shape={self.input_shape!r} and tokens={self.tokens!r} are "
                "for a user module that takes shaped examples or token ids; "
                "the default MLP takes flat float rows. Pass module=..., or "
                "leave input_shape=None and tokens=False."
            )
        return make_mlp(
            n_features,
            n_outputs,
            self._hidden_layer_sizes(),
            self.activation,
            random_state=generator.random_state,  # MLP's draws (MLPStream)
            dtype=dtype,
        )

    def _hidden_layer_sizes(self):
        """``hidden_layer_sizes`` as a list of widths; the one check of it."""
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, Integral):
            sizes = [sizes]
        try:
            valid = not isinstance(sizes, str) and all(
                isinstance(s, Integral) and s > 0 for s in sizes
            )
        except TypeError:  # not iterable
            valid = False
        if not valid:
            raise InvalidParameterError(
                f"The 'hidden_layer_sizes' parameter of {type(self).__name__} must "
                "be a positive int or a sequence of positive ints; got "
                f"{self.hidden_layer_sizes!r} instead."
            )
        return list(sizes)

    def _input_shape(self):
        """``input_shape`` as a tuple of positive ints, or None; its one check."""
        shape = self.input_shape
        if shape is None:
            return None
        try:
            valid = (
                not isinstance(shape, str)
                and len(shape) > 0
                and all(isinstance(s, Integral) and s > 0 for s in shape)
            )
        except TypeError:  # not a sequence
            valid = False
        if not valid:
            raise InvalidParameterError(
                f"The 'input_shape' parameter of {type(self).__name__} must be "
                "None or a non-empty tuple of positive ints, such as (1, 8, 8); "
                f"got {shape!r} instead."
            )
        return tuple(int(s) for s in shape)

    # -- MLP's fitted attributes ------------------------------------------
    # Read from module_ (and the fit's records) each time, so they never fall
    # out of step with the network and add nothing to pickles or saved files.
    # Before fit they raise NotFittedError, an AttributeError: hasattr is False.
    def _mlp_linears(self, name):
        """The fitted network's Linear layers, for MLP's weight attributes."""
        check_is_fitted(self)
        linears = mlp_linears(self.module_)
        if linears is None:
            raise AttributeError(
                f"{type(self).__name__}.{name} describes the default MLP (or an "
                "nn.Sequential of biased Linear layers separated by one "
                "activation); this estimator's module_ has another form. Read "
                "its weights from module_ itself."
            )
        return linears

    @property
    def coefs_(self):
        """MLP's ``coefs_``: ``coefs_[i]``, shape (n_in, n_out), layer i's weights.

        A copy of the network's weights, transposed into scikit-learn's layout.
        """
        return [
            np.ascontiguousarray(layer.weight.detach().cpu().numpy().T)
            for layer in self._mlp_linears("coefs_")
        ]

    @property
    def intercepts_(self):
        """MLP's ``intercepts_``: ``intercepts_[i]``, shape (n_out,), layer i's bias."""
        return [
            layer.bias.detach().cpu().numpy().copy()
            for layer in self._mlp_linears("intercepts_")
        ]

    @property
    def n_layers_(self):
        """MLP's ``n_layers_``: the input, the hidden layers and the output."""
        return len(self._mlp_linears("n_layers_")) + 1

    @property
    def loss_(self):
        """MLP's ``loss_``: ``loss_curve_[-1]``; None when no epoch finished."""
        check_is_fitted(self)
        return self.loss_curve_[-1] if self.loss_curve_ else None

    @property
    def t_(self):
        """MLP's ``t_``: training rows seen, over every epoch of every call."""
        check_is_fitted(self)
        rows_seen = getattr(self, "_rows_seen", None)  # absent from older files
        return self.n_iter_ * self._fit_X.shape[0] if rows_seen is None else rows_seen

    # -- using the fitted network -----------------------------------------
    def _validate_X(self, X, name="X"):
        """``validate_X`` (or ``validate_other`` for Y), then the token ids.

        With ``tokens=True``, ids larger than every training id go through
        the network once (:func:`check_token_range`), so that one beyond an
        embedding table is refused here, naming the array.
        """
        X = validate_X(self, X) if name == "X" else validate_other(self, X)
        if self.tokens and X.size and X.max() > self._fit_X.max(initial=0):
            check_token_range(self.module_, X, name=name)
        return X

    def __pathkernel_validate__(self, X):
        """Rows checked as :meth:`kernel` checks them; for wrapping objects.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X : ndarray
            Validated rows; with ``tokens=True``, ids checked against the
            network's embedding tables.
        """
        check_is_fitted(self)
        return self._validate_X(X)

    def __pathkernel_scale__(self):
        """The divisor of "mean_diagonal"; for wrapping objects.

        Returns
        -------
        scale : float
            The mean training ``K_path(x_i, x_i)``, weighted by the training
            sample weights; computed once per fit.
        """
        check_is_fitted(self)
        return self._training_scale()

    def _network_output(self, X):
        """The trained network's outputs on ``X``, float64 (n_samples, O)."""
        check_is_fitted(self)
        X = self._validate_X(X)
        reference = next(self.module_.parameters())
        X_t = to_tensor(X, dtype=reference.dtype, device=reference.device, name="X")
        with torch.no_grad():
            chunks = [
                forward(self.module_, X_t[i : i + _PREDICT_CHUNK])
                for i in range(0, X_t.shape[0], _PREDICT_CHUNK)
            ]
        if not chunks:
            return np.zeros((0, self.n_outputs_))
        out = torch.cat(chunks).cpu().double().numpy()
        return check_finite_result(
            out, what="The network's output on X", dtype=self.dtype, X=X
        )

    def kernel(self, X, Y=None, *, normalize=None, out=None, dtype=np.float64):
        """The path kernel ``K_path(X, Y)`` of the trained network.

        ``sum_k weights[k] * J_k(X) J_k(Y)^T`` over the recorded checkpoints,
        summed over outputs when the network has several, then normalised as
        ``kernel_normalize`` says. Symmetric positive semi-definite for
        ``Y=None``; usable as ``SVC(kernel=est.kernel)`` or as a precomputed
        kernel.

        Parameters
        ----------
        X : array-like of shape (n_X, n_features)
        Y : array-like of shape (n_Y, n_features), default=None
            None means ``Y = X``.
        normalize : {"none", "mean_diagonal", "cosine"}, default=None
            Overrides ``kernel_normalize`` for this call; None keeps it.
        out : str, os.PathLike or ndarray, default=None
            None returns a new array. A path writes the kernel to a ``.npy``
            file strip by strip, for kernels larger than memory; the same
            call after a crash or Ctrl-C computes only the rows still
            missing (see :func:`~sklearn_pathkernel.path_kernel`). An array
            of the result's shape and dtype is filled in place.
        dtype : {numpy.float64, numpy.float32}, default=numpy.float64
            Of the result; float32 halves it (normalisation then runs in
            float32 too).

        Returns
        -------
        K : ndarray or numpy.memmap of shape (n_X, n_Y)
            ``out`` itself, or the opened file, when ``out`` is given.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from sklearn.datasets import load_diabetes
        >>> from sklearn.preprocessing import scale
        >>> from sklearn_pathkernel import PathKernelRegressor
        >>> X, y = load_diabetes(return_X_y=True)
        >>> est = PathKernelRegressor((16,), max_iter=10, random_state=0)
        >>> est = est.fit(scale(X), scale(y))
        >>> path = os.path.join(tempfile.mkdtemp(), "K.npy")
        >>> K = est.kernel(scale(X), out=path, dtype=np.float32)
        >>> np.load(path, mmap_mode="r").shape
        (442, 442)
        """
        check_is_fitted(self)
        mode = self._normalize_mode(normalize, "kernel")
        X = self._validate_X(X)
        if Y is not None:
            Y = self._validate_X(Y, "Y")
        K = path_kernel(
            self.module_,
            self.trajectory_,
            X,
            Y,
            verbose=self.verbose,
            out=out,
            dtype=dtype,
            **self._kernel_options(),
        )
        check_finite_result(K, what="The path kernel", dtype=self.dtype, X=X, Y=Y)
        in_place = out is not None  # a file or the caller's array: no copy
        if mode == "none":
            return K
        if mode == "mean_diagonal":
            return normalize_kernel(
                K, mode, scale=self._training_scale(), in_place=in_place
            )
        diag_X = np.diag(K).copy() if Y is None else self._raw_diagonal(X)
        diag_Y = diag_X if Y is None else self._raw_diagonal(Y)
        return normalize_kernel(
            K, mode, diag_X=diag_X, diag_Y=diag_Y, in_place=in_place
        )

    def kernel_diagonal(self, X, *, normalize=None):
        """``K_path(x, x)`` for every row of ``X``: the diagonal of ``kernel(X)``.

        Linear in ``n_X``: one engine state per row and checkpoint, no
        product between rows.

        Parameters
        ----------
        X : array-like of shape (n_X, n_features)
        normalize : {"none", "mean_diagonal", "cosine"}, default=None
            Overrides ``kernel_normalize`` for this call; None keeps it.

        Returns
        -------
        diagonal : ndarray of float64, shape (n_X,)
            All ones for "cosine" (zero for a row whose gradients all vanish).
        """
        check_is_fitted(self)
        mode = self._normalize_mode(normalize, "kernel_diagonal")
        X = self._validate_X(X)
        diagonal = check_finite_result(
            self._raw_diagonal(X), what="The path kernel", dtype=self.dtype, X=X
        )
        if mode == "none":
            return diagonal
        if mode == "mean_diagonal":
            return diagonal / self._training_scale()
        return (diagonal > 0).astype(np.float64)

    def _normalize_mode(self, normalize, method):
        """The normalisation a call of ``method`` uses; the one check of it.

        ``kernel_normalize`` was checked at fit, by ``_parameter_constraints``.
        """
        validate_parameter_constraints(
            _METHOD_CONSTRAINTS,
            {"normalize": normalize},
            caller_name=f"{type(self).__name__}.{method}",
        )
        return self.kernel_normalize if normalize is None else normalize

    def _kernel_options(self):
        return {
            "engine": self.engine,
            "working_memory": self.working_memory,
            "n_jobs": self.n_jobs,
        }

    def _raw_diagonal(self, X):
        """Unnormalised ``K_path(x, x)`` of validated rows; cached for ``_fit_X``."""
        if X is self._fit_X or (
            X.shape == self._fit_X.shape and np.array_equal(X, self._fit_X)
        ):
            return self._training_diagonal()
        return path_kernel_diagonal(
            self.module_, self.trajectory_, X, **self._kernel_options()
        )

    def _training_scale(self):
        """The divisor of "mean_diagonal": the mean training ``K_path(x_i, x_i)``.

        Weighted by the training sample weights (so that a weight of 2 and a
        repeated row give the same scale), and the same for training and new
        rows, so that transforming new rows never changes the scale.
        """
        weights = self._fit_sample_weight
        diagonal = self._training_diagonal()
        if weights.sum() <= 0:
            return float(diagonal.mean())
        return float(np.average(diagonal, weights=weights))

    def _training_diagonal(self):
        """``K_path(x_i, x_i)`` of the training rows, computed once per fit."""
        if getattr(self, "_fit_diagonal", None) is None:
            self._fit_diagonal = path_kernel_diagonal(
                self.module_, self.trajectory_, self._fit_X, **self._kernel_options()
            )
        return self._fit_diagonal

    def decompose(self, X, *, exact=False, n_nodes=4, kinks="auto", kernel="path"):
        """Explain the network's outputs at ``X`` as a sum over training rows.

        The trained network is the initial one plus what each training row
        contributed along the path (Theorem 1 of the paper)::

            f(x; w_T) ~= b(x) + sum_i phi_i(x)

        Parameters
        ----------
        X : array-like of shape (n_X, n_features)
            Query rows.
        exact : bool, default=False
            False: the paper's first-order form, whose error shrinks with the
            step size. True: average the query-side Jacobian over each step
            (Gauss-Legendre), which reproduces the network to rounding, for
            piecewise-linear activations (relu) too (see ``kinks``); needs
            ``record_every=1``.
        n_nodes : int, default=4
            Quadrature nodes per step for ``exact=True``, or per piece of a
            step between kinks: four are exact on the pieces of a
            piecewise-linear network of up to 8 parameterised layers.
        kinks : "auto" or bool, default="auto"
            For ``exact=True`` with a piecewise-linear network (relu,
            leaky_relu, hardtanh, max-pooling, ...): split each step where
            a query's activation pattern changes and integrate each piece,
            which makes the decomposition exact. "auto" does so whenever
            the network has such kinks; False integrates across them (not
            exact); True insists. See ``decompose_path``.
        kernel : {"path", "loss_weighted"}, default="path"
            What the result's ``kernel`` holds: ``K_path(x, x_i)``, or the
            loss-weighted path kernel of Remark 2 (one output only).

        Returns
        -------
        machine : KernelMachine
            ``bias`` (n_X, O), ``contributions`` (n_X, n_train, O),
            ``network_output`` (n_X, O; logits for a classifier), ``kernel``,
            ``coefficients``, ``prediction()``, ``error`` and
            ``top_contributors(k)``.
        """
        check_is_fitted(self)
        X = self._validate_X(X)
        if exact and getattr(self, "_fit_mode_changed", False):
            warnings.warn(
                f"{type(self).__name__}: the network was trained in a mode that "
                "computes other outputs than eval mode (dropout, whose steps "
                "used random masks), while the decomposition replays the steps "
                "in eval mode: exact=True cannot reproduce the network. The "
                "result's error attribute reports the gap.",
                UserWarning,
                stacklevel=2,
            )
        machine = decompose_path(
            self.module_,
            self.trajectory_,
            self._fit_X,
            X,
            exact=exact,
            n_nodes=n_nodes,
            kinks=kinks,
            kernel=kernel,
            verbose=self.verbose,
            **self._kernel_options(),
        )
        check_finite_result(
            (machine.contributions, machine.kernel),
            what="The decomposition",
            dtype=self.dtype,
            X=X,
        )
        return machine

    # -- influence ------------------------------------------------------------
    def influence(self, X, y):
        """TracIn influence of each training row on the loss at each row of ``X``.

        ``sum_k weight_k g_k(x, y)^T K_k(x, x_i) g_k(x_i, y_i)`` over the
        path kernel's nodes, ``g = dl/df`` the loss derivative at the
        network's outputs (logits for a classifier): how much the steps
        taken on training row ``i`` lowered (positive, a proponent) or
        raised (negative, an opponent) the loss at ``(x, y)``. Captum's
        ``TracInCP`` on the same checkpoints, with the node weights as
        learning rates and the per-row loss unreduced (see
        :func:`~sklearn_pathkernel.path_influence`). Each row's ``g`` is
        folded into its engine state: a pair costs what one output of
        :meth:`kernel` costs.

        Parameters
        ----------
        X : array-like of shape (n_X, n_features)
            Labelled rows, e.g. test rows.
        y : array-like of shape (n_X,) or (n_X, n_targets)
            Their labels (classes seen in training) or targets.

        Returns
        -------
        influence : ndarray of float64, shape (n_X, n_train)
            Against the training rows, in their order (the rows kept for
            training when ``early_stopping`` held some out).

        Examples
        --------
        >>> from sklearn.datasets import load_iris
        >>> from sklearn.preprocessing import scale
        >>> from sklearn_pathkernel import PathKernelClassifier
        >>> X, y = load_iris(return_X_y=True)
        >>> X = scale(X)
        >>> clf = PathKernelClassifier((16,), max_iter=30, random_state=0).fit(X, y)
        >>> scores = clf.influence(X[:2], y[:2])
        >>> scores.shape
        (2, 150)
        >>> top = scores[0].argsort()[::-1][:10]  # row 0's strongest proponents
        >>> y[top].tolist()  # all of its own class
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        """
        check_is_fitted(self)
        X = self._validate_X(X)
        targets = self._outputs_targets(y, X.shape[0])
        scores = path_influence(
            self.module_,
            self.trajectory_,
            self._fit_X,
            self._training_targets(),
            X,
            targets,
            loss=self._influence_loss,
            verbose=self.verbose,
            **self._kernel_options(),
        )
        return check_finite_result(scores, what="The influence", dtype=self.dtype, X=X)

    def self_influence(self, X=None, y=None):
        """Each labelled row's influence on its own loss: TracIn's self-influence.

        ``sum_k weight_k g_k(x, y)^T K_k(x, x) g_k(x, y)``, the diagonal of
        :meth:`influence`, at the cost of :meth:`kernel_diagonal`. Rows the
        path kept pushing on score high: mislabelled rows among them (rank
        the training rows and inspect the top).

        Parameters
        ----------
        X : array-like of shape (n, n_features), default=None
            Labelled rows; None: the training rows with their own targets.
        y : array-like of shape (n,) or (n, n_targets), default=None
            Their labels or targets; given exactly when ``X`` is.

        Returns
        -------
        self_influence : ndarray of float64, shape (n,)

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn.datasets import load_iris
        >>> from sklearn.preprocessing import scale
        >>> from sklearn_pathkernel import PathKernelClassifier
        >>> X, y = load_iris(return_X_y=True)
        >>> X, y = scale(X), y.copy()
        >>> y[:5] = 2  # five setosas labelled virginica
        >>> clf = PathKernelClassifier((16,), max_iter=30, random_state=0).fit(X, y)
        >>> ranked = np.argsort(-clf.self_influence())
        >>> sorted(ranked[:5].tolist())
        [0, 1, 2, 3, 4]
        """
        check_is_fitted(self)
        if (X is None) != (y is None):
            raise ValueError(
                "X and y go together: pass both, or neither for the training rows."
            )
        if X is None:
            X, targets = self._fit_X, self._training_targets()
        else:
            X = self._validate_X(X)
            targets = self._outputs_targets(y, X.shape[0])
        scores = path_self_influence(
            self.module_,
            self.trajectory_,
            X,
            targets,
            loss=self._influence_loss,
            **self._kernel_options(),
        )
        return check_finite_result(scores, what="The influence", dtype=self.dtype, X=X)

    #: The loss of influence's derivatives (``path_influence``'s ``loss``).
    _influence_loss = None

    def _outputs_targets(self, y, n_rows):
        """Labels or targets ``y`` as the fitted network's outputs see them.

        Shape (n_rows, O), checked against the outputs already fixed (a
        classifier's ``classes_``): what influence and a continued path
        (``partial_fit``, ``warm_start``) train or score against.
        """
        raise NotImplementedError

    def _training_targets(self):
        """The training rows' targets, kept by ``fit``; older saved files lack them."""
        targets = getattr(self, "_fit_targets", None)
        if targets is None:
            raise ValueError(
                f"This {type(self).__name__} was saved by a version that did not "
                "keep the training targets, which influence needs; fit it again."
            )
        return targets

    # -- persistence --------------------------------------------------------
    def __getstate__(self):
        # The module travels on the CPU, so that the pickle loads on any
        # machine, with the device it lived on beside it (__setstate__ puts
        # it back there when that device exists). On Python 3.11+
        # object.__getstate__ hands back the live __dict__ itself: edit a
        # copy, never the estimator being pickled.
        state = dict(super().__getstate__())
        module = state.get("module_")
        device = placement(module, None)[2] if module is not None else None
        if device is not None and device.type != "cpu":
            state["module_"] = copy.deepcopy(module).to("cpu")
            state["_module_device"] = str(device)
        return state

    def __setstate__(self, state):
        state = dict(state)
        device = state.pop("_module_device", None)
        super().__setstate__(state)
        if device is None:
            return
        try:
            resolve_device(device)
        except ValueError:
            warnings.warn(
                f"{type(self).__name__}: the network was pickled on {device!r}, "
                "which this machine does not have; it is loaded on the CPU, "
                "where predictions, kernels and decompositions now run.",
                UserWarning,
                stacklevel=2,
            )
        else:
            self.module_.to(device)
