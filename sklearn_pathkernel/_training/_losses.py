"""Per-row losses on network outputs and their derivatives ``dl/df``.

Training and the kernel-machine decomposition both need ``g = dl(y, f)/df`` at
every step (docs/design.md, section 2). Writing the derivatives in closed
form, rather than reading them back from autograd, keeps the two in exact
agreement.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Loss:
    """A per-row loss ``l(y, f)`` on outputs ``f`` of shape (n, O).

    Attributes
    ----------
    name : str
        Short name used in messages.
    value : callable
        ``value(f, y) -> (n,)`` tensor of per-row losses.
    gradient : callable
        ``gradient(f, y) -> (n, O)`` tensor of ``dl/df``, row by row.
    """

    name: str
    value: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    gradient: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _squared_value(f, y):
    return 0.5 * ((f - y) ** 2).sum(dim=1)


def _squared_gradient(f, y):
    return f - y


def _logistic_value(f, y):
    # y in {0, 1}, one logit per column (binary or multilabel), summed over
    # the columns; softplus keeps large logits finite.
    return (torch.nn.functional.softplus(f) - y * f).sum(dim=1)


def _logistic_gradient(f, y):
    return torch.sigmoid(f) - y


def _softmax_value(f, y):
    # y holds one-hot rows (n, K).
    return -(y * torch.log_softmax(f, dim=1)).sum(dim=1)


def _softmax_gradient(f, y):
    return torch.softmax(f, dim=1) - y


def _poisson_value(f, y):
    # f = log(mu), y >= 0: the half Poisson deviance y log(y / mu) - y + mu,
    # as MLPRegressor's loss_curve_ reports it. The constant
    # xlogy(y, y) - y has no gradient; it makes the value 0 at mu = y.
    return (torch.exp(f) - y * f + torch.xlogy(y, y) - y).sum(dim=1)


def _poisson_gradient(f, y):
    return torch.exp(f) - y


SQUARED_ERROR = Loss("squared_error", _squared_value, _squared_gradient)
BINARY_LOGISTIC = Loss("log_loss", _logistic_value, _logistic_gradient)
SOFTMAX_CROSS_ENTROPY = Loss("log_loss", _softmax_value, _softmax_gradient)
#: On the log of the mean (the log link): the network's output is ``log(mu)``.
POISSON = Loss("poisson", _poisson_value, _poisson_gradient)
