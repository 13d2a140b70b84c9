"""DEALRec influence score (Eq. 11) of every user on the surrogate."""

from __future__ import annotations

import numpy as np

from recprune.scoring.context import ScoringContext
from recprune.scoring.influence import influence_scores
from recprune.scoring.registry import register_score


def _key(ctx: ScoringContext) -> dict:
    sur = ctx.surrogate
    return {"influence": ctx.cfg.influence, "surrogate": ctx.surrogate_key,
            "loss": sur.config.loss, "data": ctx.data_key()}


@register_score("influence", "column", key=_key, all_users=True, order=10)
def influence(ctx: ScoringContext) -> tuple[np.ndarray, dict]:
    """DEALRec influence score of every user on the surrogate (Eq. 11)."""
    sur = ctx.surrogate
    res = influence_scores(sur.model, ctx.samples, ctx.cfg.influence, loss=sur.config.loss,
                           show_progress=ctx.show)
    return res.scores, {"params": res.param_names, "n_params": res.n_params,
                        "report": res.report.to_dict()}
