"""The interface every engine implements, and what the torch.func engines share."""

import threading
from abc import ABC, abstractmethod

# One lock for every functional use of a module. torch.func keeps its
# transform stack (vmap, grad and dual levels) in global state, so two threads
# inside transforms at once corrupt each other; and functional_call swaps the
# module's parameters in place for the call, so two threads in functional
# forwards of one module (the hooks engine's state, the decomposition's jvp,
# the query-side walk) would compute at each other's checkpoints. Reentrant:
# the hooks engine's per-layer fallback takes it again inside a state. With
# thread-based joblib workers these gain nothing from n_jobs > 1
# (process-based backends are unaffected).
TORCH_FUNC_LOCK = threading.RLock()


class Engine(ABC):
    """Turns blocks of rows into states at one point ``w``, and contracts them.

    The blocked loops (``_kernels/_path.py``, ``_explain/_decompose.py``,
    ``_kernels/_features.py``) call exactly these methods and nothing else,
    so an engine is free to choose what a *state* is: per-layer inputs and
    output signals, per-example Jacobians, or the rows themselves. Every
    method they call is abstract: a new engine that forgets one fails when
    it is built, not half-way through a kernel. ``select_engine`` asks only
    :meth:`covers`, :meth:`supports` and :attr:`supports_metric`, and builds
    every engine with the same arguments.

    Parameters
    ----------
    module : torch.nn.Module
        The network, on the device and in the dtype of the work.
    parameter_names : list of str
        The trainable parameters the kernel is taken with respect to; the
        others are held fixed.
    example : torch.Tensor, default=None
        Some rows of the input, for an engine that learns the shapes of the
        work from a probe forward (the hooks engine); others ignore it.
    metric : bool, default=False
        Whether states will be taken in a metric (the path of Adam), for an
        engine whose :meth:`bytes_per_row` depends on it; others ignore it.

    Examples
    --------
    >>> import torch
    >>> from sklearn_pathkernel.engines import ENGINES, Engine
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 1))
    >>> engine = ENGINES["jacobian"](net, ["0.weight", "0.bias"])
    >>> isinstance(engine, Engine)
    True
    >>> X = torch.eye(3)
    >>> params = {n: p.detach() for n, p in net.named_parameters()}
    >>> state = engine.state(params, X)
    >>> K = engine.contract(state, state, trace=True, static=engine.static(X, X))
    >>> K  # a linear model's tangent kernel is X X^T + 1
    tensor([[2., 1., 1.],
            [1., 2., 1.],
            [1., 1., 2.]])
    """

    #: The name under which :data:`ENGINES` lists the engine.
    name: str
    #: The modules it supports, for the message when it is asked for another.
    supported_modules: str = "any module whose forward treats rows independently"
    #: Whether :meth:`state` takes a ``metric`` (a preconditioned path, Adam).
    supports_metric: bool = False

    def __init__(self, module, parameter_names, *, example=None, metric=False):
        """Bind the engine to ``module`` and its trained ``parameter_names``.

        Every engine's constructor has exactly this signature, so
        ``select_engine`` builds each one alike; an engine that learns
        nothing from a probe or keeps no metric flag ignores ``example`` and
        ``metric``.
        """
        self.module = module

    @classmethod
    @abstractmethod
    def supports(cls, module):
        """Whether the engine computes exact kernels for ``module``.

        Parameters
        ----------
        module : torch.nn.Module
            The network.

        Returns
        -------
        supported : bool
        """

    @classmethod
    def covers(cls, module):
        """Whether ``engine="auto"`` may pick the engine for ``module``.

        The same as :meth:`supports` unless an engine runs more modules
        than it should be preferred for (the hooks engine runs any module,
        but is picked only where its layer rules cover every parametrised
        layer).

        Parameters
        ----------
        module : torch.nn.Module
            The network.

        Returns
        -------
        covered : bool
        """
        return cls.supports(module)

    @abstractmethod
    def bytes_per_row(self, n_outputs, itemsize):
        """Bytes one row's state takes while it is built and used.

        Parameters
        ----------
        n_outputs : int
            The network's number of outputs, ``O``.
        itemsize : int
            Bytes per number of the work's dtype.

        Returns
        -------
        nbytes : int
        """

    @abstractmethod
    def state(self, parameters, X, metric=None):
        """The state of the rows ``X`` at ``parameters`` (a name -> tensor dict).

        Derivatives are taken with respect to the engine's
        ``parameter_names``: a name of ``parameters`` outside them is held
        fixed at its value there, and a trained name absent from it keeps
        the module's own value.

        ``metric`` (same names and shapes, positive) makes every product of
        the state's methods the one in that diagonal metric,
        ``J(X) diag(metric) J(Y)^T`` (the path kernel of a preconditioned
        solver, docs/design.md, section 12); None is the identity. An
        engine with ``supports_metric = False`` raises for a metric.

        Parameters
        ----------
        parameters : dict of str to torch.Tensor
            The trainable parameters' values at this point of the path.
        X : torch.Tensor of shape (n, ...)
            A block of rows, on the work's device and in its dtype.
        metric : dict of str to torch.Tensor, default=None
            A positive diagonal metric, parameter by parameter.

        Returns
        -------
        state : object
            Whatever the engine's other methods take as a state.
        """

    @abstractmethod
    def static(self, X, Y):
        """What the pair of blocks shares at every checkpoint, or None.

        Computed once per pair of blocks and handed to :meth:`contract` and
        :meth:`contract_vector` at every checkpoint (for example the input
        Gram of a first layer that sees the data itself).

        Parameters
        ----------
        X, Y : torch.Tensor
            The two blocks of rows.

        Returns
        -------
        static : object or None
        """

    @abstractmethod
    def contract(self, state_x, state_y, trace, static=None):
        """The tangent kernel between two states.

        Parameters
        ----------
        state_x, state_y : object
            States of two blocks of ``n`` and ``m`` rows at the same point
            (or, for the exact decomposition, at two points).
        trace : bool
            Whether to sum the ``O x O`` kernel's diagonal over outputs.
        static : object, default=None
            What :meth:`static` returned for the pair of blocks.

        Returns
        -------
        K : torch.Tensor of shape (n, m) or (n, m, O, O)
            Summed over outputs when ``trace``, else the full kernel.
        """

    @abstractmethod
    def contract_vector(self, state_x, state_y, vectors, static=None):
        """``K[i, j] @ vectors[j]`` for every pair, shape (n, m, O).

        ``vectors`` (m, O) are per-row output vectors of ``Y`` (the
        decomposition's loss derivatives); the ``O x O`` kernel is never
        needed whole.

        Parameters
        ----------
        state_x, state_y : object
            States of two blocks of ``n`` and ``m`` rows.
        vectors : torch.Tensor of shape (m, O)
            One output vector per row of the second block.
        static : object, default=None
            What :meth:`static` returned for the pair of blocks.

        Returns
        -------
        products : torch.Tensor of shape (n, m, O)
        """

    @abstractmethod
    def folded_state(self, parameters, X, vectors, metric=None):
        """The state of the one output ``vectors[i] . f(x_i)`` of every row.

        ``vectors`` (n, O), in the rows' dtype and device, are per-row output
        vectors held constant (an influence's loss derivatives ``g``), or a
        callable that makes them from the rows' outputs ``f`` (n, O) at
        ``parameters`` (then the engine's own forward pass serves): the
        state is that of ``g^T J`` at ``parameters`` (as :meth:`state`, in
        ``metric`` when given), so a traced :meth:`contract` of two folded
        states is ``g_x^T K(x, y) g_y`` and :meth:`diagonal` of one
        ``g^T K(x, x) g``, with no ``O x O`` block. An engine that
        backpropagates output signals seeds its one backward pass with
        ``vectors``: ``O`` times less work than :meth:`state`. Folded
        states meet only folded states, in :meth:`contract` (traced),
        :meth:`contract_vector` (``O = 1``) and :meth:`diagonal`.

        Parameters
        ----------
        parameters : dict of str to torch.Tensor
            The point of the path, by parameter name.
        X : torch.Tensor of shape (n, ...)
            A block of rows, on the work's device and in its dtype.
        vectors : torch.Tensor of shape (n, O) or callable
            One output vector per row, or a callable that makes them from
            the rows' outputs ``f`` (n, O) at ``parameters``.
        metric : dict of str to torch.Tensor, default=None
            A positive diagonal metric, parameter by parameter.

        Returns
        -------
        state : object
            A folded state, for :meth:`contract`, :meth:`contract_vector`
            and :meth:`diagonal`.
        """

    @abstractmethod
    def diagonal(self, state, X):
        """``K(x_i, x_i)`` summed over outputs, row by row: shape (n,).

        No product between rows is formed.

        Parameters
        ----------
        state : object
            The state of the rows ``X``.
        X : torch.Tensor of shape (n, ...)
            The rows.

        Returns
        -------
        diagonal : torch.Tensor of shape (n,)
        """

    @abstractmethod
    def sketch_shapes(self, n_outputs):
        """How :meth:`sketch` cuts the rows' gradients into pieces.

        The traced tangent kernel is a sum over pieces,
        ``K(x, y) = sum_l <T_l(x), T_l(y)>``, of a tensor ``T_l(x)`` per
        row. Item ``l`` of the list is the shape of ``T_l``: one height for a
        plain projection (a block of ``vec J``), two for a Kronecker product
        (a Linear layer's ``vec D (x) [a, 1]``). The pieces depend only on
        the module, the trained parameters and ``n_outputs``.

        Parameters
        ----------
        n_outputs : int
            The network's number of outputs, ``O``.

        Returns
        -------
        shapes : list of tuple of int
        """

    @abstractmethod
    def sketch(self, state, X, piece, factors):
        """Piece ``piece`` of the rows' gradients, sketched: shape (n, m).

        ``factors`` holds one ``(height, m)`` matrix per height of
        ``sketch_shapes(n_outputs)[piece]``; column ``r`` of the result is
        ``T_piece(x)`` contracted with column ``r`` of every factor,
        multilinear in the factors. With independent ``N(0, 1)`` factors,
        each column has mean zero and ``E[s_r(x) s_r(y)] = <T(x), T(y)>``,
        this piece's share of the traced tangent kernel:
        ``_kernels/_features.py`` turns that into unbiased random features
        (docs/design.md, section 6).

        Parameters
        ----------
        state : object
            The state of the rows ``X``.
        X : torch.Tensor of shape (n, ...)
            The rows.
        piece : int
            Which item of :meth:`sketch_shapes` to sketch.
        factors : list of torch.Tensor
            One ``(height, m)`` matrix per height of the piece's shape.

        Returns
        -------
        sketch : torch.Tensor of shape (n, m)
        """


def count_parameters(module, parameter_names):
    """Number of scalar parameters under ``parameter_names`` in ``module``."""
    named = dict(module.named_parameters())
    return sum(named[name].numel() for name in parameter_names)


def split_parameters(parameters, parameter_names):
    """``(trained, fixed)``: the entries in ``parameter_names``, and the rest.

    The fixed ones are values to hold the module at (a frozen layer at a
    checkpoint); derivatives are taken with respect to the trained ones.
    """
    trained = {n: p for n, p in parameters.items() if n in parameter_names}
    fixed = {n: p for n, p in parameters.items() if n not in parameter_names}
    return trained, fixed


def output_vectors(vectors, outputs):
    """``folded_state``'s vectors: ``vectors`` itself, or made from ``outputs``.

    A callable's result must hold one number per row and output; it is
    taken in the outputs' dtype, detached.
    """
    if not callable(vectors):
        return vectors
    made = vectors(outputs.detach())
    if tuple(made.shape) != tuple(outputs.shape):
        raise ValueError(
            "The output vectors must hold one number per row and output, shape "
            f"{tuple(outputs.shape)}; got {tuple(made.shape)}."
        )
    return made.detach().to(outputs.dtype)
