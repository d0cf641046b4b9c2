"""Explicit path-kernel features by seeded Gaussian random projection.

The path kernel has an exact, very long feature map: stack every checkpoint's
flattened Jacobian, scaled by the square root of its weight,

    Phi(x) = concat_k sqrt(w_k) vec J_k(x)        (length K * O * d)

so that ``Phi(x) . Phi(x') = sum_k w_k tr(J_k(x) J_k(x')^T) = K_path(x, x')``
(summed over the ``O`` outputs, like the traced kernel). A Gaussian matrix
``P`` of shape ``(K O d, m)`` with independent ``N(0, 1/m)`` entries has
``E[P P^T] = I``, so ``phi(x) = P^T Phi(x)`` gives

    E[phi(x) . phi(x')] = Phi(x)^T E[P P^T] Phi(x') = K_path(x, x')

an unbiased estimate whose variance is
``(K(x, x) K(x', x') + K(x, x')^2) / m``: the relative error falls like
``1 / sqrt(m)``. Cutting ``P`` into the row blocks ``P_k`` of each checkpoint,
``phi(x) = sum_k sqrt(w_k) P_k^T vec J_k(x)``: every one of the ``m``
features draws on every checkpoint, so ``m`` is free of the number of
checkpoints and outputs. No ``P_k`` ever exists whole: it is generated in
chunks of ``_PROJECTION_CHUNK`` rows from a CPU ``torch.Generator`` seeded by
``(seed, k)``, so the features of a row do not depend on how the rows are
blocked, nor on the device.
"""

import math

import numpy as np
import torch

from ._blocking import tile_within_budget
from ._network import forward
from ._validation import check_kernel_input, to_tensor
from .engines import JacobianEngine

# Rows of a projection matrix generated at once: _PROJECTION_CHUNK * m numbers.
_PROJECTION_CHUNK = 2048


def projection_chunks(seed, k, n_rows, n_components):
    """The row chunks of the projection ``P_k`` of checkpoint ``k``, in order.

    Yields ``(start, stop, P)`` with ``P`` a float64 CPU tensor of shape
    ``(stop - start, n_components)`` and ``N(0, 1 / n_components)`` entries.
    The values depend only on ``(seed, k, n_rows, n_components)``.
    """
    state = np.random.SeedSequence([int(seed), int(k)]).generate_state(1)[0]
    generator = torch.Generator().manual_seed(int(state))
    scale = 1.0 / math.sqrt(n_components)
    for start in range(0, n_rows, _PROJECTION_CHUNK):
        stop = min(start + _PROJECTION_CHUNK, n_rows)
        P = torch.randn(
            (stop - start, n_components), generator=generator, dtype=torch.float64
        )
        yield start, stop, P.mul_(scale)


def path_features(
    module,
    trajectory,
    X,
    *,
    n_components,
    seed,
    working_memory=None,
    device=None,
):
    """Projected path-gradient features and the exact self kernel of ``X``.

    Parameters
    ----------
    module : torch.nn.Module
        The module the trajectory was recorded on.
    trajectory : Trajectory
        The recorded path.
    X : array-like or torch.Tensor of shape (n_X, n_features)
    n_components : int
        ``m``, the number of features.
    seed : int
        Seeds the projections; the same seed gives the same features.
    working_memory : float, default=None
        Budget in MiB for one block of rows' Jacobians; scikit-learn's
        ``working_memory`` setting when None.
    device : str or torch.device, default=None
        Where to compute; the module's device when None.

    Returns
    -------
    features : ndarray of float64, shape (n_X, n_components)
        ``phi(X)``, with ``E[phi(x) . phi(x')] = K_path(x, x')``.
    diagonal : ndarray of float64, shape (n_X,)
        ``K_path(x, x) = ||Phi(x)||^2`` exactly, from the same Jacobians.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_pathkernel import PathKernelRegressor
    >>> from sklearn_pathkernel._features import path_features
    >>> X, y = load_diabetes(return_X_y=True)
    >>> X, y = scale(X), scale(y)
    >>> est = PathKernelRegressor((8,), max_iter=10, random_state=0).fit(X, y)
    >>> phi, diagonal = path_features(
    ...     est.module_, est.trajectory_, X[:3], n_components=50, seed=0
    ... )
    >>> phi.shape
    (3, 50)
    >>> bool(np.allclose(diagonal, np.diag(est.kernel(X[:3]))))
    True
    """
    X = check_kernel_input(X, name="X")
    reference = next(iter(module.parameters()))
    device = reference.device if device is None else torch.device(device)
    dtype = reference.dtype
    X_t = to_tensor(X, dtype=dtype, device=device, name="X")
    n = X_t.shape[0]
    engine = JacobianEngine(module, trajectory.parameter_names)
    with torch.no_grad():
        n_outputs = forward(module, X_t[:1]).shape[1]
    n_rows = n_outputs * engine.n_parameters  # rows of each P_k
    itemsize = torch.finfo(dtype).bits // 8
    # Whole tiles: the same products, so the same bits, whatever the budget.
    block = tile_within_budget(
        working_memory, engine.bytes_per_row(n_outputs, itemsize) + 2 * 8 * n_components
    )
    features = torch.zeros((n, n_components), dtype=torch.float64, device=device)
    diagonal = torch.zeros(n, dtype=torch.float64, device=device)
    for r0 in range(0, n, block):
        r1 = min(r0 + block, n)
        for k, weight in enumerate(trajectory.weights):
            if weight == 0:
                continue
            parameters = trajectory.parameters(k, device=device)
            J = engine.state(parameters, X_t[r0:r1]).flatten(1)  # (n_b, O d)
            diagonal[r0:r1] += weight * torch.einsum("ij,ij->i", J, J).double()
            projected = torch.zeros((r1 - r0, n_components), dtype=dtype, device=device)
            for c0, c1, P in projection_chunks(seed, k, n_rows, n_components):
                projected.addmm_(J[:, c0:c1], P.to(device=device, dtype=dtype))
            features[r0:r1] += math.sqrt(weight) * projected.double()
    return features.cpu().numpy(), diagonal.cpu().numpy()
