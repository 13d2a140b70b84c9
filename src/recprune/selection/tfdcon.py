"""TF-DCon as a data-pruning baseline (Wu et al., 2023; DEALRec's adaptation).

TF-DCon condenses a content-based recommendation data set: an LLM extracts every user's
interests, users are clustered on those LLM interest representations together with the user
embeddings of a trained recommender, and one condensed user is synthesised per cluster. DEALRec
uses it as a pruning baseline that "clusters the user sequences based on the user representations
obtained from both well-trained recommender models and LLMs for selection"; nothing is
synthesised, real users are selected per cluster. Here:

* representation = ``[l2norm(sur_emb), l2norm(llm_emb)]``: the trained surrogate's user state
  and an LLM-side representation of the user's prompt, each L2-normalised so that both views
  weigh the same in the k-means distance;
* clusters: scikit-learn ``MiniBatchKMeans`` with ``n_clusters`` (default 50; ``None`` = one
  cluster per selected user, the closest analogue of one condensed user per cluster);
* draws: every cluster gets a share of the budget proportional to its size, at least one per
  cluster when the budget allows (:func:`~recprune.selection.clustering.allocate`); within a
  cluster the users are drawn uniformly at random (``within="random"``) or the ones closest to
  the cluster centre are taken (``within="centroid"``, TF-DCon's synthesis from cluster centres).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recprune.errors import ConfigError
from recprune.selection.base import ScoreTable, Selection, Selector, check_budget, register_selector
from recprune.selection.clustering import allocate, concat_normalised, draw_per_group, kmeans_labels


@register_selector("tfdcon")
@dataclass
class TFDCon(Selector):
    """Cluster users on surrogate + LLM representations, sample per cluster.

    n_clusters: k-means clusters (``None``: as many as the budget).
    within: ``"random"`` (uniform draws inside a cluster) or ``"centroid"`` (the members closest
        to the cluster centre).
    views: the representations clustered on (features of the score table).
    """

    n_clusters: int | None = 50
    within: str = "random"
    views: tuple[str, ...] = ("sur_emb", "llm_emb")

    def __post_init__(self) -> None:
        if self.n_clusters is not None and self.n_clusters < 1:
            raise ConfigError(f"n_clusters must be >= 1, got {self.n_clusters}")
        if self.within not in ("random", "centroid"):
            raise ConfigError(f"within must be 'random' or 'centroid', got {self.within!r}")
        self.views = tuple(self.views)
        if not self.views:
            raise ConfigError("tfdcon needs at least one representation in views")

    @property
    def requires(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.views

    def select(self, scores: ScoreTable, budget: int, *, seed: int = 0) -> Selection:
        budget = check_budget(budget, len(scores))
        x = concat_normalised(*(scores.feature(v) for v in self.views))
        k = budget if self.n_clusters is None else self.n_clusters
        labels, centres = kmeans_labels(x, k, seed)
        sizes = np.bincount(labels, minlength=len(centres))
        counts = allocate(sizes, budget)
        rng = np.random.default_rng(seed)
        if self.within == "random":
            pos = draw_per_group(labels, counts, rng)
        else:
            d = ((x - centres[labels]) ** 2).sum(axis=1)
            pos = np.concatenate([
                (m := np.flatnonzero(labels == c))[np.lexsort((m, d[m]))][:counts[c]]
                for c in np.flatnonzero(counts)])
        return Selection(rows=scores.rows[pos], extras={"cluster": labels},
                         info={"n_clusters": int(len(centres)),
                               "cluster_sizes": sizes.tolist(), "drawn": counts.tolist(),
                               "clusters_covered": int((counts > 0).sum())})
