"""Ghost-form terms of the layer-hook engine: the cost rule and contractions.

A layer at ``P`` positions with inputs ``a_p`` and output signals
``d_{o,p}`` has the per-example gradient ``G_o = sum_p d_{o,p} a_p^T``. In
*ghost* form the state keeps ``(A, D)`` and a Gram between two blocks is
``sum_{p,q} (a_p . a'_q) (sum_o d_{o,p} . d'_{o,q})``; for an embedding
``a_p`` is one-hot and ``a_p . a'_q`` is token equality. Products go in row
sub-blocks of at most :data:`GHOST_SCRATCH` numbers, sizes set by the
shapes alone, so results are bit-identical across budgets
(docs/design.md, section 7.6). On a device (CUDA, or the device policy
forced for tests) the sub-blocks grow to the tile pair's own size
(:func:`scratch_numbers`) and an embedding's matching tokens are not
searched (their number would make the host wait): a few large products
per tile pair instead of thousands of small ones.
"""

import math

import torch

from ..._compute._blocking import TILE_ROWS, device_budget

#: Largest temporary of a ghost contraction, in numbers (row sub-blocks of
#: a fixed size keep every product's shape independent of the budget).
GHOST_SCRATCH = 2**21
#: An embedding's ghost term goes through its matching token pairs only
#: when they are fewer than one in ``SPARSE_TOKENS`` position pairs.
SPARSE_TOKENS = 8
#: Scratch numbers per row of a state's tile on a device: what
#: ``HookEngine.bytes_per_row`` reserves per row (in float64 numbers).
ROW_SCRATCH = GHOST_SCRATCH // TILE_ROWS


def on_device(tensor):
    """Whether work on ``tensor`` is cut for a device: CUDA or ``device_policy``.

    Decided from the device alone (no value is read), so the same call on
    the same device always takes the same route.
    """
    return tensor.device.type == "cuda" or device_budget(tensor.device) is not None


def scratch_numbers(tensor, numbers):
    """Numbers a sub-block's temporary may hold: :data:`GHOST_SCRATCH` on the CPU.

    On a device, at least ``numbers``: a tile pair's result (``n m``,
    times ``O`` or ``O^2``), which the device grid budgets three times
    over for temporaries (``_compute._blocking.grid``), or for row-wise
    work ``n`` times :data:`ROW_SCRATCH`, which ``bytes_per_row`` budgets.
    A function of shapes alone: the bits depend on the device and the
    tile shape only. The CPU keeps :data:`GHOST_SCRATCH` and its bits.
    """
    if not on_device(tensor):
        return GHOST_SCRATCH
    return max(GHOST_SCRATCH, numbers)


def ghost_is_cheaper(terms, n_outputs):
    """``P^2 (h_in + O h_out) < O h_in h_out (1 + 2 P / T)`` over the groups.

    For token inputs the input Gram is one comparison per pair of
    positions, so ``h_in`` (the vocabulary) counts as 1 on the ghost side.
    """
    ghost = sum(
        P * P * ((1 if tokens else h_in) + n_outputs * h_out)
        for h_in, h_out, P, tokens in terms
    )
    inst = sum(
        n_outputs * h_in * h_out * (1 + 2 * P / TILE_ROWS)
        for h_in, h_out, P, _ in terms
    )
    return ghost < inst


def _input_gram_rows(term, A):
    """Per row, the Gram of its positions' inputs: (n, P, P)."""
    if term.tokens:
        return A[:, :, None] == A[:, None, :]
    return A @ A.transpose(1, 2)


def _input_gram(term, A_x, A_y):
    """``(a_{i,p} . a_{j,q})`` as an (n, P, m, Q) tensor."""
    n, P = A_x.shape[0], A_x.shape[1]
    m, Q = A_y.shape[0], A_y.shape[1]
    if term.tokens:
        return (A_x.reshape(-1, 1) == A_y.reshape(1, -1)).view(n, P, m, Q)
    return (A_x.reshape(n * P, -1) @ A_y.reshape(m * Q, -1).T).view(n, P, m, Q)


