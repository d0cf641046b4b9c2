"""Influence of training rows along the path: TracIn in the path kernel's terms.

The TracIn score (Pruthi et al., 2020) of a training row ``(x_i, y_i)`` on a
labelled row ``(x, y)`` sums, over checkpoints, the learning rate times the
inner product of the two rows' loss gradients. Written with the loss
derivatives ``g = dl(y, f)/df`` at the network's outputs, that is the path
kernel weighted by them (docs/design.md, section 4, "Influence")::

    influence(x, x_i) = sum_k weight_k g_k(x, y)^T K_k(x, x_i) g_k(x_i, y_i)

over the kernel nodes ``k`` (``Trajectory.kernel_nodes()``: the quadrature of
``sum_t p_t``), each ``K_k`` the ``O x O`` tangent kernel in the node's
metric for Adam. Each row's ``g`` is folded into its engine state
(``Engine.folded_state``), so a pair costs what one output of the traced kernel
costs and no ``O x O`` block is formed; the self-influence
``influence(x_i, x_i)`` costs what ``path_kernel_diagonal`` does.

The rows travel through the kernels' blocked loops (``kernel_sum``,
``diagonal_sum``) as integer handles: :class:`_FoldedRows` looks the rows
and their targets up, builds the engine states at a checkpoint, computes the
rows' loss derivatives there and the engine's state of ``g . f``.
"""

import numpy as np
import torch

from .._kernels._path import diagonal_sum, kernel_engine, kernel_points, kernel_sum
from .._kernels._rows import kernel_rows, output_width
from .._model._network import in_evaluation_mode, placement
from .._training._losses import (
    BINARY_LOGISTIC,
    POISSON,
    SOFTMAX_CROSS_ENTROPY,
    SQUARED_ERROR,
)

#: The losses ``loss=`` names: per-row ``dl/df`` for ``O`` outputs.
LOSSES = ("squared_error", "log_loss", "binary_log_loss", "poisson")


