"""The hooks engine's recording: the signals of every output, two ways."""

import numpy as np
import pytest
import torch
from _hook_cases import _engine, _setup
from _oracle import tangent_kernel_reference

from sklearn_pathkernel.engines._hooks import _plan as _hook_plan


@pytest.mark.parametrize("signals", ["batched", "replicated"])
@pytest.mark.parametrize("case", ["cnn", "tied", "transformer", "conv1d"])
def test_signals_of_every_strategy_agree(case, signals, monkeypatch):
    """Vmapped and replicated backward passes give the oracle's kernel."""
    monkeypatch.setattr(_hook_plan, "SIGNALS", signals)
    net, params, X, Y = _setup(case)
    bound = _engine(net, params, X)
    assert bound.plan.signals == (signals if bound.plan.n_outputs > 1 else "batched")
    with torch.no_grad():
        got = bound.contract(bound.state(params, X), bound.state(params, Y), False)
    want = tangent_kernel_reference(net, params, X, Y, trace=False)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
