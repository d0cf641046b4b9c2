"""Ghost-form contractions and the cost rule of the hooks engine."""

import pytest
from _hook_cases import _check_kernels

from sklearn_pathkernel.engines import _ghost


@pytest.mark.parametrize("case", ["embedding", "embedding-padding", "tied"])
@pytest.mark.parametrize("sparse", [0, 10**9], ids=["token-pairs", "all-pairs"])
def test_embeddings_by_token_pairs_or_all_position_pairs(case, sparse, monkeypatch):
    monkeypatch.setattr(_ghost, "SPARSE_TOKENS", sparse)
    monkeypatch.setattr(_ghost, "GHOST_SCRATCH", 64)  # several pieces of pairs
    monkeypatch.setattr(_ghost, "_ghost_is_cheaper", lambda *args: True)
    _check_kernels(case)