@in_evaluation_mode
def path_influence(
    module,
    trajectory,
    X_train,
    Y_train,
    X=None,
    Y=None,
    *,
    loss,
    parameter_names=None,
    engine="auto",
    working_memory=None,
    device=None,
    n_jobs=None,
    verbose=0,
):
    """TracIn influence of each training row on the loss at each labelled row.

    ``influence[a, i] = sum_k weight_k g_k(x_a, y_a)^T K_k(x_a, x_i)
    g_k(x_i, y_i)`` over the kernel nodes of ``trajectory`` (weights
    ``p_t`` summed by its quadrature; Adam's nodes in their metric), with
    ``g = dl(y, f)/df`` the loss derivative at the outputs at that node.
    Positive: a gradient step on ``x_i`` lowered the loss at ``x_a`` (a
    proponent); negative, raised it (an opponent).

    It is Captum's ``TracInCP.influence`` on the same checkpoints with
    ``learning_rate = weight_k``, for the per-example loss ``l(y, f)``
    unreduced and unweighted: ``loss_fn=nn.CrossEntropyLoss(reduction="sum")``
    for "log_loss" with several outputs, ``nn.BCEWithLogitsLoss(
    reduction="sum")`` with one, and for "squared_error" a ``loss_fn`` of
    ``0.5 * ((f - y) ** 2).sum()`` (``nn.MSELoss(reduction="sum")`` has
    twice the gradient: 4 times this influence); ``nn.BCEWithLogitsLoss(
    reduction="sum")`` for "binary_log_loss" and ``nn.PoissonNLLLoss(
    reduction="sum")`` (``log_input=True``) for "poisson". Training itself takes the
    mean ``sum_i c_{i,t} l_i`` (``c`` the batch weights, ``1 / |B_t|`` without
    sample weights): the step a row actually took is ``c_{i,t}`` times its
    TracIn gradient (docs/design.md, section 4).

    Parameters
    ----------
    module : torch.nn.Module
        The module the trajectory was recorded on (e.g. ``est.module_``).
    trajectory : Trajectory
        The recorded path (e.g. ``est.trajectory_``).
    X_train : array-like or torch.Tensor of shape ``(n_train, *input_shape)``
        The training rows (or any rows whose influence is wanted).
    Y_train : array-like of shape (n_train,) or (n_train, O)
        Their targets as the network's outputs see them: values for
        "squared_error", counts for "poisson", 0/1 for "log_loss" with one
        output, one-hot rows with several, 0/1 per output (indicator rows)
        for "binary_log_loss".
    X : array-like or torch.Tensor of shape ``(n_X, *input_shape)``, default=None
        The labelled rows influenced; None means ``X_train`` (then the result
        is exactly symmetric).
    Y : array-like of shape (n_X,) or (n_X, O), default=None
        Their targets; given exactly when ``X`` is.
    loss : {"squared_error", "log_loss", "binary_log_loss", "poisson"} or callable
        The per-row loss whose derivatives weigh the kernel:
        ``0.5 * ||f - y||^2``; the logistic (one output) or softmax
        cross-entropy loss on the logits; the logistic loss on each output
        (multilabel); or the Poisson loss ``exp(f) - y f`` on the log of
        the mean (``dl/df = exp(f) - y``). A callable
        ``gradient(outputs, targets) -> dl/df`` takes and returns
        ``(n, O)`` tensors.
    parameter_names : list of str, default=None
        The parameters whose gradients count, e.g. the last layer's only
        (as Captum's ``TracInCPFast``); the others are held at each node's
        values. None: all of the trajectory's.
    engine : {"auto", "structured", "hooks", "jacobian", "ntk_vp"}, default="auto"
        How the Jacobian work is done; see ``tangent_kernel``.
    working_memory : float, default=None
        Budget in MiB for one block of rows; see ``tangent_kernel``.
    device : str or torch.device, default=None
        Where to compute; the module's device when None.
    n_jobs : int, default=None
        Blocks of rows and nodes run as joblib tasks; see ``tangent_kernel``.
    verbose : int, default=0
        Say which engine runs and show a progress bar.

    Returns
    -------
    influence : ndarray of float64, shape (n_X, n_train)

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_pathkernel import PathKernelRegressor, path_influence
    >>> X, y = load_diabetes(return_X_y=True)
    >>> X, y = scale(X), scale(y)
    >>> est = PathKernelRegressor((16,), max_iter=20, random_state=0).fit(X, y)
    >>> scores = path_influence(est.module_, est.trajectory_, X, y, X[:3], y[:3],
    ...                         loss="squared_error")
    >>> scores.shape
    (3, 442)
    >>> last = path_influence(est.module_, est.trajectory_, X, y, X[:3], y[:3],
    ...                       loss="squared_error",
    ...                       parameter_names=["2.weight", "2.bias"])
    >>> last.shape
    (3, 442)
    """
    if (X is None) != (Y is None):
        raise ValueError(
            "X and Y go together: pass both (labelled rows influenced) or "
            "neither (the training rows influence each other)."
        )
    folded, points = _bind(
        module,
        trajectory,
        [("X_train", X_train, Y_train)] + ([] if X is None else [("X", X, Y)]),
        loss=loss,
        parameter_names=parameter_names,
        engine=engine,
        device=device,
    )
    train, *query = folded.handles
    return kernel_sum(
        folded,
        points,
        query[0] if query else train,
        train if query else None,
        n_outputs=1,
        network_dtype=folded.dtype,
        working_memory=working_memory,
        n_jobs=n_jobs,
        verbose=verbose,
    )


