"""RecRanker's adaptive user sampling (Luo et al., 2023) as a data-pruning baseline.

RecRanker samples instruction-tuning users with two strategies and merges them:

* importance-aware sampling: users with more interactions are preferred; the authors' release
  draws users with probability proportional to ``log(#interactions)`` (``weight="log"``, the
  default; ``"linear"``: proportional to the count itself);
* clustering-based sampling: k-means (10 clusters in the release) on user embeddings of a
  conventional recommender, each cluster contributing in proportion to its size;
* a "penalty for repetitive sampling" then damps users drawn several times.

The release draws both lists with replacement (0.6 x the target size each) and re-draws the final
set with replacement. A few-shot selection needs ``budget`` *distinct* users, so here the two
strategies draw disjoint parts without replacement, which makes the repetition penalty moot:

1. cluster part: ``max(round(cluster_share * budget), min(n_clusters, budget))`` users, allocated
   to the k-means clusters of ``sur_emb`` (the trained surrogate's user state; the DEALRec
   setting runs every baseline on the same surrogate) proportionally to cluster size with at
   least one per cluster (so every cluster is represented whenever ``budget >= n_clusters``),
   drawn uniformly inside each cluster;
2. importance part: the rest of the budget, drawn without replacement from the remaining users
   with probability proportional to the importance weight of ``n_train`` (the user's number of
   training interactions). Users with one interaction have ``log(1) = 0`` weight and are only
   taken if the positive-weight users run out.

``cluster_share`` defaults to 0.5: the release's two lists have the same length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recprune.errors import ConfigError
from recprune.selection.base import ScoreTable, Selection, Selector, check_budget, register_selector
from recprune.selection.clustering import (allocate, draw_per_group, kmeans_labels, l2_normalise,
                                           weighted_p)


@register_selector("recranker")
@dataclass
class RecRanker(Selector):
    """Importance-aware (more interactions) + clustering-based (diversity) user sampling.

    n_clusters: k-means clusters on the surrogate user representation (release: 10).
    cluster_share: fraction of the budget drawn by the clustering-based strategy.
    weight: importance weight of the interaction count: ``"log"`` (release) or ``"linear"``.
    view: the representation clustered on.
    """

    n_clusters: int = 10
    cluster_share: float = 0.5
    weight: str = "log"
    view: str = "sur_emb"

    def __post_init__(self) -> None:
        if self.n_clusters < 1:
            raise ConfigError(f"n_clusters must be >= 1, got {self.n_clusters}")
        if not 0 <= self.cluster_share <= 1:
            raise ConfigError(f"cluster_share must be in [0, 1], got {self.cluster_share}")
        if self.weight not in ("log", "linear"):
            raise ConfigError(f"weight must be 'log' or 'linear', got {self.weight!r}")

    @property
    def requires(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.view, "n_train")

    def importance(self, n_train: np.ndarray) -> np.ndarray:
        n = np.asarray(n_train, dtype=np.float64)
        return np.log(np.maximum(n, 1)) if self.weight == "log" else n

    def select(self, scores: ScoreTable, budget: int, *, seed: int = 0) -> Selection:
        n = len(scores)
        budget = check_budget(budget, n)
        rng = np.random.default_rng(seed)
        labels, centres = kmeans_labels(l2_normalise(scores.feature(self.view)),
                                        self.n_clusters, seed)
        sizes = np.bincount(labels, minlength=len(centres))
        n_cluster = min(budget, max(int(round(self.cluster_share * budget)),
                                    min(int((sizes > 0).sum()), budget)))
        counts = allocate(sizes, n_cluster)
        part_c = draw_per_group(labels, counts, rng)
        rest = np.setdiff1d(np.arange(n), part_c)
        w = self.importance(scores["n_train"])
        k = budget - len(part_c)
        part_i = (rng.choice(rest, size=k, replace=False, p=weighted_p(w[rest], k)) if k
                  else np.zeros(0, dtype=np.int64))
        pos = np.concatenate([part_c, part_i])
        how = np.zeros(n, dtype=np.int64)  # 0 not selected, 1 cluster part, 2 importance part
        how[part_c], how[part_i] = 1, 2
        return Selection(rows=scores.rows[pos], extras={"cluster": labels, "sampled_by": how},
                         info={"n_clusters": int(len(centres)), "cluster_sizes": sizes.tolist(),
                               "cluster_part": int(len(part_c)),
                               "importance_part": int(len(part_i)),
                               "drawn_per_cluster": counts.tolist()})
