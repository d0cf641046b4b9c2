"""Rows for the functional kernel API: tables, images, sequences and tokens."""

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_pathkernel._kernels._rows import kernel_rows, output_width

CPU = torch.device("cpu")


def _rows(X, module=None, like=None):
    module = module if module is not None else nn.Linear(3, 1)
    return kernel_rows(
        X,
        name="X" if like is None else "Y",
        module=module,
        dtype=torch.float64,
        device=CPU,
        like=like,
    )


def test_tables_go_through_the_usual_checks():
    rows = _rows(np.ones((2, 3), dtype=np.float32))
    assert rows.dtype == torch.float64 and rows.shape == (2, 3)
    with pytest.raises(ValueError, match="Expected 2D array"):
        _rows(np.ones(3))


def test_images_keep_their_shape_in_the_network_dtype():
    rows = _rows(torch.ones(4, 1, 8, 8, dtype=torch.float32))
    assert rows.dtype == torch.float64 and rows.shape == (4, 1, 8, 8)


def test_integer_tensors_are_tokens_only_for_embedding_modules():
    tokens = torch.tensor([[1, 2], [3, 3]])
    assert _rows(tokens, module=nn.Embedding(5, 2)).dtype == torch.int64
    assert _rows(tokens).dtype == torch.float64  # numbers for a Linear layer


@pytest.mark.parametrize(
    "X, like, message",
    [
        (torch.ones(0, 2, 2), None, "X is empty: it has 0 rows"),
        (torch.ones(2, 2, 3), torch.ones(2, 2, 2), "Y has rows of shape \\(2, 3\\)"),
        (np.ones((2, 4)), torch.ones(2, 2, 2), "Y must have rows of shape"),
        (torch.tensor([[[float("nan"), 1.0]]]), None, "X contains values that are not"),
    ],
)
def test_bad_rows_are_named(X, like, message):
    with pytest.raises(ValueError, match=message):
        _rows(X, like=like)


def test_output_width_names_a_module_that_fails():
    assert output_width(nn.Linear(3, 4), torch.ones(2, 3)) == 4
    assert (
        output_width(nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)), torch.ones(2, 3))
        == 1
    )
    with pytest.raises(ValueError, match="The 'module' failed on X rows of shape"):
        output_width(nn.Linear(3, 4), torch.ones(2, 5))