@in_evaluation_mode
def path_self_influence(
    module,
    trajectory,
    X,
    Y,
    *,
    loss,
    parameter_names=None,
    engine="auto",
    working_memory=None,
    device=None,
    n_jobs=None,
):
    """Each labelled row's influence on itself, without the ``n x n`` matrix.

    ``sum_k weight_k g_k(x, y)^T K_k(x, x) g_k(x, y)``: the diagonal of
    :func:`path_influence` on ``X``, at the cost of ``path_kernel_diagonal``
    (one engine state per row and node, no product between rows). Large
    values flag rows whose loss the path kept pushing on: mislabelled or
    atypical ones (TracIn's self-influence; Captum's
    ``TracInCP.self_influence`` with the conventions of
    :func:`path_influence`).

    Parameters
    ----------
    module : torch.nn.Module
        The module the trajectory was recorded on (e.g. ``est.module_``).
    trajectory : Trajectory
        The recorded path (e.g. ``est.trajectory_``).
    X : array-like or torch.Tensor of shape ``(n, *input_shape)``
    Y : array-like of shape (n,) or (n, O)
        Targets as the network's outputs see them; see :func:`path_influence`.
    loss : {"squared_error", "log_loss", "binary_log_loss", "poisson"} or callable
        See :func:`path_influence`.
    parameter_names : list of str, default=None
        The parameters whose gradients count; None: all of the trajectory's.
    engine : {"auto", "structured", "hooks", "jacobian", "ntk_vp"}, default="auto"
        How the Jacobian work is done; see ``tangent_kernel``.
    working_memory : float, default=None
        Budget in MiB for one tile of rows' engine states.
    device : str or torch.device, default=None
        Where to compute; the module's device when None.
    n_jobs : int, default=None
        Blocks of rows and nodes run as joblib tasks; bit-identical results.

    Returns
    -------
    self_influence : ndarray of float64, shape (n,)
        Non-negative.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_pathkernel import (
    ...     PathKernelRegressor, path_influence, path_self_influence
    ... )
    >>> X, y = load_diabetes(return_X_y=True)
    >>> X, y = scale(X)[:50], scale(y)[:50]
    >>> est = PathKernelRegressor((16,), max_iter=20, random_state=0).fit(X, y)
    >>> own = path_self_influence(est.module_, est.trajectory_, X, y,
    ...                           loss="squared_error")
    >>> full = path_influence(est.module_, est.trajectory_, X, y,
    ...                       loss="squared_error")
    >>> bool(np.allclose(own, np.diag(full)))
    True
    """
    folded, points = _bind(
        module,
        trajectory,
        [("X", X, Y)],
        loss=loss,
        parameter_names=parameter_names,
        engine=engine,
        device=device,
    )
    return diagonal_sum(
        folded,
        points,
        folded.handles[0],
        bytes_per_row=folded.bytes_per_row(1, folded.dtype.itemsize),
        working_memory=working_memory,
        n_jobs=n_jobs,
    )


def _bind(module, trajectory, labelled, *, loss, parameter_names, engine, device):
    """``(folded rows, kernel points)``: rows placed and the engine bound once.

    ``labelled`` lists ``(name, rows, targets)``; the first sets the row
    shape the others must share.
    """
    gradient = loss_gradient(loss)
    module, dtype, device = placement(module, device)
    placed = {"module": module, "dtype": dtype, "device": device}
    name, X_first, _ = labelled[0]
    first = kernel_rows(X_first, name=name, **placed)
    rows = [first] + [
        kernel_rows(X, name=n, like=first, like_name=name, **placed)
        for n, X, _ in labelled[1:]
    ]
    with torch.no_grad():
        n_outputs = output_width(module, first, name=name)
    targets = [
        influence_targets(Y, len(X), n_outputs, name=n.replace("X", "Y"))
        for (n, _, Y), X in zip(labelled, rows)
    ]
    names = _parameter_names(trajectory, parameter_names)
    points = kernel_points(trajectory)
    bound = kernel_engine(engine, module, names, points, example=first[:1])
    folded = _FoldedRows(
        bound=bound,
        module=module,
        rows=rows,
        targets=[torch.as_tensor(t, dtype=dtype, device=device) for t in targets],
        gradient=gradient,
        n_outputs=n_outputs,
        dtype=dtype,
    )
    return folded, points


def loss_gradient(loss):
    """``gradient(outputs, targets) -> dl/df`` for ``loss``; the one check of it."""
    if callable(loss):
        return loss
    if loss == "squared_error":
        return SQUARED_ERROR.gradient
    if loss == "log_loss":
        return _log_loss_gradient
    if loss == "binary_log_loss":
        return BINARY_LOGISTIC.gradient
    if loss == "poisson":
        return POISSON.gradient
    raise ValueError(
        f"loss must be one of {list(LOSSES)} or a callable gradient(outputs, "
        f"targets); got {loss!r} instead."
    )


def _log_loss_gradient(outputs, targets):
    """The logistic loss's ``dl/df`` for one logit, the softmax's for several."""
    if outputs.shape[1] == 1:
        return BINARY_LOGISTIC.gradient(outputs, targets)
    return SOFTMAX_CROSS_ENTROPY.gradient(outputs, targets)


