"""The default MLP and the contract for user modules.

A *module* maps a float tensor of shape (n_samples, n_features) to outputs of
shape (n_samples, n_outputs); a 1-D output is accepted when there is a single
output. Users pass either an ``nn.Module`` instance (copied at each ``fit`` so
that refits start from the same weights) or a factory
``module(n_features, n_outputs) -> nn.Module``. A module that takes images,
sequences or token ids gets its input through :class:`InputAdapter`, so that
everything outside the module still sees 2-D float rows.

Modes (docs/design.md, section 11): training runs in the mode the user's
module is in (``nn.Module`` starts in training mode: dropout on); everything
after training, predictions and kernels included, runs in eval mode. A
module whose training-mode forward mixes rows (BatchNorm on batch
statistics) has no per-example gradients and is refused before training.
"""

import contextlib
import copy
import math
from functools import partial, wraps

import numpy as np
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


def make_mlp(
    n_features,
    n_outputs,
    hidden_layer_sizes,
    activation,
    *,
    generator=None,
    random_state=None,
    dtype=torch.float32,
):
    """Build the default multilayer perceptron with Glorot-uniform weights.

    The initialisation is scikit-learn's (``MLPRegressor._init_coef``:
    weights and biases uniform in ``+-sqrt(factor / (fan_in + fan_out))``,
    ``factor`` 6, or 2 for the logistic activation). With ``random_state``
    the numbers are MLP's own: layer by layer, the ``(fan_in, fan_out)``
    weights then the biases, drawn in float64 from that ``RandomState``
    (advancing it as MLP's ``_initialize`` does) and cast to ``dtype``.
    With ``generator`` they are drawn from a ``torch.Generator`` instead.
    No global seed is touched either way.

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
    generator : torch.Generator, default=None
        Source of the initial weights (on the CPU).
    random_state : numpy.random.RandomState, default=None
        Source of the initial weights, as scikit-learn's MLP draws them;
        exactly one of ``generator`` and ``random_state`` is given.
    dtype : torch.dtype, default=torch.float32
        Of the parameters.

    Returns
    -------
    module : torch.nn.Sequential
        ``Linear`` layers separated by the activation, on the CPU.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from sklearn_pathkernel._model._network import make_mlp
    >>> net = make_mlp(3, 1, (8,), "tanh", generator=torch.Generator().manual_seed(0))
    >>> net(torch.zeros(5, 3)).shape
    torch.Size([5, 1])
    >>> net = make_mlp(3, 1, (8,), "tanh", random_state=np.random.RandomState(0),
    ...                dtype=torch.float64)
    >>> bound = np.sqrt(6 / (3 + 8))  # MLP's first draw: layer 0's coef
    >>> first = np.random.RandomState(0).uniform(-bound, bound, (3, 8))
    >>> bool(np.array_equal(net[0].weight.detach().numpy().T, first))
    True
    """
    if (generator is None) == (random_state is None):
        raise TypeError("make_mlp takes exactly one of generator and random_state.")
    widths = [n_features, *hidden_layer_sizes, n_outputs]
    factor = 2.0 if activation == "logistic" else 6.0  # MLP's _init_coef
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        # skip_init: the default initialisation would draw from the global RNG.
        linear = torch.nn.utils.skip_init(
            nn.Linear, fan_in, fan_out, dtype=torch.float64
        )
        bound = math.sqrt(factor / (fan_in + fan_out))
        with torch.no_grad():
            if random_state is None:
                draws = [
                    torch.empty(shape, dtype=torch.float32).uniform_(
                        -bound, bound, generator=generator
                    )
                    for shape in ((fan_out, fan_in), (fan_out,))
                ]
            else:  # MLP's order: coef (fan_in, fan_out), then intercept
                coef = random_state.uniform(-bound, bound, (fan_in, fan_out))
                intercept = random_state.uniform(-bound, bound, fan_out)
                draws = [torch.from_numpy(coef.T), torch.from_numpy(intercept)]
            linear.weight.copy_(draws[0])
            linear.bias.copy_(draws[1])
        layers.append(linear.to(dtype))
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def mlp_linears(module):
    """The ``Linear`` layers of a network shaped as :func:`make_mlp` builds it.

    scikit-learn's ``coefs_`` and ``intercepts_`` describe such a network
    only: an ``nn.Sequential`` of biased ``Linear`` layers separated by one
    and the same activation of ``ACTIVATIONS``.

    Parameters
    ----------
    module : torch.nn.Module
        A trained network.

    Returns
    -------
    linears : list of torch.nn.Linear or None
        The layers in order, or None when ``module`` has another form.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._model._network import make_mlp, mlp_linears
    >>> net = make_mlp(3, 1, (8,), "tanh", generator=torch.Generator().manual_seed(0))
    >>> [layer.weight.shape for layer in mlp_linears(net)]
    [torch.Size([8, 3]), torch.Size([1, 8])]
    >>> mlp_linears(torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Tanh())) is None
    True
    """
    if type(module) is not nn.Sequential or len(module) % 2 == 0:
        return None
    linears, between = list(module)[::2], list(module)[1::2]
    if not all(type(m) is nn.Linear and m.bias is not None for m in linears):
        return None
    kinds = {type(m) for m in between}
    if len(kinds) > 1 or not kinds <= set(ACTIVATIONS.values()):
        return None
    return linears


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


