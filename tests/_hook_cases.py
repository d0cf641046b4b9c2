"""Modules, inputs and fixtures shared by the hooks engine's test modules."""

import functools

import numpy as np
import torch
from _oracle import tangent_kernel_reference
from torch import nn

from sklearn_pathkernel.engines import select_engine
from sklearn_pathkernel.engines._hooks import _ghost


class _Residual(nn.Module):
    """A ResNet block's ``out += shortcut`` then in-place relu, with LayerNorm."""

    def __init__(self):
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.norm(self.a(x))
        h += x  # modifies the norm's output in place
        return self.b(torch.relu_(h))


class _Tied(nn.Module):
    """A shared layer called twice, and a weight tied between two layers."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(3, 3)
        self.emb = nn.Embedding(7, 3)
        self.out = nn.Linear(3, 7, bias=False)
        self.out.weight = self.emb.weight
        self.head = nn.Linear(7, 2)

    def forward(self, tokens):
        h = self.emb(tokens).mean(dim=1)
        h = torch.tanh(self.shared(torch.tanh(self.shared(h))))
        return self.head(self.out(h))


class _EmbeddingBag(nn.Module):
    def __init__(self, padding_idx=None, vocabulary=11):
        super().__init__()
        self.emb = nn.Embedding(vocabulary, 4, padding_idx=padding_idx)
        self.mlp = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))

    def forward(self, tokens):
        return self.mlp(self.emb(tokens).mean(dim=1))


class _Sequence(nn.Module):
    """Linear layers applied at every position, then a pooled head."""

    def __init__(self, width=4):
        super().__init__()
        self.a, self.b = nn.Linear(3, width), nn.Linear(width, 2)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x))).sum(dim=1)


class _Scale(nn.Module):
    """A layer without a rule: the per-layer fallback."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 4))

    def forward(self, x):
        return torch.sin(x * self.scale)


def _cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3, stride=2, groups=2, padding_mode="reflect", padding=1),
        nn.GroupNorm(2, 4),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(16, 3),
    )


def _conv1d():
    return nn.Sequential(
        nn.Conv1d(2, 3, 3, dilation=2, padding="same"),
        nn.BatchNorm1d(3),
        nn.Tanh(),
        nn.Conv1d(3, 2, 2, stride=2, bias=False),
        nn.Flatten(),
        nn.Linear(8, 1),
    )


def _transformer():
    return nn.TransformerEncoderLayer(8, 2, dim_feedforward=6, dropout=0.0)


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        out, _ = self.attn(x, x, x)
        return self.head(out.mean(dim=1))


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = _transformer()
        self.head = nn.Linear(8, 2)

    def forward(self, x):  # (n, L, E) -> (L, n, E): the rows on axis 1
        return self.head(self.layer(x.transpose(0, 1)).mean(dim=0))


def _tokens(n, length, vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=gen)


