"""Tests for the default MLP and the module-factory contract."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_pathkernel._model._network import (
    ACTIVATIONS,
    InputAdapter,
    adapt_input,
    build_module,
    check_module_output,
    check_rows_independent,
    check_token_range,
    evaluation_mode,
    forward,
    in_evaluation_mode,
    make_mlp,
    mode_changes_output,
    trainable_parameters,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "activation, cls",
    [
        ("identity", nn.Identity),
        ("logistic", nn.Sigmoid),
        ("tanh", nn.Tanh),
        ("relu", nn.ReLU),
    ],
)
def test_make_mlp_layer_structure(activation, cls):
    net = make_mlp(3, 2, (5, 4), activation, generator=_gen(0))
    assert isinstance(net, nn.Sequential)
    layers = list(net)
    assert [type(m) for m in layers] == [nn.Linear, cls, nn.Linear, cls, nn.Linear]
    widths = [(m.in_features, m.out_features) for m in layers[::2]]
    assert widths == [(3, 5), (5, 4), (4, 2)]
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert all(p.device.type == "cpu" for p in net.parameters())
    assert net(torch.zeros(6, 3)).shape == (6, 2)


def test_activation_table():
    assert set(ACTIVATIONS) == {"identity", "logistic", "tanh", "relu"}


@pytest.mark.parametrize("sizes", [(), []])
def test_make_mlp_without_hidden_layers_is_one_linear(sizes):
    net = make_mlp(4, 3, sizes, "relu", generator=_gen(0))
    layers = list(net)
    assert len(layers) == 1
    assert isinstance(layers[0], nn.Linear)
    assert (layers[0].in_features, layers[0].out_features) == (4, 3)


def test_make_mlp_single_hidden_layer():
    net = make_mlp(2, 1, [7], "tanh", generator=_gen(0))
    assert [type(m) for m in net] == [nn.Linear, nn.Tanh, nn.Linear]
    assert [name for name, _ in trainable_parameters(net)] == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    ]


def test_make_mlp_same_seed_same_weights():
    a = make_mlp(3, 2, (6,), "tanh", generator=_gen(7))
    b = make_mlp(3, 2, (6,), "tanh", generator=_gen(7))
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        assert torch.equal(pa, pb)


def test_make_mlp_different_seeds_differ():
    a = make_mlp(3, 2, (6,), "tanh", generator=_gen(7))
    b = make_mlp(3, 2, (6,), "tanh", generator=_gen(8))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert not torch.equal(pa, pb)


def test_make_mlp_draws_from_generator_not_global_rng():
    with torch.random.fork_rng(devices=[]):
        before = torch.get_rng_state()
        torch.manual_seed(123)
        a = make_mlp(3, 2, (6,), "relu", generator=_gen(1))
        torch.manual_seed(456)
        b = make_mlp(3, 2, (6,), "relu", generator=_gen(1))
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa, pb)
    assert torch.equal(torch.get_rng_state(), before)


def test_make_mlp_leaves_global_rng_untouched():
    before = torch.get_rng_state()
    make_mlp(5, 2, (7, 3), "tanh", generator=_gen(0))
    assert torch.equal(torch.get_rng_state(), before)


def test_make_mlp_advances_generator():
    gen = _gen(3)
    a = make_mlp(3, 2, (6,), "tanh", generator=gen)
    b = make_mlp(3, 2, (6,), "tanh", generator=gen)
    assert not torch.equal(a[0].weight, b[0].weight)


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
def test_make_mlp_glorot_bound(activation):
    widths = [20, 30, 10]
    net = make_mlp(20, 10, (30,), activation, generator=_gen(0))
    # scikit-learn's _init_coef: factor 2 for the logistic activation, else 6.
    factor = 2.0 if activation == "logistic" else 6.0
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert len(linears) == 2
    for linear, fan_in, fan_out in zip(linears, widths[:-1], widths[1:]):
        bound = math.sqrt(factor / (fan_in + fan_out))
        for p in (linear.weight, linear.bias):
            assert p.abs().max().item() <= bound
        # The bound is reached, not just respected: the draw spans the interval.
        assert linear.weight.abs().max().item() > 0.9 * bound
        assert linear.weight.min().item() < -0.9 * bound
        assert linear.weight.max().item() > 0.9 * bound
        # Uniform on [-b, b] has mean |w| = b / 2.
        assert linear.weight.abs().mean().item() == pytest.approx(bound / 2, rel=0.15)


# -- build_module ------------------------------------------------------------


def test_build_module_deep_copies_instance():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        original = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    saved = {k: v.clone() for k, v in original.state_dict().items()}

    copy = build_module(original, 3, 1, seed=0)
    assert copy is not original
    assert isinstance(copy, nn.Sequential)
    for (name, p), q in zip(copy.named_parameters(), original.parameters()):
        assert p is not q
        assert p.data_ptr() != q.data_ptr(), name
        assert torch.equal(p, q)

    # Train the copy: the original does not move.
    optimiser = torch.optim.SGD(copy.parameters(), lr=0.5)
    x = torch.ones(5, 3)
    for _ in range(3):
        optimiser.zero_grad()
        copy(x).pow(2).sum().backward()
        optimiser.step()
    assert not torch.equal(copy[0].weight, original[0].weight)
    for name, value in original.state_dict().items():
        assert torch.equal(value, saved[name]), name
    assert all(p.grad is None for p in original.parameters())


def test_build_module_calls_factory_with_shape():
    calls = []

    def factory(n_features, n_outputs):
        calls.append((n_features, n_outputs))
        return nn.Linear(n_features, n_outputs)

    module = build_module(factory, 5, 3, seed=0)
    assert calls == [(5, 3)]
    assert isinstance(module, nn.Linear)
    assert (module.in_features, module.out_features) == (5, 3)


def test_build_module_factory_reproducible_and_global_rng_untouched():
    def factory(n_features, n_outputs):
        return nn.Sequential(
            nn.Linear(n_features, 8), nn.ReLU(), nn.Linear(8, n_outputs)
        )

    with torch.random.fork_rng(devices=[]):
        before = torch.get_rng_state()
        a = build_module(factory, 4, 2, seed=11)
        assert torch.equal(torch.get_rng_state(), before)
        torch.rand(10)  # move the global RNG: must not matter
        moved = torch.get_rng_state()
        b = build_module(factory, 4, 2, seed=11)
        c = build_module(factory, 4, 2, seed=12)
        assert torch.equal(torch.get_rng_state(), moved)

    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb)
        assert not torch.equal(pa, pc)


def test_build_module_factory_restores_global_rng_state():
    def factory(n_features, n_outputs):
        torch.rand(100)  # consume the global RNG inside the factory
        return nn.Linear(n_features, n_outputs)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2024)
        state = torch.get_rng_state()
        build_module(factory, 3, 1, seed=5)
        assert torch.equal(torch.get_rng_state(), state)
        # The global stream continues exactly where it was.
        expected = torch.rand(4, generator=torch.Generator().set_state(state))
        assert torch.equal(torch.rand(4), expected)


def test_build_module_factory_seed_is_torch_manual_seed():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        expected = nn.Linear(4, 2)
    module = build_module(lambda p, o: nn.Linear(p, o), 4, 2, seed=3)
    assert torch.equal(module.weight, expected.weight)
    assert torch.equal(module.bias, expected.bias)


@pytest.mark.parametrize(
    "returned, type_name",
    [(None, "NoneType"), (lambda x: x, "function"), (torch.zeros(3), "Tensor")],
)
def test_build_module_factory_returning_non_module_raises(returned, type_name):
    with pytest.raises(
        TypeError,
        match=rf"must return a torch\.nn\.Module; got {type_name} instead",
    ):
        build_module(lambda p, o: returned, 3, 1, seed=0)


# -- forward and check_module_output ----------------------------------------


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.fn(x)


def test_forward_makes_outputs_two_dimensional():
    x = torch.arange(6.0).reshape(3, 2)
    out = forward(_Lambda(lambda x: x.sum(dim=1)), x)
    assert out.shape == (3, 1)
    torch.testing.assert_close(out[:, 0], x.sum(dim=1))
    out = forward(_Lambda(lambda x: x * 2), x)
    assert out.shape == (3, 2)


@pytest.mark.parametrize("n_outputs", [1, 3])
def test_check_module_output_accepts_right_shape(n_outputs):
    module = nn.Linear(4, n_outputs)
    check_module_output(module, torch.zeros(2, 4), n_outputs)


def test_check_module_output_accepts_1d_for_single_output():
    check_module_output(_Lambda(lambda x: x.sum(dim=1)), torch.zeros(2, 4), 1)


@pytest.mark.parametrize("n_outputs, width", [(2, 3), (1, 2), (3, 1)])
def test_check_module_output_wrong_width(n_outputs, width):
    module = nn.Linear(4, width)
    with pytest.raises(
        ValueError,
        match=(
            rf"outputs of shape \(n_samples, {n_outputs}\); got \(2, {width}\) "
            r"for an input of shape \(2, 4\)"
        ),
    ):
        check_module_output(module, torch.zeros(2, 4), n_outputs)


def test_check_module_output_rejects_1d_for_several_outputs():
    module = _Lambda(lambda x: x.sum(dim=1))
    with pytest.raises(
        ValueError, match=r"outputs of shape \(n_samples, 2\); got \(2,\)"
    ):
        check_module_output(module, torch.zeros(2, 4), 2)


def test_check_module_output_rejects_1d_with_wrong_length():
    # One number per *feature* instead of per row: 1-D, but not (n_samples,).
    module = _Lambda(lambda x: x.sum(dim=0))
    with pytest.raises(ValueError, match=r"outputs of shape \(n_samples, 1\)"):
        check_module_output(module, torch.zeros(2, 4), 1)


def test_check_module_output_rejects_3d():
    module = _Lambda(lambda x: x.sum(dim=1)[:, None, None])
    with pytest.raises(ValueError, match=r"got \(2, 1, 1\)"):
        check_module_output(module, torch.zeros(2, 4), 1)


def test_check_module_output_module_that_raises():
    module = nn.Linear(5, 1)  # expects 5 features, gets 4
    with pytest.raises(
        ValueError,
        match=r"The 'module' failed on an input of shape \(2, 4\) "
        r"\(n_samples, n_features\): RuntimeError",
    ) as info:
        check_module_output(module, torch.zeros(2, 4), 1)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_check_module_output_does_not_record_gradients():
    seen = []

    def fn(x):
        seen.append(torch.is_grad_enabled())
        return x.sum(dim=1, keepdim=True)

    check_module_output(_Lambda(fn), torch.zeros(2, 4), 1)
    assert seen == [False]


def test_trainable_parameters_skips_frozen():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    net[0].weight.requires_grad_(False)
    named = trainable_parameters(net)
    assert [name for name, _ in named] == ["0.bias", "1.weight", "1.bias"]
    assert named[0][1] is net[0].bias


# -- inputs: shapes and token ids ---------------------------------------------
def test_input_adapter_gives_the_module_its_shape_and_int64_ids():
    seen = []

    def record(x):
        seen.append((tuple(x.shape), x.dtype))
        return x.reshape(x.shape[0], -1).sum(dim=1, keepdim=True).double()

    adapter = InputAdapter(_Lambda(record), input_shape=(2, 3), tokens=True)
    rows = torch.arange(12.0).reshape(2, 6)
    out = adapter(rows)
    assert seen == [((2, 2, 3), torch.int64)]
    assert torch.equal(out, rows.sum(dim=1, keepdim=True).double())
    # The user's network is the one child: parameter names gain "module.".
    net = nn.Linear(6, 1)
    names = [n for n, _ in InputAdapter(net, (6,)).named_parameters()]
    assert names == ["module.weight", "module.bias"]


def test_adapt_input_wraps_only_when_needed():
    net = nn.Linear(4, 1)
    assert adapt_input(net) is net
    assert adapt_input(net, (2, 2)).input_shape == (2, 2)
    assert adapt_input(net, tokens=True).tokens


def test_check_module_output_names_the_shape_the_module_saw():
    adapter = InputAdapter(nn.Conv2d(2, 1, 3), input_shape=(1, 2, 2))
    with pytest.raises(
        ValueError,
        match=r"failed on an input of shape \(2, 1, 2, 2\) \(n_samples, "
        r"\*input_shape\): RuntimeError",
    ):
        check_module_output(adapter, torch.zeros(2, 4), 1)


def test_check_token_range_names_the_row_and_the_id():
    net = InputAdapter(nn.Sequential(nn.Embedding(5, 2), nn.Flatten()), tokens=True)
    check_token_range(net, np.array([[0.0, 4.0], [1.0, 2.0]]))  # every id fits
    with pytest.raises(
        ValueError,
        match=r"failed on row 1 of Y, which holds its largest token id, 5: "
        r"IndexError: .* below the num_embeddings",
    ):
        check_token_range(net, np.array([[0.0, 4.0], [1.0, 5.0]]), name="Y")


# -- modes ------------------------------------------------------------------
@pytest.mark.parametrize("Norm", [nn.BatchNorm1d, nn.SyncBatchNorm])
def test_training_mode_batchnorm_is_refused_with_the_ways_out(Norm):
    net = nn.Sequential(nn.Linear(3, 4), Norm(4), nn.Linear(4, 1))
    with pytest.raises(
        ValueError,
        match=rf"{Norm.__name__} \('1'\) in training mode: .* mixes the rows.* "
        r"nn.GroupNorm or nn.LayerNorm .* track_running_stats=True in eval mode",
    ):
        check_rows_independent(net)
    net[1].eval()  # running statistics: an affine map per row
    check_rows_independent(net)
    no_stats = nn.BatchNorm1d(4, track_running_stats=False).eval()
    with pytest.raises(ValueError, match="with track_running_stats=False"):
        check_rows_independent(nn.Sequential(no_stats))


def test_row_independent_norms_are_accepted():
    net = nn.Sequential(
        nn.Linear(3, 4), nn.LayerNorm(4), nn.Unflatten(1, (4, 1)), nn.GroupNorm(2, 4)
    )
    check_rows_independent(net)


def test_evaluation_mode_restores_every_flag():
    net = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.BatchNorm1d(4))
    net[2].eval()
    with evaluation_mode(net):
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == [True, True, True, False]
    with pytest.raises(RuntimeError), evaluation_mode(net):
        raise RuntimeError  # restored on the way out of an error too
    assert [m.training for m in net.modules()] == [True, True, True, False]


def test_in_evaluation_mode_runs_the_function_in_eval_mode():
    @in_evaluation_mode
    def modes(module, factor=1):
        return [m.training for m in module.modules()], factor

    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    assert modes(net, factor=2) == ([False, False, False], 2)
    assert net.training and net[1].training


def test_mode_changes_output_detects_dropout_and_leaves_the_rng_alone():
    X = torch.randn(8, 3)
    plain = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    dropout = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 1))
    state = torch.get_rng_state()
    assert not mode_changes_output(plain, X)
    assert mode_changes_output(dropout, X)
    assert not mode_changes_output(dropout.eval(), X)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("activation, factor", [("logistic", 2.0), ("relu", 6.0)])
def test_make_mlp_from_a_random_state_draws_mlps_numbers_in_mlps_order(
    activation, factor
):
    """scikit-learn's _init_coef, layer by layer: the (fan_in, fan_out) coef,
    then the intercept, in float64, cast to the dtype asked for."""
    rng, replay = np.random.RandomState(4), np.random.RandomState(4)
    net = make_mlp(3, 2, (5, 4), activation, random_state=rng, dtype=torch.float64)
    net32 = make_mlp(3, 2, (5,), activation, random_state=np.random.RandomState(4))
    for fan_in, fan_out, layer in zip((3, 5, 4), (5, 4, 2), list(net)[::2]):
        bound = np.sqrt(factor / (fan_in + fan_out))
        coef = replay.uniform(-bound, bound, (fan_in, fan_out))
        np.testing.assert_array_equal(layer.weight.detach().numpy(), coef.T)
        np.testing.assert_array_equal(
            layer.bias.detach().numpy(), replay.uniform(-bound, bound, fan_out)
        )
        if fan_in == 3:
            assert net32[0].weight.dtype == torch.float32
            np.testing.assert_array_equal(
                net32[0].weight.detach().numpy(), coef.T.astype(np.float32)
            )
    assert rng.randint(2**31) == replay.randint(2**31)  # as many draws


def test_make_mlp_takes_one_source_of_weights():
    with pytest.raises(TypeError, match="exactly one of generator and random_state"):
        make_mlp(3, 1, (4,), "relu")
    with pytest.raises(TypeError, match="exactly one of generator and random_state"):
        make_mlp(
            3, 1, (4,), "relu", generator=_gen(0), random_state=np.random.RandomState(0)
        )
