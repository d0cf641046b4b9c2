"""Tangent and path kernels, blocked over rows under a memory budget."""

import copy
import math

import numpy as np
import torch
from sklearn import get_config

from ._network import forward
from ._tangent import select_engine
from ._validation import check_kernel_input, resolve_device, to_tensor


def tangent_kernel(
    module,
    parameters,
    X,
    Y=None,
    *,
    trace=True,
    engine="auto",
    working_memory=None,
    device=None,
):
    """Tangent kernel ``K_w(X, Y) = J_w(X) J_w(Y)^T`` at one point ``w``.

    Parameters
    ----------
    module : torch.nn.Module
        Maps (n_samples, n_features) to (n_samples, n_outputs).
    parameters : dict of str to torch.Tensor or None
        Values for (some of) the module's trainable parameters, as for
        ``torch.func.functional_call``; None uses the module's own.
        The kernel is taken with respect to exactly these tensors.
    X : array-like or torch.Tensor of shape (n_X, n_features)
    Y : array-like or torch.Tensor of shape (n_Y, n_features), default=None
        None means ``Y = X``; then only one triangle of blocks is computed
        and the result is exactly symmetric.
    trace : bool, default=True
        True sums over outputs, giving shape (n_X, n_Y): for a single output
        this is the kernel itself, for several it is the trace of the
        ``O x O`` output kernel. False returns the full (n_X, n_Y, O, O).
    engine : {"auto", "jacobian"}, default="auto"
        How Jacobians are computed; see ``sklearn_pathkernel._tangent``.
    working_memory : float, default=None
        Budget in MiB for one block of work; scikit-learn's
        ``working_memory`` setting when None.
    device : str or torch.device, default=None
        Where to compute; the module's device when None.

    Returns
    -------
    K : ndarray of float64, shape (n_X, n_Y) or (n_X, n_Y, O, O)

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel import tangent_kernel
    >>> net = torch.nn.Linear(3, 1)
    >>> K = tangent_kernel(net, None, torch.eye(3))
    >>> K.round(6)  # a linear model's tangent kernel is X X^T + 1
    array([[2., 1., 1.],
           [1., 2., 1.],
           [1., 1., 2.]])
    """
    if parameters is None:
        parameters = {n: p.detach() for n, p in module.named_parameters()}
    return weighted_kernel_sum(
        module,
        [(1.0, lambda dev: {n: p.to(dev) for n, p in parameters.items()})],
        X,
        Y,
        trace=trace,
        engine=engine,
        working_memory=working_memory,
        device=device,
    )


def path_kernel(
    module,
    trajectory,
    X,
    Y=None,
    *,
    trace=True,
    engine="auto",
    working_memory=None,
    device=None,
):
    """Path kernel ``K_path(X, Y) = sum_k weights[k] * K_{w_k}(X, Y)``.

    The sum runs over the checkpoints of ``trajectory`` (a left Riemann sum
    of the paper's path integral, Definition 2). It is a positive sum of Gram
    matrices, hence symmetric positive semi-definite for ``Y = None``.

    Parameters
    ----------
    module : torch.nn.Module
        The module the trajectory was recorded on (e.g. ``est.module_``).
    trajectory : Trajectory
        The recorded path (e.g. ``est.trajectory_``).
    X : array-like or torch.Tensor of shape (n_X, n_features)
    Y : array-like or torch.Tensor of shape (n_Y, n_features), default=None
        None means ``Y = X``.
    trace : bool, default=True
        Sum over outputs (shape (n_X, n_Y)), or keep the full
        (n_X, n_Y, O, O) output kernel.
    engine : {"auto", "jacobian"}, default="auto"
    working_memory : float, default=None
        Budget in MiB for one block of work.
    device : str or torch.device, default=None
        Where to compute; the module's device when None.

    Returns
    -------
    K : ndarray of float64, shape (n_X, n_Y) or (n_X, n_Y, O, O)

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_pathkernel import PathKernelRegressor, path_kernel
    >>> X, y = load_diabetes(return_X_y=True)
    >>> X, y = scale(X), scale(y)
    >>> est = PathKernelRegressor(max_iter=20, random_state=0).fit(X, y)
    >>> K = path_kernel(est.module_, est.trajectory_, X[:5])
    >>> K.shape, bool((K == K.T).all())
    ((5, 5), True)
    """
    points = [
        (float(weight), lambda dev, k=k: trajectory.parameters(k, device=dev))
        for k, weight in enumerate(trajectory.weights)
    ]
    return weighted_kernel_sum(
        module,
        points,
        X,
        Y,
        trace=trace,
        engine=engine,
        working_memory=working_memory,
        device=device,
    )


