"""The update rules training can use, and the path kernel's weights they imply.

Every solver is written in one form (docs/design.md, section 12)::

    w_{t+1} - w_t = -P_t sum_{s<=t} e_{t,s} beta_{t,s} G_s  -  eps_t lambda w_t
    G_s = sum_i c_{i,s} J_s(x_i)^T g_{i,s} + alpha w_s

with a diagonal preconditioner ``P_t`` (the identity but for Adam),
coefficients of one geometric shape,
``beta_{t,s} = gamma kappa_t rho^(t-s) + delta [s = t]``, and the step size
``e_{t,s}`` either outside the sum (``e_{t,s} = eps_t``: Adam, and
``torch.optim.SGD``'s buffer ``buf = mu buf + g``, step ``eps_t buf``) or
inside it (``e_{t,s} = eps_s``: scikit-learn's velocity ``v = mu v - eps_t g``,
``Solver.momentum_form == "velocity"``, what the estimators train with). The
two agree at a constant step size; under a schedule the velocity keeps the
steps already taken in parameter units:

========== =============== ======== ======== =======
solver     kappa_t         rho      gamma    delta
========== =============== ======== ======== =======
sgd        1               0        1        0
momentum   1               mu       1        0
Nesterov   1               mu       mu       1
Adam(W)    1/(1-b1^(t+1))  b1       1 - b1   0
========== =============== ======== ======== =======

That shape is what makes every sum over later steps a backward recursion:
``B_s = kappa_s eps_s x_s + r_s B_{s+1}``, then ``gamma B_s + delta eps_s x_s``,
with ``r_s = rho`` (step size outside) or ``rho eps_s / eps_{s+1}`` (inside:
the carried sum is rescaled to the earlier step's rate; exactly ``rho`` at a
constant rate, so constant-rate results are the same bits in both forms). The
path kernel's effective step ``Ptilde_s = sum_{t>=s} e_{t,s} beta_{t,s} P_t``
is one (``x_t = P_t``); the exact decomposition's query side is another
(``x_t = P_t Jbar_t(x)^T``).
"""

from dataclasses import dataclass

import numpy as np
import torch

#: Where sgd's momentum keeps the step size (``Solver.momentum_form``).
MOMENTUM_FORMS = ("buffer", "velocity")

#: Solver names, as scikit-learn's MLP spells them ("adamw" is ours).
SOLVERS = ("sgd", "adam", "adamw")

#: Learning-rate schedules (``solver="sgd"`` only, as in scikit-learn).
SCHEDULES = ("constant", "invscaling", "adaptive")

#: ``learning_rate="adaptive"`` divides the step size by this when training
#: stalls, and stops once it is below ``_ADAPTIVE_FLOOR`` (scikit-learn's rule).
ADAPTIVE_DIVISOR = 5.0
ADAPTIVE_FLOOR = 1e-6


