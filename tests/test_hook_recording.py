"""The hooks engine's recording: the signals of one backward for all outputs."""

import numpy as np
import pytest
import torch
from _hook_cases import _engine, _setup
from _oracle import tangent_kernel_reference

from sklearn_pathkernel.engines import _hook_plan


@pytest.mark.parametrize("case", ["cnn", "tied", "transformer", "conv1d"])
def test_signals_by_batched_backward_agree(case, monkeypatch):
    """Signals from one vmapped backward of O seeds, not from O copies."""
    monkeypatch.setattr(_hook_plan, "REPLICATE", False)
    net, params, X, Y = _setup(case)
    bound = _engine(net, params, X)
    assert not bound.plan.replicate
    with torch.no_grad():
        got = bound.contract(bound.state(params, X), bound.state(params, Y), False)
    want = tangent_kernel_reference(net, params, X, Y, trace=False)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