def contract_ghost(term, tx, ty, mode, vectors=None, matches=None):
    """One ghost term between two blocks, in row sub-blocks of fixed size.

    ``matches`` (an embedding's): what :func:`token_matches` found for the
    two blocks (the pairs, or False for every position pair), or None to
    decide here.
    """
    (A_x, D_x), (A_y, D_y) = tx, ty
    n, P, n_outputs, _ = D_x.shape
    m, Q = D_y.shape[0], D_y.shape[1]
    entries = {"trace": 1, "vector": n_outputs, "full": n_outputs * n_outputs}[mode]
    per_pair = P * Q * (n_outputs * n_outputs if mode == "full" else n_outputs)
    scratch = scratch_numbers(D_x, n * m * entries)
    sy = min(m, max(1, scratch // per_pair))
    sx = min(n, max(1, scratch // (per_pair * sy)))
    if mode == "vector":
        # Fold v into Y's signals first: (m, Q, h).
        D_y = torch.einsum("jqbh,jb->jqh", D_y, vectors)
    if term.tokens and matches is None and not on_device(D_x):
        # On a device the matches' number would make the host wait: there
        # they come from the pair's static (found once per call), or every
        # position pair goes.
        matches = token_matches(A_x, A_y)
    if term.tokens and matches:
        return _sparse_tokens(matches, D_x, D_y, m, mode)
    if mode == "trace" and P == 1 and Q == 1:  # 7.3's rule, no sub-blocks
        gram = _input_gram(term, A_x, A_y).view(n, m).to(D_x.dtype)
        return gram.mul_(D_x.reshape(n, -1) @ D_y.reshape(m, -1).T)
    shape = (n, m) if mode == "trace" else (n, m, n_outputs)
    if mode == "full":
        shape = (n, m, n_outputs, n_outputs)
    result = D_x.new_zeros(shape)
    for i0 in range(0, n, sx):
        i1 = min(i0 + sx, n)
        for j0 in range(0, m, sy):
            j1 = min(j0 + sy, m)
            gram = _input_gram(term, A_x[i0:i1], A_y[j0:j1]).to(D_x.dtype)
            dx, dy = D_x[i0:i1], D_y[j0:j1]
            a, b = i1 - i0, j1 - j0
            if mode == "trace":
                signal = (dx.reshape(a * P, -1) @ dy.reshape(b * Q, -1).T).view(
                    a, P, b, Q
                )
                result[i0:i1, j0:j1] = (gram * signal).sum(dim=(1, 3))
            elif mode == "vector":
                h = dx.shape[-1]
                signal = (dx.reshape(-1, h) @ dy.reshape(-1, h).T).view(
                    a, P, n_outputs, b, Q
                )
                result[i0:i1, j0:j1] = torch.einsum("ipjq,ipajq->ija", gram, signal)
            else:
                h = dx.shape[-1]
                signal = (dx.reshape(-1, h) @ dy.reshape(-1, h).T).view(
                    a, P, n_outputs, b, Q, n_outputs
                )
                result[i0:i1, j0:j1] = torch.einsum("ipjq,ipajqb->ijab", gram, signal)
    return result


def token_matches(tokens_x, tokens_y):
    """An embedding's matching token pairs between two blocks, or False.

    ``tokens_x`` (n, P) and ``tokens_y`` (m, Q). The pairs (flat positions
    of X and of Y) when they are fewer than one in :data:`SPARSE_TOKENS`
    position pairs (and, on a device, at most ``n m / 2``: two int64
    indices a pair, 8 bytes per entry of the tile pair, within the three
    float32 temporaries the grid budgets), else False: every position pair
    is cheaper. Reads their number on the host: on a device the engine's
    ``static`` calls it, once per pair of blocks and call, not per
    checkpoint.
    """
    n, P = tokens_x.shape[0], tokens_x.shape[1]
    m, Q = tokens_y.shape[0], tokens_y.shape[1]
    pairs = _token_matches(tokens_x.reshape(-1), tokens_y.reshape(-1))
    found = pairs[0].numel()
    if on_device(tokens_x) and 2 * found > n * m:
        return False
    return pairs if found * SPARSE_TOKENS < n * P * m * Q else False


def _token_matches(tokens_x, tokens_y):
    """Every pair ``(r, c)`` of equal tokens: flat positions of X and of Y.

    Sorting Y's tokens and searching X's gives each ``r`` its run of equal
    tokens, so the pairs cost their number, not ``len(x) * len(y)``; their
    order depends on the tokens alone (deterministic sums).
    """
    order = torch.argsort(tokens_y, stable=True)
    lo = torch.searchsorted(tokens_y[order], tokens_x, side="left")
    counts = torch.searchsorted(tokens_y[order], tokens_x, side="right") - lo
    rows = torch.repeat_interleave(
        torch.arange(len(tokens_x), device=tokens_x.device), counts
    )
    first = torch.cumsum(counts, 0) - counts  # each r's first pair
    t = torch.arange(len(rows), device=tokens_x.device)
    return rows, order[t - first[rows] + lo[rows]]


def _sparse_tokens(pairs, D_x, D_y, m, mode):
    """An embedding's ghost term summed over its matching token pairs only.

    ``K[i, j] += d_{i,p} . d'_{j,q}`` for every ``t_{i,p} = t'_{j,q}``, in
    pieces of at most :data:`GHOST_SCRATCH` numbers, added in pair order.
    """
    n, P, n_outputs, h = D_x.shape
    Q = D_y.shape[1]
    rows, columns = pairs
    dx = D_x.reshape(n * P, n_outputs, h)
    dy = D_y.reshape(-1, n_outputs, h) if mode != "vector" else D_y.reshape(-1, h)
    extra = {"trace": (), "vector": (n_outputs,), "full": (n_outputs, n_outputs)}
    result = D_x.new_zeros(n * m, *extra[mode])
    scratch = scratch_numbers(D_x, n * m * math.prod(extra[mode]))
    step = max(1, scratch // (n_outputs * n_outputs * h))
    for t0 in range(0, len(rows), step):
        r, c = rows[t0 : t0 + step], columns[t0 : t0 + step]
        if mode == "trace":
            values = (dx[r] * dy[c]).sum(dim=(1, 2))
        elif mode == "vector":
            values = torch.einsum("tah,th->ta", dx[r], dy[c])
        else:
            values = torch.einsum("tah,tbh->tab", dx[r], dy[c])
        result.index_add_(0, r // P * m + c // Q, values)
    return result.view(n, m, *extra[mode])


def ghost_diagonal(term, A, D):
    """``sum_o |G_o|^2`` per row of one ghost term, by per-row position Grams."""
    n, P = D.shape[0], D.shape[1]
    step = max(1, scratch_numbers(D, n * ROW_SCRATCH) // max(1, P * P))
    parts = []
    for r0 in range(0, n, step):
        a, d = A[r0 : r0 + step], D[r0 : r0 + step].flatten(2)
        signal = d @ d.transpose(1, 2)
        gram = _input_gram_rows(term, a).to(signal.dtype)
        parts.append((gram * signal).sum(dim=(1, 2)))
    return torch.cat(parts)


def ghost_sketch(term, A, D, start, stop, factors):
    """Rows ``start:stop`` of ``vec D`` of one ghost term, Kronecker-sketched.

    ``sum_p (u . vec d_p) (v . a_p)`` (``v[token]`` for an embedding): (n, m).
    """
    U, V = factors
    signals = D.flatten(2)[:, :, start:stop] @ U  # (n, P, m)
    inputs = V[A] if term.tokens else A @ V  # (n, P, m)
    return (signals * inputs).sum(dim=1)
