"""GraNd (Paul et al., NeurIPS'21, "Deep Learning on a Data Diet"): keep the samples with the
largest expected gradient norm early in training.

The score itself (``grand``) is computed by the pipeline on the surrogate (see
:func:`recprune.scoring.difficulty.grand_scores`): the L2 norm of a sample's loss gradient over
all surrogate parameters, after a few epochs of training, averaged over independent seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

from recprune.selection.base import ScoreTable, Selection, Selector, register_selector, top_scores


@register_selector("grand")
@dataclass
class GraNd(Selector):
    """The ``budget`` samples with the highest GraNd score.

    skip_top: fraction of the highest-scoring samples skipped first (the paper's "offset"
        variant for high pruning rates; 0 = plain top-k, the DEALRec baseline).
    """

    skip_top: float = 0.0
    score: str = "grand"

    @property
    def requires(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.score,)

    def select(self, scores: ScoreTable, budget: int, *, seed: int = 0) -> Selection:
        pos = top_scores(scores[self.score], budget, self.skip_top)
        return Selection(rows=scores.rows[pos],
                         info={"score": self.score, "skipped": int(self.skip_top * len(scores)),
                               "min_selected_score": float(scores[self.score][pos].min())})
