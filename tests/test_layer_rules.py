"""The hooks engine's rules per layer type."""

import pytest
import torch
from _hook_cases import CASES, _check_kernels, force
from torch import nn

from sklearn_pathkernel.engines import select_engine


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
