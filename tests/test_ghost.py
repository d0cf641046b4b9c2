"""Ghost-form contractions and the cost rule of the hooks engine."""

import pytest
import torch
from _hook_cases import _check_kernels

from sklearn_pathkernel.engines._hooks import _ghost


@pytest.mark.parametrize("case", ["embedding", "embedding-padding", "tied"])
@pytest.mark.parametrize("sparse", [0, 10**9], ids=["token-pairs", "all-pairs"])
@pytest.mark.parametrize("metric", [False, True], ids=["plain", "metric"])
def test_embeddings_by_token_pairs_or_all_position_pairs(
    case, sparse, metric, monkeypatch
):
    """In a metric too: the signals scaled by their tokens' rows stay ghost."""
    monkeypatch.setattr(_ghost, "SPARSE_TOKENS", sparse)
    monkeypatch.setattr(_ghost, "GHOST_SCRATCH", 64)  # several pieces of pairs
    monkeypatch.setattr(_ghost, "ghost_is_cheaper", lambda *args: True)
    _check_kernels(case, metric=metric)


def test_token_matches_are_every_pair_of_equal_tokens():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (30,), generator=gen)
    y = torch.randint(0, 6, (25,), generator=gen)
    rows, columns = _ghost._token_matches(x, y)
    assert torch.equal(x[rows], y[columns])
    got = sorted(zip(rows.tolist(), columns.tolist()))
    want = [(r, c) for r in range(30) for c in range(25) if x[r] == y[c]]
    assert got == want


@pytest.mark.parametrize("h_in, h_out, outputs", [(3, 4, 1), (512, 512, 10)])
def test_one_position_is_always_ghost(h_in, h_out, outputs):
    """``P = 1`` is the structured rule: ghost whatever the widths."""
    assert _ghost.ghost_is_cheaper([(h_in, h_out, 1, False)], outputs)


def test_many_positions_of_a_small_layer_are_instantiated():
    # A 3x3 convolution 8 -> 16 over 64 pixels: P^2 dwarfs h_in h_out.
    assert not _ghost.ghost_is_cheaper([(73, 16, 64, False)], 10)
