"""Where the hooks engine's time goes on a workload of ``bench_hooks.py``.

Per layer, the Gram's cost per pair of rows in both forms (ghost
``P^2 (h_in + O h_out)``, instantiated ``O h_in h_out``; multiply-adds,
traced) against the Jacobian engine's ``O d``: the FLOP bound of the hooks
engine's Gram. Then, on one row tile of the engine's own grid and one
checkpoint, the best of ``--repeats`` timings of each part, side by side in
one process: the state (forward and backward, each layer's rule, the
concatenation of the instantiated gradients), the contraction of two tiles
(the instantiated product, each ghost term) and the Jacobian engine's state
and contraction. Last, what one checkpoint of the symmetric kernel costs
from those parts (a state per row tile, a contraction per tile pair on or
above the diagonal), and the bound with the hooks engine's states free.

Usage::

    python benchmarks/bench_hooks_profile.py                # workload (a)
    python benchmarks/bench_hooks_profile.py --threads 1    # per core
    python benchmarks/bench_hooks_profile.py --only d
"""

import argparse
import os
import sys
import time

import torch

from sklearn_pathkernel._compute._blocking import grid
from sklearn_pathkernel.engines import select_engine
from sklearn_pathkernel.engines._hooks import _recording as recording
from sklearn_pathkernel.engines._hooks._ghost import contract_ghost
from sklearn_pathkernel.engines._hooks._plan import _probe
from sklearn_pathkernel.engines._hooks._rules import instantiate, kron, kron_shapes

sys.path.insert(0, os.path.dirname(__file__))
from bench_hooks import trained  # noqa: E402


def best(fn, repeats):
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return 1e3 * min(seconds)


def layer_costs(module, plan, example):
    """``(prefix, P, h_in, h_out, ghost, instantiated, is_ghost)`` per group."""
    n_outputs = plan.n_outputs
    probe = _probe(module, example, 2)  # the plan's shapes at two rows
    rows = []
    for layer in plan.layers:
        terms = kron_shapes(layer, probe[id(layer.module)], n_outputs)
        for h_in, h_out, P, tokens in terms:
            ghost = P * P * ((1 if tokens else h_in) + n_outputs * h_out)
            inst = n_outputs * h_in * h_out
            rows.append((layer.prefix, P, h_in, h_out, ghost, inst, layer.ghost))
        if not terms:  # norms and the fallback: instantiated
            k = sum(p.numel() for p in layer.module.parameters())
            inst = n_outputs * k
            rows.append((layer.prefix, None, None, None, None, inst, False))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="a", help="workload: a, b, c or d")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    module, X, trajectory = trained(args.only, False)
    names = trajectory.parameter_names
    params = trajectory.parameters(0)
    hooks = select_engine("hooks", module, names, example=X[:1])
    jacobian = select_engine("jacobian", module, names, example=X[:1])
    plan = hooks.plan
    n_outputs = plan.n_outputs
    d = sum(p.numel() for p in module.parameters())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load {os.getloadavg()[0]:.1f}; workload ({args.only}): n = {len(X)}, "
        f"O = {n_outputs}, d = {d}\n"
    )
    print("| layer | P | h_in | h_out | ghost | instantiated | form |")
    print("|---|---:|---:|---:|---:|---:|---|")
    total = 0
    for prefix, P, h_in, h_out, ghost, inst, is_ghost in layer_costs(
        module, plan, X[:1]
    ):
        cost = ghost if is_ghost else inst
        total += cost
        cells = [P, h_in, h_out, ghost]
        cells = ["" if c is None else f"{c:,}" for c in cells]
        form = "ghost" if is_ghost else "instantiated"
        print(f"| {prefix} | {' | '.join(cells)} | {inst:,} | {form} |")
    print(
        f"\nGram per pair of rows: hooks {total:,}, jacobian O d = "
        f"{n_outputs * d:,} multiply-adds: bound {n_outputs * d / total:.2f}x\n"
    )

    itemsize = torch.finfo(X.dtype).bits // 8
    tile, _ = grid(hooks.bytes_per_row(n_outputs, itemsize))
    Xa, Xb = X[:tile], X[tile : 2 * tile]
    ms = {}
    with torch.no_grad():
        sa, sb = hooks.state(params, Xa), hooks.state(params, Xb)
        ms["hooks state"] = best(lambda: hooks.state(params, Xa), args.repeats)
        ms["  forward + backward"] = best(
            lambda: recording._record(
                hooks, params, Xa, recording._Recorder(plan.layers, 1)
            ),
            args.repeats,
        )
        recorder = recording._Recorder(plan.layers, 1)
        _, out, outputs, signals = recording._record(hooks, params, Xa, recorder)
        for (layer, k, _, _), D in zip(outputs, signals):
            if layer.rule == "fallback":
                continue
            axes = layer.calls[k]
            D = D.movedim(axes["outputs"][0] + 1, 0)
            x = recorder.calls[id(layer.module)][k][0][0].movedim(axes["args"][0], 0)
            rule = kron if layer.ghost else instantiate
            ms[f"  rule {layer.prefix} ({'ghost' if layer.ghost else 'inst.'})"] = best(
                lambda: rule(layer, x, D, out.dtype), args.repeats
            )
        ms["hooks contract"] = best(lambda: hooks.contract(sa, sb, True), args.repeats)
        if sa["inst"] is not None:
            Ga, Gb = sa["inst"].flatten(1), sb["inst"].flatten(1)
            ms["  instantiated product"] = best(lambda: Ga @ Gb.T, args.repeats)
        for term, ta, tb in zip(plan.ghosts, sa["ghost"], sb["ghost"]):
            ms[f"  ghost {term.layer.prefix}[{term.group}]"] = best(
                lambda: contract_ghost(term, ta, tb, "trace"), args.repeats
            )
        ja, jb = jacobian.state(params, Xa), jacobian.state(params, Xb)
        repeats = max(1, args.repeats // 3)
        ms["jacobian state"] = best(lambda: jacobian.state(params, Xa), repeats)
        static = jacobian.static(Xa, Xb)
        ms["jacobian contract"] = best(
            lambda: jacobian.contract(ja, jb, True, static), repeats
        )
    print(f"| part ({tile}-row tiles, best of {args.repeats}) | ms |")
    print("|---|---:|")
    for part, value in ms.items():
        print(f"| {part} | {value:.2f} |")
    # Row tiles' worth of states, and tile pairs' worth of contractions on
    # or above the diagonal (diagonal tiles computed whole): n (n + T) / 2.
    tiles = len(X) / tile
    pairs = tiles * (tiles + 1) / 2
    gram_ms = pairs * ms["hooks contract"]
    hooks_ms = tiles * ms["hooks state"] + gram_ms
    jac_ms = tiles * ms["jacobian state"] + pairs * ms["jacobian contract"]
    print(
        f"\none checkpoint, {tiles:.2f} row tiles and {pairs:.1f} tile pairs: "
        f"hooks {hooks_ms / 1e3:.2f} s (Gram {gram_ms / hooks_ms:.0%}), "
        f"jacobian {jac_ms / 1e3:.2f} s: {jac_ms / hooks_ms:.1f}x; with the hooks "
        f"engine's states free: {jac_ms / gram_ms:.1f}x"
    )


if __name__ == "__main__":
    main()
