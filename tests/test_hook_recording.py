"""The hooks engine's recording: the signals of every output, two ways."""

import threading
import warnings

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


class _BiasKV(torch.nn.Module):
    """Attention with ``add_bias_kv``: the per-layer fallback vmaps its core.

    Without the weights, scaled dot-product attention, which ``vmap`` loops
    with torch's "performance drop" warning.
    """

    def __init__(self):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(
            4, 2, batch_first=True, add_bias_kv=True
        )
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        out, _ = self.attn(x, x, x, need_weights=False)
        return self.head(out.mean(dim=1))


def _bias_kv_setup():
    torch.manual_seed(0)
    net = _BiasKV().double().eval()
    params = {n: p.detach() for n, p in net.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    return net, params, torch.randn(5, 3, 4, generator=gen, dtype=torch.float64)


def test_concurrent_states_leave_every_thread_its_warnings(monkeypatch):
    """States on two worker threads at once touch no warning filter.

    The batched backward (a CNN's convolution backward has no batching rule:
    it loops) and the per-layer fallback (attention with ``add_bias_kv``)
    run on threads, as joblib's thread backend runs them, while a user's
    thread emits warnings, some of them errors: every one of the user's
    warnings arrives, torch's looped-attention warning does not, the
    engine's threads never change the process-wide filters, and the states
    are those of one thread alone.
    """
    cnn, cnn_params, X_cnn, _ = _setup("cnn")
    bias_kv, bias_kv_params, X_kv = _bias_kv_setup()
    jobs = {
        "engine-cnn": (_engine(cnn, cnn_params, X_cnn), cnn_params, X_cnn),
        "engine-fallback": (
            _engine(bias_kv, bias_kv_params, X_kv),
            bias_kv_params,
            X_kv,
        ),
    }
    assert jobs["engine-fallback"][0].plan.layers[0].rule == "fallback"
    with torch.no_grad():
        alone = {name: e.state(p, X) for name, (e, p, X) in jobs.items()}

    mutations = []  # the threads that changed the warning filters
    mutated = warnings._filters_mutated  # absent from Python 3.14: not needed

    def counting():
        mutations.append(threading.current_thread().name)
        mutated()

    monkeypatch.setattr(warnings, "_filters_mutated", counting, raising=False)
    results, errors, raised = {}, [], []
    start = threading.Barrier(3)

    def engine_thread(name):
        bound, params, X = jobs[name]
        start.wait()
        try:
            with torch.no_grad():
                results[name] = [bound.state(params, X) for _ in range(4)]
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    def user_thread():
        start.wait()
        for i in range(20):
            warnings.warn(f"the user's warning {i}", UserWarning)
            try:
                warnings.warn("the user's error", RuntimeWarning)
            except RuntimeWarning:
                raised.append(i)

    with warnings.catch_warnings(record=True) as log:
        warnings.filterwarnings("always", "the user's warning")
        warnings.simplefilter("error", RuntimeWarning)
        threads = [threading.Thread(target=user_thread, name="user")] + [
            threading.Thread(target=engine_thread, args=(name,), name=name)
            for name in jobs
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    messages = [str(w.message) for w in log]
    assert [m for m in messages if m.startswith("the user's")] == [
        f"the user's warning {i}" for i in range(20)
    ]
    assert raised == list(range(20))
    assert not [m for m in messages if "performance drop" in m]
    assert not [name for name in mutations if name.startswith("engine")]
    for name, states in results.items():
        for state in states:
            for got, want in zip(state["ghost"], alone[name]["ghost"]):
                assert all(torch.equal(g, w) for g, w in zip(got, want))
            assert torch.equal(state["inst"], alone[name]["inst"])
