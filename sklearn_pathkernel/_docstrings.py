"""Docstring fragments shared by the public classes, written once.

The estimators, the transformers and the kernel approximations document the
same parameters (the network and its training, ``normalize``), attributes and
references. Their class docstrings hold ``{parameters}``, ``{attributes}``,
``{references}`` and ``{normalize}`` placeholders, filled by
:func:`fill_docstring` when the class is defined.
"""

import textwrap

NORMALIZE_DOC = """\
"none" leaves ``K_path`` as it is. Its scale grows with
``learning_rate_init * n_steps``: the best ``C`` of ``SVC`` shrinks in
proportion, and the best ``alpha`` of ``KernelRidge`` grows. "mean_diagonal"
divides by the mean of ``K_path(x_i, x_i)`` over the training rows
(weighted by ``sample_weight``; taken from the training rows only, and
applied to new rows as well). "cosine"
divides each entry by ``sqrt(K_path(x, x) * K_path(x', x'))``, so that
every row has unit self-similarity. With either, the kernel's scale no
longer depends on how long the network trained, and one grid of ``C`` or
``alpha`` (e.g. ``np.logspace(-3, 3, 13)``) serves all training lengths."""

_PARAMETERS_DOC = (
    """
    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(100,)
        Widths of the default MLP's hidden layers; ``()`` gives a linear
        model. Ignored when ``module`` is given.
    activation : {"identity", "logistic", "tanh", "relu"}, default="tanh"
        Elementwise activation of the default MLP. Smooth activations make
        the kernel-machine decomposition converge fastest.
    module : torch.nn.Module or callable, default=None
        A network to train instead of the default MLP: an ``nn.Module``
        (copied at each ``fit``, so the object passed is never trained in
        place), or a factory ``module(n_features, n_outputs) -> nn.Module``
        (called with torch's global RNG temporarily seeded from
        ``random_state``, then restored). It must map (n_samples,
        n_features) to (n_samples, n_outputs) and treat rows independently
        (training-mode BatchNorm is refused; docs/design.md,
        section 11). It trains in the mode it is in (an ``nn.Module`` starts
        in training mode, dropout on, with masks seeded from
        ``random_state``); ``module_`` is then put in eval mode, in which
        predictions, kernels and decompositions are computed.
    input_shape : tuple of int, default=None
        The shape of one example for a ``module`` that takes images or
        sequences, e.g. ``(1, 8, 8)``: X stays 2-D, with ``n_features =
        prod(input_shape)`` columns (so Pipelines, cross-validation and the
        kernels work as for any estimator), and each block of rows reaches
        the module as ``(n_samples, *input_shape)``. An array of images
        ``imgs`` is passed as ``imgs.reshape(len(imgs), -1)``; X of more than
        two dimensions raises a ``ValueError``.
    tokens : bool, default=False
        X holds integer ids (tokens, categories) for a ``module`` that starts
        with ``nn.Embedding``: they reach it as int64 instead of floats. Ids
        must be whole non-negative numbers (integer arrays, or floats holding
        integers, as ``SVC`` passes them to a callable kernel), below
        ``2**24`` in float32; an id beyond an embedding table raises a
        ``ValueError`` naming the array. With ``input_shape`` too, each row
        of ids is reshaped.
    solver : {"sgd", "adam", "adamw"}, default="sgd"
        The update rule, as ``torch.optim`` writes it: "sgd" is (minibatch)
        gradient descent, with heavy-ball or Nesterov ``momentum``; "adam"
        is Adam with bias correction; "adamw" is Adam with decoupled weight
        decay ``alpha``. The names and the other parameters below are
        those of scikit-learn's ``MLPClassifier``, so its parameter dicts
        carry over; the defaults differ where the paper's setting needs it
        (MLP's are "adam", ``learning_rate_init=0.001``, ``momentum=0.9``
        and ``batch_size="auto"``; ours are plain full-batch gradient
        descent). "lbfgs" is refused: its line-search steps have no
        step-wise path kernel. Every solver has a path kernel and an exact
        decomposition (docs/design.md, section 12).
    learning_rate_init : float, default=0.1
        The step size ``eps`` (the initial one with a schedule).
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
        Step-size schedule, for ``solver="sgd"`` only (as MLP): "invscaling"
        sets ``eps = learning_rate_init / (t + 1) ** power_t`` after each
        epoch, ``t`` the rows seen so far; "adaptive" divides ``eps`` by 5
        whenever ``tol`` and ``n_iter_no_change`` would stop training, and
        stops once it is below 1e-6.
    power_t : float, default=0.5
        The exponent of "invscaling".
    momentum : float, default=0.0
        Heavy-ball momentum ``mu`` of ``solver="sgd"``, in [0, 1). A gradient
        then moves the parameters by about ``eps / (1 - mu)`` in all, which is
        its weight in the path kernel.
    nesterovs_momentum : bool, default=True
        Nesterov's momentum, when ``solver="sgd"`` and ``momentum > 0``.
    beta_1 : float, default=0.9
        Adam's decay rate of the first moment estimate, in [0, 1).
    beta_2 : float, default=0.999
        Adam's decay rate of the second moment estimate, in [0, 1).
    epsilon : float, default=1e-8
        Adam's guard in ``1 / (sqrt(v_hat) + epsilon)``.
    max_iter : int, default=200
        Number of epochs. With ``batch_size=None`` one epoch is one step.
    batch_size : int, "auto" or None, default=None
        Rows per step; None (or at least n_samples) is full-batch training,
        the setting of the paper's theorem; "auto" is ``min(200,
        n_samples)``, as for MLP.
    shuffle : bool, default=True
        Reshuffle the rows each epoch (minibatch training only).
    alpha : float, default=0.0
        L2 strength on all trainable parameters: the objective adds
        ``alpha / 2 * ||w||^2`` ("sgd", "adam"); with "adamw" it is the
        decoupled weight decay, each step multiplying ``w`` by
        ``1 - eps * alpha``. Zero keeps the kernel machine in its plainest
        form (no L2 term in the bias, Remark 4 of the paper).
    tol : float, default=1e-4
        Training stops when the epoch loss (with ``early_stopping``, the
        validation score) has not improved by ``tol`` for more than
        ``n_iter_no_change`` consecutive epochs (MLP's rule).
    n_iter_no_change : int, default=10
        See ``tol``.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the rows (stratified for a
        classifier), score them after each epoch (accuracy, R^2) and end
        with the parameters of the best epoch. The path ends there too, and
        the held-out rows never enter the kernel or the decomposition.
    validation_fraction : float, default=0.1
        The share held out by ``early_stopping``.
    record_every : int, default=1
        Keep the parameters every ``record_every`` steps. They take
        ``n_checkpoints * n_parameters * itemsize`` bytes (2.6 MB for the
        default MLP on 30 features over 200 steps in float32); the exact
        decomposition needs every step (1), the kernel visits only
        ``kernel_nodes`` of them.
    quadrature : {"left", "trapezoid", "simpson", "adaptive"}, default="simpson"
        How the kernel sums the path from a few of the kept parameters (its
        nodes, ``trajectory_.kernel_nodes()``), approximating the every-step
        kernel ``sum_t eps_t K_{w_t}``: weights exact for polynomials in the
        step of degree 0 ("left", the Riemann sum of ``record_every``),
        1 ("trapezoid") or 2 ("simpson"), with the final parameters as the
        last node. "adaptive" places trapezoid nodes where the tangent
        kernel on 8 training rows moved by more than ``adaptive_tol`` (a
        small cost at every step of training). On ``load_digits`` with a
        64-256-256-10 network, a tenth of 200 steps gives a kernel within
        3e-4 (simpson), 5e-4 (trapezoid) and 1.2e-2 (left) of the every-step
        one (docs/design.md, section 3).
    kernel_nodes : int, float or None, default=0.1
        How many nodes the kernel visits: a count (at least 2), a fraction
        of the steps (at least 2 nodes), or None for every kept checkpoint
        (with ``record_every=1`` the every-step kernel, whatever the rule).
        The kernel's cost is linear in it. Ignored by "adaptive".
    adaptive_tol : float, default=0.05
        The relative (Frobenius) movement of the probe kernel that makes a
        new node with ``quadrature="adaptive"``.
    trajectory_dir : str or os.PathLike, default=None
        Keep the recorded parameters and per-step records in memory-mapped
        files in this directory (created when missing; a path naming a file
        raises a ``ValueError``) rather than in memory; training then holds
        one vector at a time. The files are scratch, deleted with the
        trajectory; pickle and :func:`save` embed their contents. When None
        they are kept in memory up to 1 GiB, then moved to such files in the
        temporary directory.
    device : {"auto", "cpu", "cuda"} or torch.device, default="auto"
        Where training and the kernel run; "auto" takes a GPU when there is
        one. Asking for "cuda" without one raises a ``ValueError``.
    dtype : {"float32", "float64"}, default="float32"
        Precision of the network; kernels are accumulated in float64
        either way. Use float64 when exactness matters.
    engine : {"auto", "structured", "hooks", "jacobian", "ntk_vp"}, \
default="auto"
        How :meth:`kernel` does the Jacobian work: "structured" uses the
        outer-product form of Linear layers (the default MLP, or a user
        ``nn.Sequential`` of Linear layers and elementwise activations) and
        is by far the fastest; "hooks" applies a rule per layer to any
        module graph (conv, embedding, norms, attention, residuals);
        "jacobian" and "ntk_vp" work for any module. "auto" takes
        "structured" when the module qualifies, else "hooks" when every
        parametrised layer has a rule, else "jacobian".
    kernel_normalize : {"none", "mean_diagonal", "cosine"}, default="none"
        How :meth:`kernel` and :meth:`kernel_diagonal` scale the path kernel.
"""
    + textwrap.indent(NORMALIZE_DOC, " " * 8)
    + """
    working_memory : float, default=None
        Budget in MiB for one block of rows in :meth:`kernel`;
        scikit-learn's ``working_memory`` setting when None. The result,
        ``n_X * n_Y`` float64 numbers, comes on top.
    n_jobs : int, default=None
        Blocks of :meth:`kernel`, :meth:`kernel_diagonal`, :meth:`decompose`
        and of ``PathKernelFeatures`` run as joblib tasks (one per block of
        rows and checkpoint), threads unless a ``joblib.parallel_config``
        chooses another backend, such as dask on a cluster; the results are
        bit-identical whatever runs them. None runs one task at a time with
        all of torch's threads.
    random_state : int, RandomState instance or None, default=None
        For the default MLP, the numbers scikit-learn's MLP draws, from the
        same ``RandomState`` in the same order (the initial weights, early
        stopping's split, each epoch's shuffle), so an int gives MLP's
        start and batches. A user ``module``'s initialisation, dropout and
        shuffling are seeded from it through torch, the global torch RNG
        restored after fit. An int gives bit-identical predictions and
        kernels on the CPU.
    verbose : int, default=0
        Print the loss after each epoch, and how :meth:`kernel` runs (engine,
        blocks), when positive.
    warm_start : bool, default=False
        MLP's parameter, accepted so that its parameter dicts carry over;
        True raises a ``ValueError`` at fit: continuing from the previous
        fit would have to extend the recorded path, which is not supported
        yet. Each fit starts from a new initialisation.
    max_fun : int, default=15000
        MLP's budget of loss evaluations for ``solver="lbfgs"``, which is
        refused (see ``solver``): accepted so that MLP's parameter dicts
        carry over, and otherwise unused.
"""
)

