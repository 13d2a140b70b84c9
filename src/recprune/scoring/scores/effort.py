"""DEALRec effort score (Eq. 12): the LLM's LoRA gradient norm, chunk-cached by the scorer."""

from __future__ import annotations

import numpy as np

from recprune.scoring.context import ScoringContext
from recprune.scoring.registry import register_score


@register_score("effort", "column", order=20)
def effort(ctx: ScoringContext) -> tuple[np.ndarray, dict]:
    """Effort score (LLM LoRA gradient norm) of every pool row; chunk-cached in scores/effort/."""
    from recprune.scoring.effort import EffortConfig, EffortScorer

    model, tok = ctx.llm
    cfg = ctx.cfg.effort
    scorer = EffortScorer(model, tok, config=cfg if isinstance(cfg, EffortConfig)
                          else EffortConfig(**cfg))
    if ctx.cfg.effort_cache:
        # per-sample scores: a pool takes its users' values from an all-users cache
        return scorer.load_all_users(ctx.ds, ctx.cfg.effort_cache)[ctx.rows], {}
    eff = scorer.score(ctx.ds, ctx.rows, cache_dir=ctx.run / "scores" / "effort",
                       progress=ctx.show)
    return eff, {}
