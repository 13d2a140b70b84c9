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

    ``exclude[rows[b]]`` are set to -inf for row ``b`` before ranking (in place). The order of
    exactly tied scores is whatever ``torch.topk`` returns.
    """
    if exclude is not None:
        if rows is None:
            raise ValueError("rows are needed with exclude")
        sub = exclude.subset(rows)
        r = torch.from_numpy(sub.row_ids())
        c = torch.from_numpy(sub.items.astype(np.int64))
        scores[r, c] = -torch.inf
    k = min(k, scores.shape[1])
    return torch.topk(scores, k, dim=1).indices


def recall_ndcg(topk: np.ndarray | torch.Tensor, truth: Sequences, rows: np.ndarray,
                ks: SeqT[int] = (10, 20, 50)) -> dict[str, np.ndarray]:
    """Per-user Recall@K and NDCG@K for every K in ``ks``.

    ``topk`` (B, >= max(ks)) ranked item ids; ``truth[rows[b]]`` the ground-truth items of row b.
    Returns arrays of length B keyed ``"recall@K"`` / ``"ndcg@K"``. Users with empty truth get NaN.
    """
    topk = np.asarray(topk.cpu() if isinstance(topk, torch.Tensor) else topk)
    b, width = topk.shape
    if max(ks) > width:
        raise ValueError(f"need at least {max(ks)} ranked items, got {width}")
    sub = truth.subset(rows)
    # hit[b, j] = topk[b, j] in truth of b; vectorised via sorted (row, item) keys
    n_items = int(max(topk.max(initial=0), sub.items.max(initial=0))) + 1
    keys = np.unique(sub.row_ids() * n_items + sub.items.astype(np.int64))
    q = (np.arange(b)[:, None] * n_items + topk).ravel()
    pos = np.searchsorted(keys, q)
    hit = (pos < len(keys)) & (keys[np.minimum(pos, len(keys) - 1)] == q)
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
