"""Plain, obviously-correct references that the fast code is checked against.

Nothing here is clever: one row, one output, one ``torch.autograd.grad`` at a
time, then explicit sums. Slow, and only for small problems.
"""

import numpy as np
import torch
from torch.func import functional_call


def jacobian_rows(module, parameters, X):
    """Per-example Jacobians by a Python loop: array (n, O, d) in float64.

    Rows and parameters go to the module's device (a trajectory keeps its
    parameters on the CPU; an estimator fitted on a GPU keeps its module there).
    """
    reference = next(iter(module.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    names = list(parameters)
    leaves = {
        n: parameters[n].detach().to(device).clone().requires_grad_(True) for n in names
    }
    rows = []
    for x in torch.as_tensor(X).to(device):
        out = functional_call(module, leaves, (x.unsqueeze(0),)).reshape(-1)
        per_output = []
        for o in range(out.shape[0]):
            grads = torch.autograd.grad(
                out[o], [leaves[n] for n in names], retain_graph=True, allow_unused=True
            )
            per_output.append(
                torch.cat(
                    [
                        (g if g is not None else torch.zeros_like(leaves[n])).reshape(
                            -1
                        )
                        for n, g in zip(names, grads)
                    ]
                )
            )
        rows.append(torch.stack(per_output))
    return torch.stack(rows).double().cpu().numpy()


def flat_metric(parameters, metric):
    """A name -> tensor metric as one float64 vector in ``parameters``' order."""
    return np.concatenate(
        [metric[n].detach().double().cpu().numpy().reshape(-1) for n in parameters]
    )


def tangent_kernel_reference(module, parameters, X, Y=None, trace=True, metric=None):
    """``J(X) diag(metric) J(Y)^T`` from :func:`jacobian_rows`, traced or full."""
    JX = jacobian_rows(module, parameters, X)
    JY = JX if Y is None else jacobian_rows(module, parameters, Y)
    if metric is not None:
        JY = JY * flat_metric(parameters, metric)
    full = np.einsum("iad,jbd->ijab", JX, JY)
    return np.einsum("ijaa->ij", full) if trace else full


def path_kernel_reference(module, trajectory, X, Y=None, trace=True):
    """``sum_k weight_k * J_k(X) J_k(Y)^T`` over the kernel nodes, one at a time."""
    total = 0.0
    for step, weight in trajectory.kernel_nodes():
        total = total + weight * tangent_kernel_reference(
            module,
            trajectory.parameters_at(step),
            X,
            Y,
            trace=trace,
            metric=trajectory.kernel_metric_at(step),
        )
    return total
