"""The layer-hook engine (``engine="hooks"``): per-layer rules on any module graph.

- ``_engine.py``: :class:`HookEngine`, the ``Engine`` methods.
- ``_plan.py``: the probe forward; which layers run, their rules, row axes, sizes.
- ``_recording.py``: one forward with hooks and one batched backward; the state.
- ``_rules.py``: the rules per layer type (Linear, Conv1d/2d, Embedding, norms).
- ``_attention.py``: the rule for ``nn.MultiheadAttention``.
- ``_fallback.py``: per-example gradients of a layer without a rule.
- ``_ghost.py``: the ghost form's cost rule and contractions.
- ``_metric.py``: the forms and contractions in a diagonal metric (Adam).

The modules share names without a leading underscore: the wing is private
by its own underscore, and those names are for its modules only.
"""

from ._engine import HookEngine

__all__ = ["HookEngine"]