_ATTRIBUTES_DOC = """
    module_ : torch.nn.Module
        The trained network.
    trajectory_ : Trajectory
        The recorded path: checkpoints, their weights, and every step's
        batch and loss derivatives.
    loss_curve_ : list of float
        The objective at each epoch (weighted mean over its steps, before
        each update, including the L2 term).
    best_loss_ : float or None
        The lowest epoch loss; None with ``early_stopping``.
    validation_scores_ : list of float or None
        With ``early_stopping``, the score on the held-out rows after each
        epoch; None otherwise.
    best_validation_score_ : float or None
        The best of ``validation_scores_``; the network and its path end at
        that epoch. None without ``early_stopping``.
    n_iter_ : int
        Number of epochs run.
    loss_ : float or None
        The last epoch's loss, ``loss_curve_[-1]``, as MLP's; None when
        training diverged before an epoch finished.
    t_ : int
        Training rows seen, as MLP counts them: ``n_iter_`` times the number
        of training rows (without those ``early_stopping`` held out).
    coefs_ : list of ndarray
        MLP's layout of the default network's weights, one per layer:
        ``coefs_[i]``, of shape (n_in, n_out), is the ``i``-th ``Linear``
        layer's ``weight.T``, in the network's dtype. Read from ``module_``
        each time, as copies: editing them leaves the network as it is.
        Only for the default MLP, or a ``module`` of that form (an
        ``nn.Sequential`` of biased ``Linear`` layers separated by one of
        the ``activation`` functions);
        reading them raises an ``AttributeError`` for any other network.
    intercepts_ : list of ndarray
        The same for the biases: ``intercepts_[i]`` has shape (n_out,).
    n_layers_ : int
        Layers as MLP counts them, the input and output included:
        ``len(hidden_layer_sizes) + 2``. Only where ``coefs_`` is.
    n_outputs_ : int
        Width of the network's output.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during fit, when X has string column names.
"""


_REFERENCES_DOC = """
References
----------
P. Domingos, "Every Model Learned by Gradient Descent Is Approximately a
Kernel Machine", arXiv:2012.00152, 2020.
"""


# The ``normalize`` parameter of the transformers and of the features.
_NORMALIZE_PARAMETER_DOC = (
    """
normalize : {"none", "mean_diagonal", "cosine"} or None, default=None
    How the path kernel is scaled; None takes the fitted estimator's
    ``kernel_normalize`` ("none" unless set).
"""
    + textwrap.indent(NORMALIZE_DOC, " " * 4)
    + "\n"
)


def fill_docstring(cls):
    """Fill the shared fragments into a class docstring, written once here."""
    fragments = {
        "parameters": _PARAMETERS_DOC,
        "attributes": _ATTRIBUTES_DOC,
        "references": _REFERENCES_DOC,
        "normalize": _NORMALIZE_PARAMETER_DOC,
    }
    cls.__doc__ = cls.__doc__.format(
        **{
            name: textwrap.indent(textwrap.dedent(text).strip("\n"), "    ").lstrip()
            for name, text in fragments.items()
        }
    )
    return cls
