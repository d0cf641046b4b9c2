"""The default MLP and the contract for user modules.

A *module* maps a float tensor of shape (n_samples, n_features) to outputs of
shape (n_samples, n_outputs); a 1-D output is accepted when there is a single
output. Users pass either an ``nn.Module`` instance (copied at each ``fit`` so
that refits start from the same weights) or a factory
``module(n_features, n_outputs) -> nn.Module``.
"""

import copy
import math
from functools import partial

import torch
from torch import nn
from torch.func import functional_call

from ._validation import resolve_device

ACTIVATIONS = {
    "identity": nn.Identity,
    "logistic": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
}


def make_mlp(n_features, n_outputs, hidden_layer_sizes, activation, *, generator):
    """Build the default multilayer perceptron with Glorot-uniform weights.

    The initialisation follows scikit-learn's ``MLPRegressor`` (uniform in
    ``+-sqrt(6 / (fan_in + fan_out))``, times ``sqrt(2)`` for the logistic
    activation), drawn from ``generator`` so that no global seed is touched.

    Parameters
    ----------
    n_features : int
        Width of the input.
    n_outputs : int
        Width of the output layer.
    hidden_layer_sizes : sequence of int
        Widths of the hidden layers; empty gives a linear model.
    activation : {"identity", "logistic", "tanh", "relu"}
        Elementwise activation after each hidden layer.
    generator : torch.Generator
        Source of the initial weights (on the CPU).

    Returns
    -------
    module : torch.nn.Sequential
        ``Linear`` layers separated by the activation, in float32 on the CPU.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._network import make_mlp
    >>> net = make_mlp(3, 1, (8,), "tanh", generator=torch.Generator().manual_seed(0))
    >>> net(torch.zeros(5, 3)).shape
    torch.Size([5, 1])
    """
    widths = [n_features, *hidden_layer_sizes, n_outputs]
    gain = math.sqrt(2.0) if activation == "logistic" else 1.0
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        # skip_init: the default initialisation would draw from the global RNG.
        linear = torch.nn.utils.skip_init(nn.Linear, fan_in, fan_out)
        bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
        with torch.no_grad():
            linear.weight.uniform_(-bound, bound, generator=generator)
            linear.bias.uniform_(-bound, bound, generator=generator)
        layers.append(linear)
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def build_module(spec, n_features, n_outputs, *, seed):
    """Turn the estimator's ``module`` parameter into a fresh module.

    Parameters
    ----------
    spec : torch.nn.Module or callable
        An instance, deep-copied so the caller's object is never trained in
        place, or a factory called as ``spec(n_features, n_outputs)``. The
        factory runs inside ``torch.random.fork_rng`` seeded with ``seed``:
        its default initialisation is then reproducible, and the global RNG
        is restored afterwards.
    n_features, n_outputs : int
        Shape of the problem.
    seed : int
        Seed for a factory's initialisation.

    Returns
    -------
    module : torch.nn.Module
    """
    if isinstance(spec, nn.Module):
        return copy.deepcopy(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = spec(n_features, n_outputs)
    if not isinstance(module, nn.Module):
        raise TypeError(
            "The 'module' factory must return a torch.nn.Module; got "
            f"{type(module).__name__} instead."
        )
    return module


def forward(module, X):
    """Apply ``module`` (any callable) and return (n_samples, n_outputs)."""
    out = module(X)
    return out.unsqueeze(1) if out.ndim == 1 else out


def forward_at(module, parameters, X):
    """``forward`` with ``parameters`` in place of the module's own."""
    return forward(partial(functional_call, module, parameters), X)


def check_module_output(module, X_probe, n_outputs):
    """Raise a clear error when ``module`` breaks the shape contract."""
    try:
        with torch.no_grad():
            out = module(X_probe)
    except Exception as exc:  # the user's module: report, don't guess
        raise ValueError(
            f"The 'module' failed on an input of shape {tuple(X_probe.shape)} "
            f"(n_samples, n_features): {type(exc).__name__}: {exc}"
        ) from exc
    expected = (X_probe.shape[0], n_outputs)
    ok = tuple(out.shape) == expected or (
        n_outputs == 1 and tuple(out.shape) == (X_probe.shape[0],)
    )
    if not ok:
        raise ValueError(
            f"The 'module' must map inputs of shape (n_samples, n_features) to "
            f"outputs of shape (n_samples, {n_outputs}); got {tuple(out.shape)} "
            f"for an input of shape {tuple(X_probe.shape)}."
        )


def trainable_parameters(module):
    """The (name, parameter) pairs that gradient descent moves."""
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


def placement(module, device):
    """``(module, dtype, device)`` of the work.

    The device is ``device`` when given, else the module's; the module is
    copied there when it lives elsewhere (the caller's module never moves).
    A module without parameters computes in float32 on the CPU.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._network import placement
    >>> net = torch.nn.Linear(2, 1).double()
    >>> placed, dtype, device = placement(net, None)
    >>> placed is net, dtype, device
    (True, torch.float64, device(type='cpu'))
    """
    reference = next(iter(module.parameters()), None)
    dtype = reference.dtype if reference is not None else torch.float32
    if device is not None:
        device = resolve_device(device)
    elif reference is not None:
        device = reference.device
    else:
        device = torch.device("cpu")
    if reference is not None and reference.device != device:
        module = copy.deepcopy(module).to(device)
    return module, dtype, device
