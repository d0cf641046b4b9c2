"""Continuing a recorded path: ``partial_fit`` and ``warm_start`` (design section 13).

A continuation extends the path instead of starting a new one: the same update
rule, network and optimiser state, the new steps appended and the call's rows
joined to the kernel machine's. What lives here: the checks that refuse a
continuation that would make the path two paths, the optimiser's state kept
and loaded, where the call's rows go among the stored ones, the records
joined, and the steps taken back off the path when a continuation fails.
The estimators (``_base.py``) call these with what they hold.
"""

from contextlib import contextmanager

import numpy as np
import torch

from .._model._network import mlp_linears

# A continuation's rows are looked for among the stored ones at no more than
# this many places where their first row occurs (identical rows repeat).
MAX_ROW_MATCHES = 64


def copy_optimizer_state(state, device=None):
    """A copy of an optimiser's per-parameter state, its tensors cloned.

    Training changes the state in place (momentum buffers, moments): the
    estimator's own stays as the path left it. Faster than ``deepcopy``.
    ``device`` None keeps each tensor where it is.
    """
    return {
        index: {
            key: value.detach().to(device, copy=True)
            if torch.is_tensor(value)
            else value
            for key, value in entries.items()
        }
        for index, entries in state.items()
    }


def check_continuable(
    owner, trajectory, module, settings, *, has_targets, optimizer_state
):
    """Refuse, naming them, changes that would make the path two paths.

    The recorded steps fix the update rule, the recording and the network; a
    continuation must keep them. ``learning_rate_init`` and its schedule may
    change: every step records its own size.

    Parameters
    ----------
    owner : str
        The estimator's class name, for the messages.
    trajectory : Trajectory
        The recorded path.
    module : torch.nn.Module
        The network at the path's end (``module_``).
    settings : dict
        What the estimator's parameters say now: ``solver`` (a ``Solver``),
        ``record_every``, ``quadrature``, ``kernel_nodes``, ``dtype`` (a torch
        dtype) and ``hidden_widths`` (the default MLP's hidden widths; None
        for a user module, whose architecture is not checked).
    has_targets : bool
        Whether the training targets were kept (older files lack them).
    optimizer_state : dict or None
        The kept state of the optimiser (``_optimizer_state``).
    """
    changed = changed_settings(trajectory, module, settings)
    if changed:
        raise ValueError(
            f"{owner} cannot continue its path (warm_start=True or partial_fit): "
            f"{', '.join(changed)} changed since it was recorded, and one path "
            "has one update rule and one network. Set them back, or fit a new "
            "path with warm_start=False."
        )
    why = None
    if not has_targets:
        why = "was saved by a version that did not keep the training targets"
    elif not (trajectory.solver.plain or optimizer_state is not None):
        why = (
            "did not keep its optimiser's state (momentum buffers, Adam's "
            "moments) at the path's end: training diverged and stepped back, "
            "early_stopping ended the path before its last epoch, or an "
            "older version saved it"
        )
    if why is not None:
        raise ValueError(
            f"This {owner} {why}, so its path cannot be continued with the same "
            "update rule. Fit a new path (warm_start=False)."
        )


def changed_settings(trajectory, module, settings):
    """The names of what ``settings`` (see :func:`check_continuable`) changed.

    In a fixed order, the update rule first, so that a message lists them so.
    """
    same = [
        (
            "the update rule (solver, momentum, nesterovs_momentum, beta_1, "
            "beta_2, epsilon, alpha)",
            settings["solver"] == trajectory.solver,
        ),
        ("record_every", settings["record_every"] == trajectory.record_every),
        ("quadrature", settings["quadrature"] == trajectory.quadrature),
        ("kernel_nodes", settings["kernel_nodes"] == trajectory._kernel_nodes),
        ("dtype", settings["dtype"] == next(module.parameters()).dtype),
        ("hidden_layer_sizes", same_hidden_widths(module, settings["hidden_widths"])),
    ]
    return [what for what, unchanged in same if not unchanged]


def same_hidden_widths(module, hidden_widths):
    """Whether the default MLP ``module`` still has ``hidden_widths``.

    True when ``hidden_widths`` is None (a user module) or ``module`` is not
    an MLP of Linear layers: there is nothing to compare.
    """
    linears = mlp_linears(module) if hidden_widths is not None else None
    if linears is None:
        return True
    return [layer.out_features for layer in linears[:-1]] == list(hidden_widths)


def check_same_outputs(y, n_outputs, owner):
    """A continued regressor keeps its network's outputs: ``y``'s columns.

    Parameters
    ----------
    y : ndarray of shape (n,) or (n, n_targets)
        The call's targets.
    n_outputs : int
        The network's outputs (``n_outputs_``).
    owner : str
        The estimator's class name, for the message.
    """
    got = 1 if np.ndim(y) == 1 else y.shape[1]
    if got != n_outputs:
        raise ValueError(
            f"y has {got} output(s) (columns), but this {owner} was trained "
            f"with {n_outputs}: a continued path (warm_start=True, partial_fit) "
            "keeps its network's outputs."
        )