def _floats(*shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


# (module factory, input factory) pairs covering every rule.
CASES = {
    "cnn": (_cnn, lambda n, s: _floats(n, 1, 4, 4, seed=s)),
    "conv1d": (_conv1d, lambda n, s: _floats(n, 2, 8, seed=s)),
    "residual-layernorm": (_Residual, lambda n, s: _floats(n, 4, seed=s)),
    "sequence": (_Sequence, lambda n, s: _floats(n, 5, 3, seed=s)),
    "sequence-wide": (lambda: _Sequence(40), lambda n, s: _floats(n, 2, 3, seed=s)),
    "embedding": (_EmbeddingBag, lambda n, s: _tokens(n, 6, 11, s)),
    "embedding-padding": (
        lambda: _EmbeddingBag(padding_idx=0),
        lambda n, s: _tokens(n, 6, 11, s),
    ),
    "tied": (_Tied, lambda n, s: _tokens(n, 4, 7, s)),
    "fallback": (
        lambda: nn.Sequential(nn.Linear(3, 4), _Scale(), nn.Linear(4, 2)),
        lambda n, s: _floats(n, 3, seed=s),
    ),
    "attention": (_Attention, lambda n, s: _floats(n, 3, 4, seed=s)),
    "transformer": (_Encoder, lambda n, s: _floats(n, 3, 8, seed=s)),
}


def _setup(case):
    make, data = CASES[case]
    torch.manual_seed(0)  # this test's own modules: default init is fine here
    net = make().double().eval()
    params = {n: p.detach() for n, p in net.named_parameters()}
    return net, params, data(5, 1), data(4, 2)


def _engine(net, params, X=None):
    return select_engine("hooks", net, list(params), example=X)


def force(form, monkeypatch):
    """Each Kronecker layer by the cost rule (``"cost"``) or forced into one form."""
    if form != "cost":
        forced = form == "ghost"
        monkeypatch.setattr(_ghost, "ghost_is_cheaper", lambda *args: forced)


def metric_of(params, seed=7):
    """A random positive metric spread over three decades, as Adam's is."""
    gen = torch.Generator().manual_seed(seed)
    return {
        n: 10.0 ** (3 * torch.rand(p.shape, generator=gen, dtype=p.dtype) - 2)
        for n, p in params.items()
    }


def _basis(heights):
    """Factors whose columns run over every tuple of basis vectors (exact sketch)."""
    grids = torch.meshgrid(*[torch.arange(h) for h in heights], indexing="ij")
    return tuple(
        torch.eye(h, dtype=torch.float64)[:, grid.reshape(-1)]
        for h, grid in zip(heights, grids)
    )


def _check_kernels(case, metric=False):
    """Traced, full, applied and diagonal kernels against the reference.

    With ``metric`` true, in the random metric :func:`metric_of`.
    """
    net, params, X, Y = _setup(case)
    metric = metric_of(params) if metric else None
    bound = _engine(net, params, X)
    full, diagonal_want = _reference(case, metric is not None)
    check_engine(bound, params, X, Y, metric, full, diagonal_want)


def check_engine(bound, params, X, Y, metric, full, diagonal_want):
    """``bound``'s traced, full, applied and diagonal kernels at 1e-10.

    ``full`` is the reference ``(n, m, O, O)`` kernel of ``X`` and ``Y``,
    ``diagonal_want`` the reference traced diagonal of ``X``.
    """
    vectors = _floats(len(Y), full.shape[-1], seed=3)
    with torch.no_grad():  # as the blocked loops call engines
        state_x = bound.state(params, X, metric=metric)
        state_y = bound.state(params, Y, metric=metric)
        traced = bound.contract(state_x, state_y, True)
        whole = bound.contract(state_x, state_y, False)
        applied = bound.contract_vector(state_x, state_y, vectors)
        diagonal = bound.diagonal(state_x, X)
    check = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(traced.numpy(), np.einsum("ijaa->ij", full), **check)
    np.testing.assert_allclose(whole.numpy(), full, **check)
    want = np.einsum("ijab,jb->ija", full, vectors.numpy())
    np.testing.assert_allclose(applied.numpy(), want, **check)
    np.testing.assert_allclose(diagonal.numpy(), diagonal_want, rtol=1e-10)
    # Folded states (an influence's loss derivatives): one output, u^T K v.
    u = _floats(len(X), full.shape[-1], seed=4)
    with torch.no_grad():
        folded_x = bound.folded_state(params, X, u, metric=metric)
        folded_y = bound.folded_state(params, Y, vectors, metric=metric)
        folded = bound.contract(folded_x, folded_y, True)
        own = bound.diagonal(folded_x, X)
        self_x = bound.contract(folded_x, folded_x, True)
    want = np.einsum("ia,ijab,jb->ij", u.numpy(), full, vectors.numpy())
    np.testing.assert_allclose(folded.numpy(), want, **check)
    np.testing.assert_allclose(own.numpy(), np.diag(self_x.numpy()), rtol=1e-10)


@functools.cache
def _reference(case, metric):
    """The reference's full ``K(X, Y)`` and ``diag K(X, X)`` of a case, once.

    Cached: several tests (forms, sparse or dense token pairs) share it.
    """
    net, params, X, Y = _setup(case)
    metric = metric_of(params) if metric else None
    full = tangent_kernel_reference(net, params, X, Y, trace=False, metric=metric)
    diagonal = np.diag(tangent_kernel_reference(net, params, X, metric=metric))
    return full, diagonal