def weighted_kernel_sum(
    module,
    points,
    X,
    Y=None,
    *,
    trace=True,
    engine="auto",
    working_memory=None,
    device=None,
):
    """``sum_k weight_k * J_k(X) J_k(Y)^T`` over ``points``, in row blocks.

    ``points`` is a sequence of ``(weight, load)`` where ``load(device)``
    returns the parameter mapping of that point. Rows of ``X`` are taken in
    blocks; for each block and each point the block's engine state is built
    once and contracted against the column blocks, accumulating a float64
    strip on the device. The block size keeps two states plus the strip
    within ``working_memory``.
    """
    symmetric = Y is None
    X = check_kernel_input(X, name="X")
    Y = X if symmetric else check_kernel_input(Y, name="Y", n_features=X.shape[1])
    reference = next(iter(module.parameters()), None)
    dtype = reference.dtype if reference is not None else torch.float32
    device = (
        resolve_device(device)
        if device is not None
        else (reference.device if reference is not None else torch.device("cpu"))
    )
    X_t = to_tensor(X, dtype=dtype, device=device, name="X")
    Y_t = X_t if symmetric else to_tensor(Y, dtype=dtype, device=device, name="Y")
    n, m = X_t.shape[0], Y_t.shape[0]
    if reference is not None and reference.device != device:
        module = copy.deepcopy(module).to(device)  # never move the caller's module
    bound = select_engine(engine, module)

    with torch.no_grad():
        n_outputs = forward(module, X_t[:1]).shape[1] if n else 1
    extra = () if trace else (n_outputs, n_outputs)
    K = np.zeros((n, m, *extra), dtype=np.float64)
    if n == 0 or m == 0 or not points:
        return K

    n_parameters = sum(p.numel() for p in module.parameters() if p.requires_grad)
    itemsize = torch.finfo(dtype).bits // 8
    block = _block_rows(
        working_memory,
        state_bytes=bound.bytes_per_row(n_outputs, n_parameters, itemsize),
        strip_bytes=m * 8 * math.prod(extra),
        n_rows=max(n, m),
    )

    with torch.no_grad():
        for r0 in range(0, n, block):
            r1 = min(r0 + block, n)
            c_start = r0 if symmetric else 0
            strip = torch.zeros(
                (r1 - r0, m - c_start, *extra), dtype=torch.float64, device=device
            )
            for weight, load in points:
                parameters = load(device)
                state_x = bound.state(parameters, X_t[r0:r1])
                for c0 in range(c_start, m, block):
                    c1 = min(c0 + block, m)
                    state_y = (
                        state_x
                        if symmetric and c0 == r0
                        else bound.state(parameters, Y_t[c0:c1])
                    )
                    part = bound.contract(state_x, state_y, trace)
                    strip[:, c0 - c_start : c1 - c_start] += weight * part.double()
            K[r0:r1, c_start:] = strip.cpu().numpy()
    if symmetric:
        _mirror_upper(K, block)
    return K


def _block_rows(working_memory, *, state_bytes, strip_bytes, n_rows):
    """Rows per block so that two engine states and one strip fit the budget."""
    if working_memory is None:
        working_memory = get_config()["working_memory"]
    budget = working_memory * 2**20
    rows = int(budget // (2 * state_bytes + strip_bytes))
    return max(1, min(rows, n_rows))


def _mirror_upper(K, block):
    """Fill the lower triangle of blocks from the upper one; symmetrise diagonals.

    The diagonal blocks come from ``S S^T`` products whose rounding need not be
    symmetric; averaging with the transpose makes ``K`` exactly symmetric.
    """
    swap = (1, 0) if K.ndim == 2 else (1, 0, 3, 2)
    n = K.shape[0]
    for r0 in range(0, n, block):
        r1 = min(r0 + block, n)
        diagonal = K[r0:r1, r0:r1]
        K[r0:r1, r0:r1] = 0.5 * (diagonal + diagonal.transpose(swap))
        K[r1:, r0:r1] = K[r0:r1, r1:].transpose(swap)
