"""The layer-hook engine against the per-example autograd reference."""

import numpy as np
import pytest
import torch
from _oracle import jacobian_rows, tangent_kernel_reference
from torch import nn

from sklearn_pathkernel import tangent_kernel
from sklearn_pathkernel.engines import HookEngine, _hooks, select_engine


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
    def __init__(self, padding_idx=None):
        super().__init__()
        self.emb = nn.Embedding(11, 4, padding_idx=padding_idx)
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


def _force(form, monkeypatch):
    if form != "cost":
        forced = form == "ghost"
        monkeypatch.setattr(_hooks, "_ghost_is_cheaper", lambda *args: forced)
    return form


@pytest.fixture(params=["cost", "ghost", "instantiated"])
def form(request, monkeypatch):
    """Each Kronecker layer by the cost rule, or forced into one form."""
    return _force(request.param, monkeypatch)


@pytest.fixture(params=["ghost", "instantiated"])
def forced_form(request, monkeypatch):
    """Each Kronecker layer forced into one form (the cost rule mixes them)."""
    return _force(request.param, monkeypatch)


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernels_match_the_reference(case, form):
    _check_kernels(case)


@pytest.mark.parametrize("case", ["embedding", "embedding-padding", "tied"])
@pytest.mark.parametrize("sparse", [0, 10**9], ids=["token-pairs", "all-pairs"])
def test_embeddings_by_token_pairs_or_all_position_pairs(case, sparse, monkeypatch):
    monkeypatch.setattr(_hooks, "SPARSE_TOKENS", sparse)
    monkeypatch.setattr(_hooks, "GHOST_SCRATCH", 64)  # several pieces of pairs
    monkeypatch.setattr(_hooks, "_ghost_is_cheaper", lambda *args: True)
    _check_kernels(case)


def _check_kernels(case):
    net, params, X, Y = _setup(case)
    bound = _engine(net, params, X)
    full = tangent_kernel_reference(net, params, X, Y, trace=False)
    vectors = _floats(len(Y), full.shape[-1], seed=3)
    with torch.no_grad():  # as the blocked loops call engines
        state_x, state_y = bound.state(params, X), bound.state(params, Y)
        traced = bound.contract(state_x, state_y, True)
        whole = bound.contract(state_x, state_y, False)
        applied = bound.contract_vector(state_x, state_y, vectors)
        diagonal = bound.diagonal(state_x, X)
    check = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(traced.numpy(), np.einsum("ijaa->ij", full), **check)
    np.testing.assert_allclose(whole.numpy(), full, **check)
    want = np.einsum("ijab,jb->ija", full, vectors.numpy())
    np.testing.assert_allclose(applied.numpy(), want, **check)
    want = np.diag(tangent_kernel_reference(net, params, X))
    np.testing.assert_allclose(diagonal.numpy(), want, rtol=1e-10)


def _basis(heights):
    """Factors whose columns run over every tuple of basis vectors (exact sketch)."""
    grids = torch.meshgrid(*[torch.arange(h) for h in heights], indexing="ij")
    return tuple(
        torch.eye(h, dtype=torch.float64)[:, grid.reshape(-1)]
        for h, grid in zip(heights, grids)
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_sketch_pieces_sum_to_the_kernel(case, forced_form, monkeypatch):
    monkeypatch.setattr(_hooks, "SKETCH_ROWS", 16)  # several pieces per layer
    net, params, X, Y = _setup(case)
    bound = _engine(net, params, X)
    want = tangent_kernel_reference(net, params, X, Y)
    with torch.no_grad():
        state_x, state_y = bound.state(params, X), bound.state(params, Y)
        shapes = bound.sketch_shapes(state_x["n_outputs"])
        assert all(heights[0] <= 16 for heights in shapes)
        got = 0.0
        for piece, heights in enumerate(shapes):
            factors = _basis(heights)
            s_x = bound.sketch(state_x, X, piece, factors)
            assert s_x.shape == (len(X), np.prod(heights))
            got = got + s_x @ bound.sketch(state_y, Y, piece, factors).T
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["cnn", "embedding", "transformer"])
def test_states_at_different_parameters_pair_their_jacobians(case):
    """J(X; w') J(Y; w)^T, as the exact decomposition needs."""
    net, params, X, Y = _setup(case)
    shifted = {n: p + 0.05 for n, p in params.items()}
    bound = _engine(net, params, X)
    with torch.no_grad():
        got = bound.contract(bound.state(shifted, X), bound.state(params, Y), False)
    want = np.einsum(
        "iad,jbd->ijab", jacobian_rows(net, shifted, X), jacobian_rows(net, params, Y)
    )
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["cnn", "tied", "transformer"])
def test_frozen_and_left_out_parameters_get_no_term(case):
    net, params, X, Y = _setup(case)
    names = sorted(params)
    subset = {n: params[n] for n in names[::2]}  # every other one
    bound = _engine(net, subset, X)
    with torch.no_grad():
        got = bound.contract(bound.state(subset, X), bound.state(subset, Y), True)
    want = tangent_kernel_reference(net, subset, X, Y)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