def influence_targets(Y, n_rows, n_outputs, *, name="Y"):
    """``Y`` as a finite float64 ``(n_rows, n_outputs)`` array; clear errors.

    Examples
    --------
    >>> from sklearn_pathkernel._explain._influence import influence_targets
    >>> influence_targets([1, 2], 2, 1).tolist()
    [[1.0], [2.0]]
    """
    try:
        values = np.asarray(
            Y.detach().cpu() if isinstance(Y, torch.Tensor) else Y, dtype=np.float64
        )
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name} must hold numbers (targets as the network's outputs see them: "
            f"values, 0/1 or one-hot rows); got {error}"
        ) from error
    if values.ndim == 1 and n_outputs == 1:
        values = values.reshape(-1, 1)
    if values.shape != (n_rows, n_outputs):
        raise ValueError(
            f"{name} must have shape ({n_rows}, {n_outputs}): one target per row "
            f"and network output; got shape {values.shape}."
        )
    if not np.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or infinity.")
    return values


def _parameter_names(trajectory, parameter_names):
    """The trained subset: the trajectory's names, or a checked list of them."""
    names = trajectory.parameter_names
    if parameter_names is None:
        return names
    if isinstance(parameter_names, str) or not all(
        isinstance(n, str) for n in parameter_names
    ):
        raise ValueError(
            f"parameter_names must be a list of parameter names; got "
            f"{parameter_names!r}."
        )
    unknown = [n for n in parameter_names if n not in names]
    if unknown or not parameter_names:
        raise ValueError(
            f"parameter_names must be a non-empty subset of the trajectory's "
            f"parameters {names}; got {list(parameter_names)!r}."
        )
    return [n for n in names if n in set(parameter_names)]


class _FoldedRows:
    """An engine over row handles whose states are loss-gradient outputs.

    The blocked loops see integer handles ``(n,)``: ``handles[k]`` of the
    labelled row sets in ``rows``, numbered on from each other, so that a
    tile of handles (always within one set) names its rows and targets.
    :meth:`state` builds the engine's state of those rows at a node, the
    rows' outputs there, their ``g`` and the folded state (``Engine.folded_state``);
    contractions are then traced, the one output's value.
    """

    def __init__(self, *, bound, module, rows, targets, gradient, n_outputs, dtype):
        self.bound = bound
        self.module = module  # Shared sizes tasks by it
        self.name = f"{bound.name}, folded with the loss derivatives"
        self.rows, self.targets = rows, targets
        self.gradient, self.n_outputs, self.dtype = gradient, n_outputs, dtype
        starts = np.cumsum([0] + [len(r) for r in rows])
        self.starts = starts[:-1]
        # One range over every set, each set a view of it: a tile's first
        # handle is then its offset in that storage, read without waiting
        # for the device (int() of a CUDA tensor would, at every tile).
        self._all = torch.arange(int(starts[-1]), device=rows[0].device)
        self.handles = [self._all[a:b] for a, b in zip(starts[:-1], starts[1:])]

    def _lookup(self, handles):
        """The rows and targets a tile of handles stands for."""
        storage = self._all.untyped_storage().data_ptr()
        if handles.untyped_storage().data_ptr() == storage:
            first = handles.storage_offset()
        else:  # not a view of the handles (a copy): read its first value
            first = int(handles[0])
        k = int(np.searchsorted(self.starts, first, side="right")) - 1
        a = first - int(self.starts[k])
        b = a + handles.shape[0]
        return self.rows[k][a:b], self.targets[k][a:b]

    def bytes_per_row(self, n_outputs, itemsize):
        # The engine's state of all O outputs exists before it is folded.
        return self.bound.bytes_per_row(self.n_outputs, itemsize)

    def state(self, parameters, handles, metric=None):
        X, targets = self._lookup(handles)
        # g from the outputs of the engine's own forward pass.
        return self.bound.folded_state(
            parameters, X, lambda f: self.gradient(f, targets), metric=metric
        )

    def static(self, handles_x, handles_y):
        return self.bound.static(self._lookup(handles_x)[0], self._lookup(handles_y)[0])

    def contract(self, state_x, state_y, trace, static=None):
        return self.bound.contract(state_x, state_y, True, static)

    def diagonal(self, state, handles):
        return self.bound.diagonal(state, self._lookup(handles)[0])
