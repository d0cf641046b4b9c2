"""The probe kernel that places the "adaptive" rule's nodes during training.

The "adaptive" quadrature (docs/design.md, section 3) keeps a kernel node at
step ``t`` when the tangent kernel on a small fixed set of training rows has
moved, in relative Frobenius norm, by more than ``adaptive_tol`` since the
last node. Where the kernel barely moves (late, slow training) nodes are far
apart; where it moves fast (the first steps) they are close.

The decision stays on the device (a 0-d bool tensor), so that a step with a
probe does not wait for the host either. Cost per recorded step: one engine
state of :data:`PROBE_ROWS` rows and
their ``PROBE_ROWS x PROBE_ROWS`` traced kernel. For the 64-256-256-10 MLP
that is 0.8 ms, as much as the forward and backward pass of a 32-row batch
(so about 1.4x the training time at batch 32) and 1% of a full-batch step
on ``load_digits`` (benchmarks/bench_quadrature.py).
"""

import torch

from ..engines import select_engine

PROBE_ROWS = 8


class KernelProbe:
    """Tangent kernel on fixed training rows, and how far it moved.

    Parameters
    ----------
    module : torch.nn.Module
    parameter_names : list of str
        The trainable parameters.
    X : torch.Tensor of shape (n_samples, n_features)
        The training rows; :data:`PROBE_ROWS` evenly spaced ones are used,
        so the probe draws nothing from the training generator.
    tol : float
        Relative movement that makes a new node.
    """

    def __init__(self, module, parameter_names, X, tol):
        n = X.shape[0]
        picks = torch.linspace(0, n - 1, min(n, PROBE_ROWS)).round().long()
        self.rows = X[picks.to(X.device)]
        self.bound = select_engine("auto", module, parameter_names)
        self.static = self.bound.static(self.rows, self.rows)
        self.tol = float(tol)
        self.last = None

    def moved(self, parameters):
        """Whether the kernel at ``parameters`` is a new node (the first is).

        Decided on the device, without reading anything back: the answer
        is a 0-d bool tensor that training reads with the step's other
        checks, and the last node's kernel is updated with ``torch.where``
        (``bool(moved)`` is the same decision as reading the change at once).

        Parameters
        ----------
        parameters : dict of str to torch.Tensor

        Returns
        -------
        moved : torch.Tensor of dtype bool and shape ()
        """
        with torch.no_grad():
            state = self.bound.state(parameters, self.rows)
            kernel = self.bound.contract(state, state, True, self.static).double()
            if self.last is None:
                self.last = kernel
                return torch.ones((), dtype=torch.bool, device=kernel.device)
            change = torch.linalg.norm(kernel - self.last)
            # Not "<=", as the read-back test was: a NaN change makes a node.
            moved = ~(change <= self.tol * torch.linalg.norm(self.last))
            self.last = torch.where(moved, kernel, self.last)
        return moved
