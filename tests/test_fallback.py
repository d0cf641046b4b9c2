"""The hooks engine's torch.func fallback for layers without a rule."""

import numpy as np
from _hook_cases import _setup
from _oracle import tangent_kernel_reference

from sklearn_pathkernel import tangent_kernel
from sklearn_pathkernel.engines import HookEngine, select_engine


def test_a_layer_without_rule_is_exact_when_named_but_not_picked_by_auto():
    net, params, X, Y = _setup("fallback")
    assert HookEngine.supports(net) and not HookEngine.covers(net)
    assert select_engine("auto", net, list(params)).name == "jacobian"
    K = tangent_kernel(net, None, X, Y, engine="hooks")
    np.testing.assert_allclose(
        K, tangent_kernel_reference(net, params, X, Y), rtol=1e-10, atol=1e-12
    )