@dataclass(frozen=True)
class Solver:
    """One update rule: which optimiser, and its coefficients.

    Attributes
    ----------
    name : {"sgd", "adam", "adamw"}
    momentum : float
        Heavy-ball coefficient ``mu`` (sgd).
    nesterov : bool
        Nesterov's momentum (sgd, with ``momentum > 0``).
    beta_1, beta_2, epsilon : float
        Adam's moment decays and denominator guard.
    alpha : float
        Coupled L2 strength (sgd, adam): ``G`` adds ``alpha * w``.
    weight_decay : float
        Decoupled decay ``lambda`` (adamw): the step adds ``-eps * lambda * w``.
    momentum_form : {"buffer", "velocity"}
        What sgd's momentum accumulates. "buffer": the gradients, as
        ``torch.optim.SGD`` does (``buf = mu buf + g``, step ``eps_t buf``),
        so a change of step size rescales every remembered gradient.
        "velocity": the steps, as scikit-learn's ``SGDOptimizer`` does
        (``v = mu v - eps_t g``; Nesterov steps ``mu v - eps_t g``), so a
        remembered step keeps the rate it was taken at. Training keeps the
        optimiser's buffers at ``-v / eps_t`` (:meth:`set_step_size`). The two
        agree while the step size is constant. The default is the older
        meaning, that of a solver saved before the field existed; the
        estimators ask for "velocity", MLP's form. Adam ignores it.

    Examples
    --------
    >>> from sklearn_pathkernel._training._solvers import Solver
    >>> Solver("sgd", momentum=0.9).recursion(t=5)
    (1.0, 0.9, 1.0, 0.0)
    >>> Solver("adam").diagonal
    True
    >>> velocity = Solver("sgd", momentum=0.9, momentum_form="velocity")
    >>> velocity.carry(0, [0.2, 0.1])  # rho * eps_0 / eps_1
    1.8
    """

    name: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-8
    alpha: float = 0.0
    weight_decay: float = 0.0
    momentum_form: str = "buffer"

    def __post_init__(self):
        if self.momentum_form not in MOMENTUM_FORMS:
            raise ValueError(
                f"momentum_form must be one of {MOMENTUM_FORMS}, got "
                f"{self.momentum_form!r}."
            )

    @property
    def steps_inside(self):
        """Whether ``eps_s`` is inside the sum (sgd's velocity form)."""
        return self.name == "sgd" and self.momentum_form == "velocity"

    @property
    def diagonal(self):
        """Whether ``P_t`` is a recorded diagonal (Adam) rather than the identity."""
        return self.name in ("adam", "adamw")

    @property
    def plain(self):
        """sgd without momentum: each gradient enters one step only."""
        return self.name == "sgd" and self.momentum == 0.0

    def recursion(self, t):
        """``(kappa_t, rho, gamma, delta)`` of step ``t`` (module docstring)."""
        if self.diagonal:
            kappa = 1.0 / (1.0 - self.beta_1 ** (t + 1))
            return kappa, self.beta_1, 1.0 - self.beta_1, 0.0
        if self.momentum == 0.0:
            return 1.0, 0.0, 1.0, 0.0
        if self.nesterov:
            return 1.0, self.momentum, self.momentum, 1.0
        return 1.0, self.momentum, 1.0, 0.0

    def carry(self, s, step_sizes):
        """``r_s``: what the backward sum carried from step ``s + 1`` is scaled by.

        ``rho``, times ``eps_s / eps_{s+1}`` when the step size is inside the
        sum (exactly ``rho`` at a constant rate).
        """
        rho = self.recursion(s)[1]
        if self.steps_inside and rho and s + 1 < len(step_sizes):
            rho = rho * (float(step_sizes[s]) / float(step_sizes[s + 1]))
        return rho

    def set_step_size(self, optimizer, step_size):
        """Give ``optimizer`` the step size ``step_size`` for its next step.

        In the velocity form the momentum buffers are rescaled by
        ``eps_old / eps_new``, so that they keep holding ``-v / eps`` for the
        new rate and torch's step ``eps (mu buf + g)`` (heavy ball) or
        ``eps (g + mu (mu buf + g))`` (Nesterov) is scikit-learn's. Nothing
        is touched when the rate does not change.
        """
        group = optimizer.param_groups[0]
        old = group["lr"]
        if step_size == old:
            return
        group["lr"] = step_size
        if not (self.steps_inside and self.momentum):
            return
        for p in group["params"]:
            buffer = optimizer.state.get(p, {}).get("momentum_buffer")
            if buffer is not None:
                buffer.mul_(old / step_size)

    def optimizer(self, parameters, learning_rate):
        """The ``torch.optim`` optimiser that takes these steps."""
        if self.name == "sgd":
            return torch.optim.SGD(
                parameters,
                lr=learning_rate,
                momentum=self.momentum,
                nesterov=self.nesterov,
                weight_decay=self.alpha,
            )
        cls, decay = (
            (torch.optim.Adam, self.alpha)
            if self.name == "adam"
            else (torch.optim.AdamW, self.weight_decay)
        )
        return cls(
            parameters,
            lr=learning_rate,
            betas=(self.beta_1, self.beta_2),
            eps=self.epsilon,
            weight_decay=decay,
        )

    def preconditioner(self, optimizer, parameters, step=None):
        """Adam's ``P_t = 1 / (sqrt(v_t / (1 - beta_2^(t+1))) + epsilon)``, flat.

        Read from the optimiser's state right after its step, computed as
        ``torch.optim.Adam`` computes its denominator, so that the recorded
        step is the one taken. None for sgd (``P_t`` is the identity).
        ``step``, the optimiser's step count when the caller knows it, spares
        reading it from the state (training reads nothing back each step).
        """
        if not self.diagonal:
            return None
        pieces = []
        for p in parameters:
            state = optimizer.state[p]
            count = float(state["step"] if step is None else step)
            correction = (1.0 - self.beta_2**count) ** 0.5
            denominator = (state["exp_avg_sq"].sqrt() / correction).add_(self.epsilon)
            pieces.append(denominator.reciprocal().reshape(-1))
        return torch.cat(pieces).detach()


def backward_sums(solver, step_sizes, terms):
    """``sum_{t>=s} e_{t,s} beta_{t,s} x_t`` for every ``s``, latest first.

    ``e_{t,s}`` is ``eps_t``, or ``eps_s`` in the velocity form (module
    docstring).

    Parameters
    ----------
    solver : Solver
    step_sizes : array of float, shape (T,)
        ``eps_t``.
    terms : callable
        ``terms(t)`` returns ``P_t x_t`` for step ``t`` (any array or tensor
        shape, the same for every ``t``), or a float.

    Yields
    ------
    s, total
        From ``s = T - 1`` down to 0. ``total`` is a fresh object each time.
    """
    carried = None
    for s in range(len(step_sizes) - 1, -1, -1):
        kappa, _, gamma, delta = solver.recursion(s)
        x = step_sizes[s] * terms(s)
        if carried is None:
            carried = kappa * x
        else:
            carried = kappa * x + solver.carry(s, step_sizes) * carried
        yield s, gamma * carried + delta * x


def effective_step_sizes(solver, step_sizes):
    """``p_s = sum_{t>=s} e_{t,s} beta_{t,s}``: the scalar part of ``Ptilde_s``.

    For sgd it is ``eps_s``; for heavy-ball momentum
    ``eps (1 - mu^(T-s)) / (1 - mu)`` at a constant step, and in the
    velocity form ``eps_s (1 - mu^(T-s)) / (1 - mu)`` under any schedule;
    for Adam about ``eps_s`` away from the first steps.

    Returns
    -------
    p : ndarray of float64, shape (T,)
    """
    eps = np.asarray(step_sizes, dtype=np.float64)
    if solver.plain:
        return eps.copy()
    p = np.empty(len(eps))
    for s, total in backward_sums(solver, eps, lambda t: 1.0):
        p[s] = total
    return p