class InputAdapter(nn.Module):
    """Give a user module its input: rows reshaped, token ids as int64.

    Everything outside the network (scikit-learn's validation, Pipelines,
    the row tiles of the kernel, the decomposition) works on 2-D rows of
    ``n_features = prod(input_shape)`` floats; this wrapper turns each block
    of rows into what ``module`` takes. Token ids travel as floats holding
    exact integers (validated: float32 holds every integer below ``2**24``)
    and reach ``module`` as int64, as ``nn.Embedding`` needs. Its one child
    is ``module``, so parameter names gain the prefix ``"module."``.

    Parameters
    ----------
    module : torch.nn.Module
        The user's network.
    input_shape : tuple of int or None, default=None
        Shape of one example, e.g. ``(1, 8, 8)`` for a one-channel 8x8
        image; rows of shape (n, prod(input_shape)) reach ``module`` as
        (n, *input_shape). None passes rows as they are.
    tokens : bool, default=False
        Cast the rows to int64 (token or category ids for ``nn.Embedding``).

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel._model._network import InputAdapter
    >>> conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten())
    >>> InputAdapter(conv, input_shape=(1, 4, 4))(torch.zeros(5, 16)).shape
    torch.Size([5, 8])
    >>> embed = torch.nn.Embedding(10, 3)
    >>> InputAdapter(embed, tokens=True)(torch.tensor([[1.0, 9.0]])).shape
    torch.Size([1, 2, 3])
    """

    def __init__(self, module, input_shape=None, tokens=False):
        super().__init__()
        self.module = module
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.tokens = bool(tokens)

    def forward(self, X):
        if self.tokens:
            X = X.long()
        if self.input_shape is not None:
            X = X.reshape(X.shape[0], *self.input_shape)
        return self.module(X)

    def example_shape(self, n_samples):
        """The shape ``module`` sees for a block of ``n_samples`` rows."""
        return (n_samples, *self.input_shape) if self.input_shape else None

    def extra_repr(self):
        return f"input_shape={self.input_shape}, tokens={self.tokens}"