def test_a_frozen_parameter_is_left_out_of_the_functional_kernel():
    net, params, X, _ = _setup("cnn")
    net[0].weight.requires_grad_(False)
    trained = {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}
    K = tangent_kernel(net, trained, X)
    np.testing.assert_allclose(
        K, tangent_kernel_reference(net, trained, X), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("case", ["cnn", "conv1d", "embedding", "transformer"])
def test_auto_picks_the_hooks_engine(case):
    net, params, X, _ = _setup(case)
    assert select_engine("auto", net, list(params)).name == "hooks"


def test_a_layer_without_rule_is_exact_when_named_but_not_picked_by_auto():
    net, params, X, Y = _setup("fallback")
    assert HookEngine.supports(net) and not HookEngine.covers(net)
    assert select_engine("auto", net, list(params)).name == "jacobian"
    K = tangent_kernel(net, None, X, Y, engine="hooks")
    np.testing.assert_allclose(
        K, tangent_kernel_reference(net, params, X, Y), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("case", ["cnn", "embedding", "sequence"])
def test_functional_kernels_take_images_sequences_and_tokens(case):
    net, params, X, Y = _setup(case)
    for trace in (True, False):
        K = tangent_kernel(net, None, X, Y, trace=trace)
        want = tangent_kernel_reference(net, params, X, Y, trace=trace)
        np.testing.assert_allclose(K, want, rtol=1e-10, atol=1e-12)


def test_results_are_bit_identical_across_budgets_and_jobs(monkeypatch):
    monkeypatch.setattr(_hooks, "GHOST_SCRATCH", 2**10)  # many sub-blocks
    net, _, _, _ = _setup("sequence")
    X = _floats(40, 5, 3, seed=4)
    reference = tangent_kernel(net, None, X, trace=False, working_memory=1024)
    for options in ({"working_memory": 0.01}, {"n_jobs": 2, "working_memory": 0.01}):
        K = tangent_kernel(net, None, X, trace=False, **options)
        assert np.array_equal(K, reference), options
    assert np.array_equal(reference, reference.transpose(1, 0, 3, 2))


def test_row_axis_is_found_whatever_its_position():
    net, params, X, _ = _setup("transformer")  # the layer sees (L, n, E)
    bound = _engine(net, params, X)
    layer = next(lay for lay in bound.plan.layers if lay.prefix == "layer.linear1")
    assert layer.calls[0]["args"] == [1] and layer.calls[0]["outputs"] == [1]


@pytest.mark.parametrize(
    "module, message",
    [
        (
            lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4).train()),
            r"BatchNorm1d \('1'\) in training mode: it normalises each batch",
        ),
        (
            lambda: nn.Sequential(
                nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False).eval()
            ),
            r"BatchNorm1d \('1'\) with track_running_stats=False: it normalises",
        ),
        (
            lambda: nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5).train()),
            "Dropout layer '1' is active",
        ),
    ],
)
def test_what_mixes_rows_or_is_random_is_refused(module, message):
    net = module().double()
    params = {n: p.detach() for n, p in net.named_parameters()}
    X = _floats(3, 3, seed=0)
    with pytest.raises(ValueError, match=message):
        select_engine("hooks", net, list(params), example=X)
    if not getattr(net[1], "track_running_stats", True):
        return  # no running statistics: eval() does not help
    bound = select_engine("hooks", net.eval(), list(params), example=X)
    net.train()  # checked again at every state: the mode may change
    with pytest.raises(ValueError, match=message), torch.no_grad():
        bound.state(params, X)


def test_embedding_with_max_norm_is_refused():
    net = nn.Sequential(nn.Embedding(5, 2, max_norm=1.0), nn.Flatten())
    with pytest.raises(ValueError, match="Embedding layer '0' with max_norm"):
        select_engine("hooks", net, ["0.weight"], example=torch.tensor([[1, 2]]))


