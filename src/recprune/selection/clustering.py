"""Helpers of the clustering-based selectors (TF-DCon, RecRanker): row normalisation, seeded
k-means (scikit-learn's MiniBatchKMeans) and the allocation of a budget over clusters."""

from __future__ import annotations

import numpy as np

from recprune.errors import ConfigError


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); an all-zero row stays zero."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, eps)


def concat_normalised(*blocks: np.ndarray) -> np.ndarray:
    """Concatenate representations after L2-normalising each block row-wise, so that every block
    contributes equally to squared Euclidean distances (each block's part lies in [0, 4]) whatever
    its dimension or scale."""
    if not blocks:
        raise ConfigError("no representation to cluster")
    return np.concatenate([l2_normalise(b) for b in blocks], axis=1)


def kmeans_labels(x: np.ndarray, n_clusters: int, seed: int, *, batch_size: int = 4096,
                  n_init: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Cluster labels (n,) and centres (k, d) from scikit-learn's ``MiniBatchKMeans`` (seeded,
    k-means++ initialisation, best of ``n_init``). ``n_clusters`` is capped at the number of
    distinct rows (k-means cannot place more centres than there are distinct points)."""
    from sklearn.cluster import MiniBatchKMeans

    if n_clusters < 1:
        raise ConfigError(f"the number of clusters must be >= 1, got {n_clusters}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_distinct = len(np.unique(x, axis=0)) if len(x) <= 200_000 else len(x)
    k = int(min(n_clusters, n_distinct))
    if k <= 1:
        return np.zeros(len(x), dtype=np.int64), x.mean(axis=0, keepdims=True)
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=n_init,
                         batch_size=min(batch_size, len(x)), max_no_improvement=20)
    labels = km.fit_predict(x).astype(np.int64)
    return labels, km.cluster_centers_


def allocate(sizes: np.ndarray, budget: int, *, min_one: bool = True) -> np.ndarray:
    """Split ``budget`` over groups proportionally to their ``sizes`` (Hamilton / largest
    remainder), never more than a group holds.

    With ``min_one`` and ``budget >= #non-empty groups`` every non-empty group gets at least one;
    with a smaller budget the ``budget`` largest groups (ties: lower index) get one each. Returns
    integer counts with ``sum == budget`` (requires ``budget <= sizes.sum()``); deterministic.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if budget < 0 or budget > sizes.sum():
        raise ConfigError(f"cannot allocate {budget} samples over groups of {int(sizes.sum())}")
    counts = np.zeros(len(sizes), dtype=np.int64)
    nonempty = np.flatnonzero(sizes > 0)
    if min_one:
        if budget < len(nonempty):
            order = nonempty[np.lexsort((nonempty, -sizes[nonempty]))]
            counts[order[:budget]] = 1
            return counts
        counts[nonempty] = 1
    left = budget - int(counts.sum())
    while left > 0:
        room = sizes - counts
        open_ = np.flatnonzero(room > 0)
        quota = left * sizes[open_] / sizes[open_].sum()
        base = np.minimum(np.floor(quota).astype(np.int64), room[open_])
        if base.sum() == 0:  # hand out the remainder one by one, largest fractional part first
            frac = quota - np.floor(quota)
            order = open_[np.lexsort((open_, -frac))]
            take = order[:left]
            counts[take] += 1
            left -= len(take)
            continue
        counts[open_] += base
        left -= int(base.sum())
    return counts


def draw_per_group(labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator,
                   weights: np.ndarray | None = None) -> np.ndarray:
    """Draw ``counts[k]`` positions without replacement from every group ``k`` of ``labels``
    (uniformly, or proportionally to ``weights``); returns positions in group order."""
    out = []
    for k in np.flatnonzero(counts):
        members = np.flatnonzero(labels == k)
        p = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)[members]
            p = weighted_p(w, int(counts[k]))
        out.append(rng.choice(members, size=int(counts[k]), replace=False, p=p))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def weighted_p(w: np.ndarray, size: int) -> np.ndarray:
    """Sampling probabilities from non-negative weights, usable for ``size`` draws without
    replacement: when fewer than ``size`` weights are positive, the zero-weight entries get a tiny
    share (so they fill up the draw only after every positive-weight entry)."""
    w = np.clip(np.asarray(w, dtype=np.float64), 0, None)
    if (w > 0).sum() < size:
        pos = w[w > 0]
        tiny = (pos.min() if len(pos) else 1.0) * 1e-9
        w = np.where(w > 0, w, tiny)
    return w / w.sum()
