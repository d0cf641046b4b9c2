"""Stacks of checkpoints (``_compute/_stacks.py``) against plain loops."""

import pytest
import torch

from sklearn_pathkernel._compute import _stacks
from sklearn_pathkernel._compute._blocking import device_policy

CPU = torch.device("cpu")


def test_the_cpu_never_stacks():
    assert _stacks.stack_size(CPU, 1, 100) == 1
    assert _stacks.stack_size(None, 1, 100) == 1


@pytest.mark.parametrize(
    "per_checkpoint, n, shrink, size",
    [
        (10, 100, 1, 16),  # at most MAX_STACKED_CHECKPOINTS
        (10, 5, 1, 5),  # at most the checkpoints there are
        (2**16, 100, 1, 2),  # 2**17 bytes: a quarter of half of 2**20
        (2**18, 100, 1, 1),  # not even one: one per task
        (2**15, 100, 2, 2),  # after one halving, half the budget
        (10, 100, 4, 4),  # ... and at most 16 // 4
    ],
)
def test_stack_size_fits_a_quarter_of_the_budget(per_checkpoint, n, shrink, size):
    with device_policy(2**20):
        assert _stacks.stack_size(CPU, per_checkpoint, n, shrink=shrink) == size


def test_groups_are_consecutive_and_of_equal_keys():
    items = [(0, "a"), (1, "a"), (2, "b"), (3, "a"), (4, "a"), (5, "a")]
    groups = _stacks.consecutive_groups(items, 2, key=lambda item: item[1])
    assert [[i for i, _ in g] for g in groups] == [[0, 1], [2], [3, 4], [5]]
    assert _stacks.consecutive_groups([], 3) == []


def test_a_stacked_call_is_the_loop_over_the_stack():
    torch.manual_seed(0)
    mappings = [{"w": torch.randn(3, 2), "b": torch.randn(3)} for _ in range(4)]
    X = torch.randn(5, 2)

    def one(parameters, metric):
        out = X @ parameters["w"].T + parameters["b"]
        return out if metric is None else out * metric["b"]

    stacked = _stacks.stack_mappings(mappings)
    for metric in (None, mappings):
        got = _stacks.stacked_call(
            one, stacked, None if metric is None else _stacks.stack_mappings(metric)
        )
        want = torch.stack([one(m, None if metric is None else m) for m in mappings])
        torch.testing.assert_close(got, want)


def test_the_weighted_sum_is_float64_and_adds_to_the_target():
    parts = torch.randn(3, 4, dtype=torch.float32)
    weights = torch.tensor([0.5, 1e-3, 2.0], dtype=torch.float64)
    want = sum(w * p.double() for w, p in zip(weights, parts))
    got = _stacks.weighted_sum(weights, parts)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-15, atol=1e-15)
    target = torch.ones(4, dtype=torch.float64)
    _stacks.add_weighted(target, parts, weights)
    torch.testing.assert_close(target, 1 + want, rtol=1e-15, atol=1e-15)
    single = torch.ones(4, dtype=torch.float64)
    _stacks.add_weighted(single, parts[0].double(), 0.5)
    assert torch.equal(
        single, torch.ones(4, dtype=torch.float64).add_(parts[0].double(), alpha=0.5)
    )
