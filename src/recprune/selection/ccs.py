"""CCS: coverage-centric coreset selection (Zheng et al., ICLR'23), with EL2N as the importance
score as in the DEALRec paper's baseline.

Algorithm 1 of CCS: (1) hard-prune the ``beta`` fraction of the hardest (highest-score) samples;
(2) split the remaining score range into ``k`` equal-width strata; (3) repeatedly take the
smallest remaining stratum, draw ``min(|stratum|, floor(remaining budget / strata left))`` of its
members uniformly at random, and drop it. Steps (2)-(3) are exactly DEALRec's Algorithm 2 (which
is borrowed from CCS), so :func:`~recprune.selection.dealrec.equal_width_groups` and
:func:`~recprune.selection.dealrec.stratified_sample` are reused unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recprune.errors import ConfigError
from recprune.selection.base import ScoreTable, Selection, Selector, check_budget, register_selector
from recprune.selection.dealrec import equal_width_groups, stratified_sample


@register_selector("ccs")
@dataclass
class CCS(Selector):
    """Coverage-centric coreset selection.

    beta: hard-cutoff rate, the fraction of the highest-score samples removed first (CCS tunes it
        per pruning rate; 0.1 by default here, larger values suit more aggressive pruning).
    n_strata: number of equal-width score strata ``k`` (CCS: 50).
    score: the importance score (``el2n`` as in DEALRec; ``grand``, ``influence``, ... work too).
    """

    beta: float = 0.1
    n_strata: int = 50
    score: str = "el2n"

    def __post_init__(self) -> None:
        if not 0 <= self.beta < 1:
            raise ConfigError(f"beta (hard-cutoff rate) must be in [0, 1), got {self.beta}")
        if self.n_strata < 1:
            raise ConfigError(f"the number of strata must be >= 1, got {self.n_strata}")

    @property
    def requires(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.score,)

    def select(self, scores: ScoreTable, budget: int, *, seed: int = 0) -> Selection:
        s = scores[self.score]
        n = len(s)
        n_pruned = int(self.beta * n)
        order = np.argsort(-s, kind="stable")
        keep = np.sort(order[n_pruned:])
        budget = check_budget(budget, len(keep))
        stratum = np.full(n, -1, dtype=np.int64)  # -1: hard-pruned
        stratum[keep] = equal_width_groups(s[keep], self.n_strata)
        sub, log = stratified_sample(stratum[keep], self.n_strata, budget,
                                     np.random.default_rng(seed))
        pos = keep[sub]
        if len(pos) != budget:  # cannot happen when budget <= len(keep)
            raise AssertionError(f"selected {len(pos)} samples for a budget of {budget}")
        return Selection(rows=scores.rows[pos], extras={"stratum": stratum},
                         info={"score": self.score, "hard_pruned": n_pruned,
                               "hard_cutoff_score": float(s[order[n_pruned - 1]])
                               if n_pruned else None,
                               "strata": log,
                               "nonempty_strata": int(len(np.unique(stratum[keep])))})