def test_bytes_per_row_needs_an_example_or_a_state():
    net, params, X, _ = _setup("cnn")
    bound = HookEngine(net, list(params))
    with pytest.raises(RuntimeError, match="needs an example row before"):
        bound.bytes_per_row(3, 8)
    with torch.no_grad():
        bound.state(params, X)
    assert bound.bytes_per_row(3, 8) > 0


def test_bytes_per_row_counts_the_state():
    net, params, X, _ = _setup("cnn")
    bound = _engine(net, params, X)
    with torch.no_grad():
        state = bound.state(params, X)
    held = state["inst"].numel() + sum(a.numel() + d.numel() for a, d in state["ghost"])
    assert bound.bytes_per_row(3, 8) >= 8 * held / len(X)


def _small_cnn(n_features, n_outputs):
    """A CNN on flat 4x4 rows, so the estimators train it as they are."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 4, 4)),
        nn.Conv2d(1, 3, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(48, n_outputs),
    )


@pytest.fixture(scope="module")
def trained_cnn():
    from sklearn_pathkernel import PathKernelClassifier

    gen = np.random.default_rng(0)
    X = gen.normal(size=(24, 16))
    y = (X[:, :8].sum(axis=1) > 0).astype(int) + (X[:, 0] > 1)
    est = PathKernelClassifier(
        module=_small_cnn, max_iter=4, dtype="float64", random_state=0
    ).fit(X, y)
    return est, X


def test_estimator_kernels_and_decomposition_go_through_the_hooks_engine(trained_cnn):
    from sklearn_pathkernel import path_kernel
    from sklearn_pathkernel._decompose import decompose_path
    from sklearn_pathkernel._path import path_kernel_diagonal

    est, X = trained_cnn
    module, trajectory = est.module_, est.trajectory_
    assert select_engine("auto", module, trajectory.parameter_names).name == "hooks"
    for trace in (True, False):
        np.testing.assert_allclose(
            path_kernel(module, trajectory, X, trace=trace),
            path_kernel(module, trajectory, X, trace=trace, engine="jacobian"),
            rtol=1e-10,
            atol=1e-12,
        )
    np.testing.assert_allclose(
        path_kernel_diagonal(module, trajectory, X),
        np.diag(path_kernel(module, trajectory, X, engine="jacobian")),
        rtol=1e-10,
    )
    X_t = torch.as_tensor(X)
    for exact in (False, True):
        got = decompose_path(module, trajectory, X_t, X_t[:5], exact=exact)
        want = decompose_path(
            module, trajectory, X_t, X_t[:5], exact=exact, engine="jacobian"
        )
        np.testing.assert_allclose(
            got.contributions, want.contributions, rtol=1e-9, atol=1e-12
        )
        np.testing.assert_allclose(got.bias, want.bias, rtol=1e-9, atol=1e-12)


def test_random_features_through_the_hooks_engine(trained_cnn):
    from sklearn_pathkernel import path_kernel
    from sklearn_pathkernel._features import path_features

    est, X = trained_cnn
    module, trajectory = est.module_, est.trajectory_
    K = path_kernel(module, trajectory, X)
    phi, diagonal = path_features(
        module, trajectory, X, n_components=4000, seed=0, engine="hooks"
    )
    np.testing.assert_allclose(diagonal, np.diag(K), rtol=1e-10)
    # An unbiased estimate: 4000 components leave about 5% relative noise.
    error = np.abs(phi @ phi.T - K).max() / np.abs(K).max()
    assert error < 0.2


@pytest.mark.parametrize("case", ["cnn", "tied", "transformer", "conv1d"])
def test_signals_by_batched_backward_agree(case, monkeypatch):
    """Signals from one vmapped backward of O seeds, not from O copies."""
    monkeypatch.setattr(_hooks, "REPLICATE", False)
    net, params, X, Y = _setup(case)
    bound = _engine(net, params, X)
    assert not bound.plan.replicate
    with torch.no_grad():
        got = bound.contract(bound.state(params, X), bound.state(params, Y), False)
    want = tangent_kernel_reference(net, params, X, Y, trace=False)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


class _Positional(nn.Module):
    """A positional table computed once for all rows: no row axis."""

    def __init__(self):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(7, 3), nn.Embedding(4, 3)

    def forward(self, x):
        return (self.tokens(x) + self.positions(torch.arange(4))).sum(dim=(1, 2))


def test_an_output_shared_by_all_rows_is_refused():
    net = _Positional()
    with pytest.raises(ValueError, match="layer 'positions' gives an output without"):
        select_engine("hooks", net, ["positions.weight"], example=_tokens(2, 4, 7, 0))
