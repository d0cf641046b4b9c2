"""The layer-hook engine in a diagonal metric (the path of Adam).

With a positive per-parameter metric ``S`` every product is
``J(X) diag(S) J(Y)^T``, and the ghost form's ``(a . a')(d . d')`` no
longer factorises: a per-parameter scale couples the two sides. In a
metric (docs/design.md, section 7.6):

- parameters the plan instantiates (norms, the fallback, tied parameters,
  Kronecker layers the cost rule instantiates) are scaled by ``sqrt(S)``;
- an embedding stays ghost: its input is one-hot, so ``S`` meets one row
  of the table per position, and its signals are scaled by
  ``sqrt(S[token])`` (only the rows the tokens touch);
- any other ghost term is either instantiated, ``sqrt(S) * G`` with
  ``G_o = sum_p d_{o,p} a_p^T``, or kept in *pairwise* form: per pair of
  rows and of positions ``U = sum_o d_{o,p} * d'_{o,q}`` (``h_out``),
  ``V = a_p * a'_q`` (``h_in``), and the term is ``U^T S V``, by the cost
  rule :func:`pairwise_is_cheaper`.

Pairwise products go in row sub-blocks of at most
``_ghost.GHOST_SCRATCH`` numbers, sizes set by the shapes alone, as ghost
products do.
"""

import torch

from ..._compute._blocking import TILE_ROWS
from . import _ghost


def pairwise_is_cheaper(h_in, h_out, P, n_outputs):
    """``P^2 (h_in h_out + O h_out) < O h_in h_out (1 + 2 P / T)``.

    Per pair of rows (traced), the pairwise form costs ``P^2`` position
    pairs of ``h_in h_out`` (``S V``, by one matrix product over a block)
    and ``O h_out`` (``U``); the instantiated one ``O h_in h_out``, plus
    building ``G`` amortised over a tile of ``T`` rows (as in
    ``_ghost.ghost_is_cheaper``). With ``P = 1`` and ``O > 1`` pairwise
    wins by about ``O``.
    """
    pairwise = P * P * (h_in * h_out + n_outputs * h_out)
    instantiated = n_outputs * h_in * h_out * (1 + 2 * P / TILE_ROWS)
    return pairwise < instantiated


def instantiate_term(A, D, root):
    """``sqrt(S) * G``, ``G_o = sum_p d_{o,p} a_p^T``: (n, O, h_out, h_in)."""
    return torch.einsum("npoh,npa->noha", D, A).mul_(root)


def contract_gradients(G_x, G_y, mode, vectors=None):
    """Gram of per-example gradients ``(n, O, k)``: traced, full or applied."""
    if mode == "trace":
        return G_x.flatten(1) @ G_y.flatten(1).T
    if mode == "full":
        return torch.einsum("iak,jbk->ijab", G_x, G_y)
    folded = torch.einsum("jbk,jb->jk", G_y, vectors)
    return torch.einsum("iak,jk->ija", G_x, folded)