def adapt_input(module, input_shape=None, tokens=False):
    """``module`` wrapped in an :class:`InputAdapter` when it needs one."""
    if input_shape is None and not tokens:
        return module
    return InputAdapter(module, input_shape, tokens)


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
        shaped = (
            module.example_shape(X_probe.shape[0])
            if isinstance(module, InputAdapter)
            else None
        )
        layout = (
            f"{shaped} (n_samples, *input_shape)"
            if shaped
            else f"{tuple(X_probe.shape)} (n_samples, n_features)"
        )
        raise ValueError(
            f"The 'module' failed on an input of shape {layout}: "
            f"{type(exc).__name__}: {exc}"
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


def check_token_range(module, X, *, name="X"):
    """Run the row of ``X`` holding its largest token id through ``module``.

    Which ids a module can embed is known only to the module (several
    ``nn.Embedding`` tables may take different parts of a row), so the row
    with the largest id is tried: an id beyond a table raises here, as a
    ``ValueError`` naming the array, rather than deep inside a kernel. On a
    GPU an out-of-range index would break the CUDA context, so the probe
    runs on a CPU copy of the module.
    """
    X = np.asarray(X)
    if X.size == 0:
        return
    row = int(np.unravel_index(np.argmax(X), X.shape)[0])
    reference = next(module.parameters(), None)
    if reference is not None and reference.device.type != "cpu":
        module = copy.deepcopy(module).to("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    try:
        with torch.no_grad():
            module(torch.tensor(X[row : row + 1], dtype=dtype))
    except Exception as exc:  # the user's module: report, don't guess
        raise ValueError(
            f"The 'module' failed on row {row} of {name}, which holds its largest "
            f"token id, {int(X[row].max())}: {type(exc).__name__}: {exc}. Every "
            "id must be below the num_embeddings of the nn.Embedding it goes to."
        ) from exc


def check_rows_independent(module, *, owner="The 'module'"):
    """Refuse a module whose forward mixes the rows of a batch.

    BatchNorm in training mode normalises every row with the statistics of
    its batch, and without running statistics (``track_running_stats=False``)
    it does so in eval mode too: a row's output then depends on the other
    rows, so per-example gradients, and the path kernel, do not exist.
    """
    for name, layer in module.named_modules():
        if not isinstance(layer, nn.modules.batchnorm._BatchNorm):
            continue
        if layer.training or layer.running_mean is None:
            where = f"{type(layer).__name__} ({name!r})" if name else "BatchNorm"
            how = (
                "in training mode"
                if layer.training
                else "with track_running_stats=False"
            )
            raise ValueError(
                f"{owner} contains {where} {how}: it normalises each batch with "
                "the batch's own statistics, which mixes the rows, so "
                "per-example gradients and the path kernel do not exist. Use "
                "nn.GroupNorm or nn.LayerNorm instead, or BatchNorm with "
                "track_running_stats=True in eval mode (call .eval() on the "
                "module or on the BatchNorm layers before passing it), which "
                "normalises with fixed running statistics."
            )


@contextlib.contextmanager
def evaluation_mode(module):
    """Run the body with ``module`` in eval mode; restore every flag after.

    Kernels, decompositions and features are always computed in eval mode:
    dropout off, normalisation layers on running statistics (docs/design.md,
    section 11). The caller's module keeps its own flags afterwards.
    """
    flags = [(layer, layer.training) for layer in module.modules()]
    module.eval()
    try:
        check_rows_independent(module)  # eval-mode BatchNorm without running stats
        yield module
    finally:
        for layer, training in flags:
            layer.training = training


def in_evaluation_mode(function):
    """Decorate ``function(module, ...)`` to run with ``module`` in eval mode.

    The kernel, diagonal, decomposition and feature entry points use it, so
    that the functional API computes in eval mode whatever mode the caller's
    module is in, and leaves that mode as it was.
    """

    @wraps(function)
    def wrapper(module, *args, **kwargs):
        with evaluation_mode(module):
            return function(module, *args, **kwargs)

    return wrapper


def mode_changes_output(module, X_probe):
    """Whether ``module`` computes something else in training and eval mode.

    Compares the outputs of one forward pass in the module's own mode with
    one in eval mode: dropout (random masks) or any layer that reads
    ``self.training`` makes them differ. The global RNG is forked, so that
    the probe draws nothing from the caller's stream.
    """
    if not any(layer.training for layer in module.modules()):
        return False
    devices = [X_probe.device] if X_probe.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        trained = forward(module, X_probe)
        with evaluation_mode(module):
            evaluated = forward(module, X_probe)
    return not torch.equal(trained, evaluated)


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
    >>> from sklearn_pathkernel._model._network import placement
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
