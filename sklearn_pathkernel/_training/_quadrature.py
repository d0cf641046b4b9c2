"""Quadrature rules: which checkpoints the kernel visits, and their weights.

The first-order decomposition and the exact one use every step's kernel; the
kernel the estimators expose approximates the same every-step sum

    K_path = sum_{t=0}^{T-1} eps_t K_{w_t}                (a discrete measure)

from a few of the recorded parameters, the *nodes* ``s_0 < s_1 < ...``
(docs/design.md, section 3). Each rule cuts ``[0, T)`` into panels between
consecutive nodes and gives every panel's nodes the weights that sum
polynomials in ``t`` exactly against that measure: degree 0 for "left"
(today's Riemann sum, nodes at panels' left ends), 1 for "trapezoid" and
"adaptive" (two-node panels, ``w_T`` included), 2 for "simpson" (three-node
panels; a four-node panel, degree 3, closes an even count; a panel whose
weights would be negative falls back to trapezoids). For a constant
step size the trapezoid weights are the Euler-Maclaurin form of the left
sum, ``eps h`` inside and ``eps (h + 1) / 2``, ``eps (h - 1) / 2`` at the
ends (panels of ``h`` steps). With every step a node each rule gives every
step its own ``eps_t``: the every-step kernel itself.
"""

from numbers import Integral

import numpy as np

RULES = ("left", "trapezoid", "simpson", "adaptive")

# Nodes per panel of each rule (a panel's last node is the next one's first).
_PANEL = {"left": 1, "trapezoid": 2, "adaptive": 2, "simpson": 3}


def check_rule(quadrature, kernel_nodes):
    """Refuse an unknown rule or node count, naming the parameter."""
    if quadrature not in RULES:
        raise ValueError(
            f"quadrature must be one of {', '.join(map(repr, RULES))}; "
            f"got {quadrature!r} instead."
        )
    if kernel_nodes is None:
        return
    if isinstance(kernel_nodes, Integral) and not isinstance(kernel_nodes, bool):
        if kernel_nodes < 2:
            raise ValueError(
                "kernel_nodes must be a count of at least 2, a fraction of the "
                f"steps in (0, 1], or None; got {kernel_nodes!r} instead."
            )
    elif not (isinstance(kernel_nodes, float) and 0 < kernel_nodes <= 1):
        raise ValueError(
            "kernel_nodes must be a count of at least 2, a fraction of the "
            f"steps in (0, 1], or None; got {kernel_nodes!r} instead."
        )


def node_count(kernel_nodes, n_steps):
    """How many nodes ``kernel_nodes`` asks for on a path of ``n_steps``."""
    if kernel_nodes is None:
        return n_steps + 1
    if isinstance(kernel_nodes, Integral):
        return int(kernel_nodes)
    return max(2, int(np.ceil(kernel_nodes * n_steps)))


def select_nodes(candidates, n_steps, n_nodes, quadrature):
    """Nodes spread evenly over the path, snapped to recorded steps.

    Parameters
    ----------
    candidates : array of int
        Steps whose parameters are kept, increasing, starting at 0.
    n_steps : int
        ``T``; the final parameters ``w_T`` are a candidate for every rule
        but "left".
    n_nodes : int
        Nodes wanted; all candidates when there are no more of them.
    quadrature : str

    Returns
    -------
    steps : ndarray of int64
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    if n_steps == 0 or len(candidates) == 0:
        return np.zeros(0, dtype=np.int64)
    if quadrature != "left":
        candidates = np.append(candidates[candidates < n_steps], n_steps)
    if n_nodes >= len(candidates):
        return candidates
    if quadrature == "left":  # left ends of n_nodes equal panels
        targets = np.arange(n_nodes) * (n_steps / n_nodes)
    else:
        targets = np.linspace(0, n_steps, n_nodes)
    # Nearest candidate to each target (ties go left); 0 and T stay ends.
    right = np.clip(np.searchsorted(candidates, targets), 1, len(candidates) - 1)
    left = right - 1
    nearest = np.where(
        targets - candidates[left] <= candidates[right] - targets, left, right
    )
    return candidates[np.unique(nearest)]


def node_weights(steps, step_sizes, quadrature):
    """Weights of the nodes ``steps`` that approximate ``sum_t eps_t K_{w_t}``.

    Parameters
    ----------
    steps : array of int
        Node steps, increasing; start at 0, and end at ``T`` for every rule
        but "left".
    step_sizes : array of float, shape (T,)
        ``eps_t``.
    quadrature : str

    Returns
    -------
    weights : ndarray of float64, same length as ``steps``
    """
    steps = np.asarray(steps, dtype=np.int64)
    eps = np.asarray(step_sizes, dtype=np.float64)
    weights = np.zeros(len(steps))
    if len(steps) == 0:
        return weights
    if quadrature == "left":
        cumulative = np.concatenate([[0.0], np.cumsum(eps)])
        bounds = np.append(steps, len(eps))
        return cumulative[bounds[1:]] - cumulative[bounds[:-1]]
    for panel in _panels(len(steps), _PANEL[quadrature]):
        part = _panel_weights(steps[panel], eps)
        if (part < 0).any():
            # Uneven or very short panels (a step or two between nodes) can
            # make higher-order weights negative, and the kernel indefinite:
            # such a panel falls back to trapezoids, never negative.
            part = np.zeros(len(part))
            for a in range(len(part) - 1):
                part[a : a + 2] += _panel_weights(steps[panel][a : a + 2], eps)
        weights[panel] += part
    return weights


def _panels(n_nodes, size):
    """Index ranges of consecutive panels of ``size`` nodes sharing ends."""
    if n_nodes < 2:
        return []
    starts = list(range(0, n_nodes - 1, size - 1))
    panels = [slice(a, min(a + size, n_nodes)) for a in starts]
    last = panels[-1]
    if last.stop - last.start < size and len(panels) > 1:
        # Too few nodes left for a full panel: widen the one before instead.
        panels[-2:] = [slice(panels[-2].start, n_nodes)]
    return panels


def _panel_weights(nodes, eps):
    """Weights on ``nodes`` summing ``t^k``, ``k < len(nodes)``, exactly.

    The sum runs over the steps ``nodes[0] <= t < nodes[-1]`` with weights
    ``eps_t``; ``t`` is mapped to ``[0, 1]`` for a well-conditioned solve.
    """
    a, b = int(nodes[0]), int(nodes[-1])
    x_nodes = (nodes - a) / (b - a)
    x_steps = (np.arange(a, b) - a) / (b - a)
    powers = np.arange(len(nodes))[:, None]
    moments = (x_steps[None, :] ** powers) @ eps[a:b]
    weights = np.linalg.solve(x_nodes[None, :] ** powers, moments)
    # A weight that is zero but for rounding (w_T when every step is a
    # node) would cost a node and could break positive semi-definiteness.
    weights[np.abs(weights) <= 1e-12 * abs(moments[0])] = 0.0
    return weights