def contract_pairwise(tx, ty, mode, vectors=None):
    """``sum_{p,q} U^T S V`` between two blocks, in row sub-blocks of fixed size.

    ``W[h, (i,p), (j,q)] = sum_a a_{i,p,a} S[h, a] a'_{j,q,a}`` is one matrix
    product per sub-block; the signals then meet it per ``h``.
    """
    (A_x, D_x, S), (A_y, D_y, _) = tx, ty
    n, P, n_outputs, h = D_x.shape
    m, Q, h_in = D_y.shape[0], D_y.shape[1], A_x.shape[-1]
    entries = {"trace": 1, "vector": n_outputs, "full": n_outputs * n_outputs}[mode]
    scratch = _ghost.scratch_numbers(D_x, n * m * entries)
    per_pair = P * Q * h * (n_outputs if mode == "full" else 1)
    sy = min(m, max(1, scratch // per_pair))
    sx = min(n, max(1, scratch // (per_pair * sy)), max(1, scratch // (P * h * h_in)))
    if mode == "vector":  # fold v into Y's signals first: (m, Q, h)
        D_y = torch.einsum("jqbh,jb->jqh", D_y, vectors)
    elif mode == "trace":  # per h, contiguous (O, m Q): U by one batched product
        D_y = D_y.reshape(m * Q, n_outputs, h).permute(2, 1, 0).contiguous()
    extra = {"trace": (), "vector": (n_outputs,), "full": (n_outputs, n_outputs)}
    result = D_x.new_zeros(n, m, *extra[mode])
    for i0 in range(0, n, sx):
        i1 = min(i0 + sx, n)
        a = i1 - i0
        # X's inputs scaled by each row of S: (h, a P, h_in).
        B = (S[:, None, :] * A_x[i0:i1].reshape(1, a * P, h_in)).reshape(-1, h_in)
        dx = D_x[i0:i1].reshape(a * P, n_outputs, h)
        if mode == "trace":
            dx = dx.permute(2, 0, 1).contiguous()  # (h, a P, O)
        for j0 in range(0, m, sy):
            j1 = min(j0 + sy, m)
            b = j1 - j0
            W = (B @ A_y[j0:j1].reshape(b * Q, h_in).T).view(h, a * P, b, Q)
            if mode == "trace":
                U = torch.bmm(dx, D_y[:, :, j0 * Q : j1 * Q]).view(h, a * P, b, Q)
                part = torch.einsum("hxjq,hxjq->xj", W, U).view(a, P, b).sum(dim=1)
            elif mode == "vector":
                dy = D_y[j0:j1].permute(2, 0, 1)[:, None]  # (h, 1, b, Q)
                Z = (W * dy).sum(dim=3)  # (h, a P, b)
                part = torch.einsum("xoh,hxj->xjo", dx, Z)
                part = part.view(a, P, b, n_outputs).sum(dim=1)
            else:
                Z = torch.einsum("hxjq,jqbh->hxjb", W, D_y[j0:j1])
                part = torch.einsum("xoh,hxjb->xjob", dx, Z)
                part = part.view(a, P, b, n_outputs, n_outputs).sum(dim=1)
            result[i0:i1, j0:j1] = part
    return result


def pairwise_diagonal(A, D, S):
    """``sum_{p,q} U^T S V`` of each row with itself: (n,)."""
    n, P, _, h = D.shape
    h_in = A.shape[-1]
    scratch = _ghost.scratch_numbers(D, n * _ghost.ROW_SCRATCH)
    step = max(1, scratch // (P * h * max(P, h_in)))
    parts = []
    for r0 in range(0, n, step):
        a, d = A[r0 : r0 + step], D[r0 : r0 + step]
        W = torch.einsum("ipa,ha,iqa->iphq", a, S, a)
        U = torch.einsum("ipoh,iqoh->iphq", d, d)
        parts.append((W * U).sum(dim=(1, 2, 3)))
    return torch.cat(parts)


def gradient_sketch(G, factors):
    """Rows of ``sqrt(S) * G`` as ``(n, r, h_in)``, Kronecker-sketched: (n, m)."""
    U, V = factors
    return ((G @ V) * U).sum(dim=1)


def pairwise_sketch(A, D, S, start, stop, factors):
    """Rows ``start:stop`` of ``vec D`` of a pairwise term, sketched: (n, m).

    The scaled gradient is instantiated for those rows only (``(o, h)`` with
    ``h`` fastest): ``sqrt(S[h]) * sum_p d_{p,r} a_p``.
    """
    h = D.shape[-1]
    rows = torch.arange(start, stop, device=D.device) % h
    G = torch.einsum("ipr,ipa->ira", D.flatten(2)[:, :, start:stop], A)
    return gradient_sketch(G.mul_(S.sqrt()[rows]), factors)
