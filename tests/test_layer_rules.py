"""The hooks engine's rules per layer type."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _hook_cases import CASES, _check_kernels, force
from _oracle import jacobian_rows
from torch import nn

from sklearn_pathkernel.engines import select_engine
from sklearn_pathkernel.engines._hooks._rules import _patches


def test_embedding_with_max_norm_is_refused():
    net = nn.Sequential(nn.Embedding(5, 2, max_norm=1.0), nn.Flatten())
    with pytest.raises(ValueError, match="Embedding layer '0' with max_norm"):
        select_engine("hooks", net, ["0.weight"], example=torch.tensor([[1, 2]]))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("form", ["cost", "ghost", "instantiated"])
def test_kernels_match_the_reference(case, form, monkeypatch):
    """Every rule, each Kronecker layer by the cost rule or forced into one form."""
    force(form, monkeypatch)
    _check_kernels(case)


_CONVS = {
    "groups-stride-circular": lambda: nn.Conv2d(
        2, 4, 3, stride=2, padding=1, groups=2, padding_mode="circular"
    ),
    "dilation-same": lambda: nn.Conv2d(3, 2, (2, 3), dilation=(2, 1), padding="same"),
    "replicate-no-bias": lambda: nn.Conv2d(
        1, 3, 3, padding=1, padding_mode="replicate", bias=False
    ),
    "conv1d-groups": lambda: nn.Conv1d(2, 4, 3, stride=2, dilation=2, groups=2),
}
_CONV_INPUTS = {"conv1d-groups": (2, 9)}


@pytest.mark.parametrize(
    "conv, trained",
    [(conv, "all") for conv in sorted(_CONVS)]
    + [("groups-stride-circular", "bias"), ("dilation-same", "bias")],
)
def test_conv_gradients_match_the_reference(conv, trained):
    """Instantiated per-example gradients of one conv layer, every output pixel."""
    torch.manual_seed(0)
    net = nn.Sequential(_CONVS[conv](), nn.Flatten()).double()
    names = ["0.bias"] if trained == "bias" else [n for n, _ in net.named_parameters()]
    params = {n: p.detach() for n, p in net.named_parameters() if n in names}
    gen = torch.Generator().manual_seed(1)
    shape = _CONV_INPUTS.get(conv, (net[0].in_channels, 4, 5))
    X = torch.randn(2, *shape, generator=gen, dtype=torch.float64)
    bound = select_engine("hooks", net, names, example=X[:1])
    assert not bound.plan.ghosts  # P^2 > h_in h_out here: instantiated
    with torch.no_grad():
        got = bound.state(params, X)["inst"]
    ordered = {n: params[n] for n in bound.plan.inst_names}
    want = jacobian_rows(net, ordered, X)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("conv", sorted(_CONVS))
def test_patches_are_the_unfolded_input(conv):
    """Patches (n, C_in k, P) are ``F.unfold`` of the padded input, bit for bit."""
    from sklearn_pathkernel.engines._hooks._plan import _Layer

    mod = _CONVS[conv]().double()
    shape = _CONV_INPUTS.get(conv, (mod.in_channels, 5, 6))
    x = torch.randn(2, *shape, dtype=torch.float64)
    layer = _Layer(mod, "0", {}, "conv")
    mode = "constant" if mod.padding_mode == "zeros" else mod.padding_mode
    padded = F.pad(x, mod._reversed_padding_repeated_twice, mode=mode)
    one_d = isinstance(mod, nn.Conv1d)
    want = F.unfold(
        padded.unsqueeze(2) if one_d else padded,
        (1, *mod.kernel_size) if one_d else mod.kernel_size,
        dilation=(1, *mod.dilation) if one_d else mod.dilation,
        stride=(1, *mod.stride) if one_d else mod.stride,
    )
    assert torch.equal(_patches(layer, x), want)
