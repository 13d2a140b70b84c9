"""Full-ranking top-K metrics with multi-item ground truth.

Recall@K = |top-K ∩ truth| / |truth|; NDCG@K = DCG@K / IDCG@K with binary relevance and
IDCG over ``min(|truth|, K)`` ideal hits. ``truth`` is the set of a user's items in the evaluated
period (duplicates count once). Items excluded from ranking (the user's history) cannot be hit.
"""

from __future__ import annotations

from collections.abc import Sequence as SeqT

import numpy as np
import torch

from recprune.data.dataset import Sequences


def topk_items(scores: torch.Tensor, k: int, exclude: Sequences | None = None,
               rows: np.ndarray | None = None) -> torch.Tensor:
    """Top-``k`` item ids per row of ``scores`` (B, n_items + 1), excluding history items.

    ``exclude[rows[b]]`` are set to -inf for row ``b`` before ranking (in place). Exactly tied
    scores are ordered by item id (lower first), so rankings are deterministic: the top-k is
    re-sorted by (score desc, id asc), and rows whose k-th and (k+1)-th scores tie (the cut
    falls inside a tie) are ranked with a stable full sort.
    """
    if exclude is not None:
        if rows is None:
            raise ValueError("rows are needed with exclude")
        sub = exclude.subset(rows)
        r = torch.from_numpy(sub.row_ids())
        c = torch.from_numpy(sub.items.astype(np.int64))
        scores[r, c] = -torch.inf
    n = scores.shape[1]
    k = min(k, n)
    kk = min(k + 1, n)
    vals, idx = torch.topk(scores, kk, dim=1)
    # order within the top-k by (score desc, id asc): ids ascending then a stable sort by score
    idx_sorted, perm = torch.sort(idx, dim=1)
    vals_by_id = torch.gather(vals, 1, perm)
    order = torch.sort(vals_by_id, dim=1, descending=True, stable=True).indices
    idx = torch.gather(idx_sorted, 1, order)
    vals = torch.gather(vals_by_id, 1, order)
    if kk > k:
        tie = vals[:, k - 1] == vals[:, k]
        if bool(tie.any()):
            t = torch.nonzero(tie).squeeze(1)
            full = torch.sort(scores[t], dim=1, descending=True, stable=True).indices[:, :k]
            idx[t, :k] = full
    return idx[:, :k]


def recall_ndcg(topk: np.ndarray | torch.Tensor, truth: Sequences, rows: np.ndarray,
                ks: SeqT[int] = (10, 20, 50)) -> dict[str, np.ndarray]:
    """Per-user Recall@K and NDCG@K for every K in ``ks``.

    ``topk`` (B, >= max(ks)) ranked item ids (``-1`` = no item, never a hit; a ranking shorter
    than K is padded with -1, so K larger than the candidate list is fine); ``truth[rows[b]]``
    the ground-truth items of row b (duplicates count once).
    Returns arrays of length B keyed ``"recall@K"`` / ``"ndcg@K"``. Users with empty truth get NaN.
    """
    topk = np.asarray(topk.cpu() if isinstance(topk, torch.Tensor) else topk)
    b, width = topk.shape
    if max(ks) > width:
        raise ValueError(f"need at least {max(ks)} ranked items, got {width}")
    sub = truth.subset(rows)
    # hit[b, j] = topk[b, j] in truth of b; vectorised via sorted (row, item) keys.
    # A negative id (-1: "no item", padding of generative rankings) is never a hit.
    n_items = int(max(topk.max(initial=0), sub.items.max(initial=0))) + 1
    keys = np.unique(sub.row_ids() * n_items + sub.items.astype(np.int64))
    valid = (topk >= 0).ravel()
    q = (np.arange(b)[:, None] * n_items + np.maximum(topk, 0)).ravel()
    pos = np.searchsorted(keys, q)
    hit = (pos < len(keys)) & (keys[np.minimum(pos, len(keys) - 1)] == q) & valid
    hit = hit.reshape(b, width).astype(np.float64)
    n_true = np.bincount(keys // n_items, minlength=b).astype(np.float64)
    disc = 1.0 / np.log2(np.arange(2, width + 2))
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for k in ks:
            hits_k = hit[:, :k]
            out[f"recall@{k}"] = hits_k.sum(1) / n_true
            ideal = np.cumsum(disc[:k])
            idcg = ideal[np.minimum(n_true, k).astype(int) - 1]
            idcg[n_true == 0] = np.nan
            out[f"ndcg@{k}"] = (hits_k * disc[:k]).sum(1) / idcg
    return out


def summarize(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean of each per-user metric over users with ground truth."""
    return {k: float(np.nanmean(v)) if len(v) else float("nan") for k, v in per_user.items()}