def resume_optimizer(optimizer, state, trajectory):
    """Load a path's kept ``state`` into the new ``optimizer``, to go on.

    A copy of it (training changes it in place), so that momentum buffers and
    Adam's moments and step count go on as if training had never stopped;
    and the last step's size as the rate, which the state may be scaled by
    (the velocity form keeps ``-v / eps`` in torch's buffer). Nothing when
    ``state`` is None (plain sgd keeps none).
    """
    if state is None:
        return
    saved = optimizer.state_dict()
    saved["state"] = copy_optimizer_state(state)
    if trajectory.n_steps:
        saved["param_groups"][0]["lr"] = float(trajectory.step_sizes[-1])
    optimizer.load_state_dict(saved)


def state_at_path_end(result, optimizer):
    """The optimiser's state to keep (on the CPU) for the next continuation.

    None when it no longer belongs to the path's end: training diverged and
    stepped back (``result.diverged``), or early stopping ended the path at
    an epoch before the last one; a continuation of a solver with state is
    then refused (:func:`check_continuable`).
    """
    scores = result.validation_scores or []
    rewound = bool(scores) and int(np.argmax(scores)) != len(scores) - 1
    if result.diverged or rewound:
        return None
    return copy_optimizer_state(optimizer.state_dict()["state"], device="cpu")


def row_offset(stored, rows):
    """Where a continuation's rows start among the kernel machine's rows.

    Rows already held, in the same order with the same targets and weights
    (a warm start on the same data, or a loop of partial_fit calls over the
    same batches), are the same training rows: their start, so nothing is
    duplicated. Else the number of stored rows: appended.

    Parameters
    ----------
    stored, rows : tuple of (X, sample_weight, targets)
        The kernel machine's rows, and the call's.

    Returns
    -------
    offset : int

    Examples
    --------
    >>> import numpy as np
    >>> X, w, t = np.arange(8.0).reshape(4, 2), np.ones(4), np.zeros((4, 1))
    >>> row_offset((X, w, t), (X[1:3], w[1:3], t[1:3]))
    1
    >>> row_offset((X, w, t), (X[1:3], w[1:3], t[1:3] + 1))  # other targets
    4
    """
    (stored_X, stored_weight, stored_targets), (X, weight, targets) = stored, rows
    n = X.shape[0]
    if n > stored_X.shape[0]:
        return stored_X.shape[0]
    candidates = stored_X[: stored_X.shape[0] - n + 1]
    starts = np.flatnonzero((candidates == X[0]).all(axis=1))
    for start in starts[:MAX_ROW_MATCHES]:
        block = slice(start, start + n)
        if (
            np.array_equal(stored_X[block], X)
            and np.array_equal(stored_targets[block], targets)
            and np.array_equal(stored_weight[block], weight)
        ):
            return int(start)
    return stored_X.shape[0]


def joined_rows(stored, rows, offset):
    """The kernel machine's rows after a continuation: ``(X, weight, targets)``.

    ``rows`` appended to ``stored`` when ``offset`` (:func:`row_offset`) is
    past them; else they are held already and ``stored`` stays.
    """
    if offset != stored[0].shape[0]:
        return stored
    return tuple(np.concatenate([old, new]) for old, new in zip(stored, rows))


def joined_history(previous, result):
    """The fitted records with a continuation's ``result`` appended.

    ``previous`` has the keys this returns (``loss_curve``, ``best_loss``,
    ``validation_scores``, ``best_validation_score``, ``n_iter``), from the
    estimator's attributes; curves and epochs add up, the bests are the best
    over all calls.
    """
    scores = previous["validation_scores"]
    if result.validation_scores is not None:
        scores = (scores or []) + result.validation_scores
    best = [previous["best_validation_score"], result.best_validation_score]
    losses = [v for v in (previous["best_loss"], result.best_loss) if v is not None]
    return {
        "loss_curve": previous["loss_curve"] + result.loss_curve,
        "best_loss": min(losses) if losses else None,
        "validation_scores": scores,
        "best_validation_score": max((v for v in best if v is not None), default=None),
        "n_iter": previous["n_iter"] + result.n_iter,
    }


@contextmanager
def extending(trajectory, mark, offset):
    """Around a continuation's training: its steps joined to the path, or undone.

    When the block finishes, the new steps (from ``mark``, the path's end
    before them) index the call's rows ``offset`` further on, where the
    kernel machine holds them. When it does not (an error, Ctrl-C), the path
    is rewound to ``mark``: the trajectory is extended in place, which
    restoring the estimator's attributes cannot undo. Nothing when ``mark``
    is None (a new path).
    """
    if mark is None:
        yield
        return
    try:
        yield
        trajectory._shift_rows(mark[0], offset)
    except BaseException:
        trajectory._rewind(mark)
        raise
