"""Stacks of checkpoints: one batched operation for several checkpoints.

On a GPU every operation is a kernel launch. The kernels, the diagonal, the
features and the decomposition run the same engine code at every
checkpoint; where that code is explicit tensor code (the structured engine,
docs/design.md, section 7.3) ``torch.func.vmap`` runs it once for a stack of
checkpoints whose parameters (and metrics, and random factors) are stacked
along a new first axis. This module is the one place that decides:

- **whether and how much to stack** (:func:`stack_size`): only under the
  device policy (a CUDA device, or ``device_policy`` on the CPU); as many
  checkpoints as a quarter of ``device_budget`` holds of what one
  checkpoint's task keeps alive, at most :data:`MAX_STACKED_CHECKPOINTS`;
  after a CUDA out-of-memory error the stack and its budget are divided by
  how much the tile shrank, so a retry stacks fewer checkpoints in less
  memory;
- **which checkpoints go together** (:func:`consecutive_groups`): runs of
  consecutive checkpoints, in order, with equal shapes where asked;
- **how a stack travels and runs** (:func:`stack_mappings`,
  :func:`stacked_call`);
- **how its parts are summed** (:func:`weighted_sum`, :func:`add_weighted`):
  the stack's float64 weights against its parts in one product, in float64.

The CPU keeps one task per checkpoint and its bits: :func:`stack_size` is 1
there, and callers keep their single-checkpoint code for it.
"""

import torch

from ._blocking import device_budget

#: The most checkpoints one task stacks.
MAX_STACKED_CHECKPOINTS = 16


def stack_size(device, per_checkpoint, n_checkpoints, *, shrink=1):
    """How many checkpoints one task stacks: 1 off the device policy.

    Parameters
    ----------
    device : torch.device or None
        Where the work runs; only a CUDA device (or ``device_policy``) stacks.
    per_checkpoint : int
        Bytes one checkpoint's task keeps alive at once (states, returned
        parts, temporaries, random factors).
    n_checkpoints : int
        Checkpoints there are; the answer never exceeds it.
    shrink : int, default=1
        By how much the tile shrank after out-of-memory errors (a power of
        two): the stack's budget and the stack itself are divided by it, so
        a retry stacks fewer checkpoints, in less memory, even where the
        smaller tile saves nothing (a tile larger than the rows there are).

    Returns
    -------
    size : int
        At least 1; at most ``MAX_STACKED_CHECKPOINTS // shrink`` and
        ``n_checkpoints // shrink`` (unless 1), with ``size *
        per_checkpoint`` within a quarter of ``device_budget`` divided by
        ``shrink``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._compute._blocking import device_policy
    >>> from sklearn_pathkernel._compute._stacks import stack_size
    >>> cpu = torch.device("cpu")
    >>> stack_size(cpu, 1000, 50)  # the CPU: one checkpoint per task
    1
    >>> with device_policy(2**20):  # 128 kB for the stack
    ...     stack_size(cpu, 10_000, 50), stack_size(cpu, 10, 50)
    (13, 16)
    >>> with device_policy(2**20):
    ...     stack_size(cpu, 10_000, 50, shrink=2), stack_size(cpu, 10, 50, shrink=4)
    (6, 4)
    """
    budget = device_budget(device)
    if budget is None or n_checkpoints <= 1:
        return 1
    shrink = max(1, int(shrink))
    fits = budget // 4 // max(1, int(per_checkpoint))
    return int(max(1, min(n_checkpoints, MAX_STACKED_CHECKPOINTS, fits) // shrink))


def consecutive_groups(items, size, key=None):
    """Runs of at most ``size`` consecutive items, with equal ``key(item)``.

    Examples
    --------
    >>> from sklearn_pathkernel._compute._stacks import consecutive_groups
    >>> consecutive_groups([1, 2, 3, 4, 5], 2)
    [[1, 2], [3, 4], [5]]
    >>> consecutive_groups([2, 2, 3, 3, 3], 2, key=lambda x: x)
    [[2, 2], [3, 3], [3]]
    """
    groups = []
    for item in items:
        label = None if key is None else key(item)
        if groups and len(groups[-1][1]) < size and groups[-1][0] == label:
            groups[-1][1].append(item)
        else:
            groups.append((label, [item]))
    return [group for _, group in groups]


def stack_mappings(mappings):
    """Name -> tensor mappings as one mapping of stacked tensors (None: None).

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._compute._stacks import stack_mappings
    >>> stacked = stack_mappings([{"w": torch.zeros(3)}, {"w": torch.ones(3)}])
    >>> stacked["w"].shape
    torch.Size([2, 3])
    >>> stack_mappings([None, None]) is None
    True
    """
    if mappings[0] is None:
        return None
    return {name: torch.stack([m[name] for m in mappings]) for name in mappings[0]}


def stacked_call(function, *stacked):
    """``function`` of each checkpoint of a stack at once (``torch.func.vmap``).

    Each argument is stacked along its first axis, or None (then passed as
    None to every checkpoint, e.g. no metric). What ``function`` returns
    comes back with the stack's axis first.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._compute._stacks import stacked_call
    >>> stacked_call(lambda w, m: w * 2, torch.arange(3.0), None)
    tensor([0., 2., 4.])
    """
    in_dims = tuple(None if s is None else 0 for s in stacked)
    return torch.func.vmap(function, in_dims=in_dims)(*stacked)


def weighted_sum(weights, parts):
    """``sum_k weights[k] * parts[k]`` in float64, one product for the stack.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._compute._stacks import weighted_sum
    >>> weighted_sum(torch.tensor([1.0, 0.5], dtype=torch.float64),
    ...              torch.tensor([[2.0, 4.0], [2.0, 4.0]]))
    tensor([3., 6.], dtype=torch.float64)
    """
    return torch.tensordot(weights.to(parts.device), parts.double(), dims=1)


def add_weighted(target, part, weight):
    """``target += weight * part``: one checkpoint's part, or a stack's.

    ``weight`` a float: one checkpoint, added with ``alpha``. A float64
    tensor of one weight per checkpoint: the stack's parts (stack axis
    first) weighted and summed in float64 in one product
    (:func:`weighted_sum`).

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._compute._stacks import add_weighted
    >>> target = torch.zeros(2, dtype=torch.float64)
    >>> add_weighted(target, torch.ones(2), 2.0)
    >>> add_weighted(target, torch.ones(3, 2), torch.ones(3, dtype=torch.float64))
    >>> target
    tensor([5., 5.], dtype=torch.float64)
    """
    if isinstance(weight, torch.Tensor):
        part = weighted_sum(weight, part)
        weight = 1.0
    target.add_(part, alpha=weight)
