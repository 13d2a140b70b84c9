"""GraNd and EL2N difficulty scores on (early-training or trained) surrogates."""

from __future__ import annotations

import numpy as np

from recprune.scoring.context import ScoringContext
from recprune.scoring.registry import register_score
from recprune.store import rows_key


def _grand_key(ctx: ScoringContext) -> dict:
    return {"grand": ctx.cfg.grand, "surrogate_config": ctx.surrogate_config,
            "data": ctx.data_key(), "rows": rows_key(ctx.rows)}


@register_score("grand", "column", key=_grand_key, order=50)
def grand(ctx: ScoringContext) -> tuple[np.ndarray, dict]:
    """GraNd: mean per-sample gradient norm over early-training surrogates."""
    from recprune.scoring.difficulty import grand_scores

    vals, secs = grand_scores(ctx.ds, ctx.surrogate_config, ctx.rows, ctx.cfg.grand,
                              show_progress=ctx.show, models=ctx.early_models)
    return vals, {"seconds_by_step": secs}


def _el2n_key(ctx: ScoringContext) -> dict:
    c = ctx.cfg.el2n
    base = {"el2n": c, "data": ctx.data_key(), "rows": rows_key(ctx.rows)}
    if c.mode == "trained":
        return {**base, "surrogate": ctx.surrogate_key}
    return {**base, "surrogate_config": ctx.surrogate_config}


@register_score("el2n", "column", key=_el2n_key, order=60)
def el2n(ctx: ScoringContext) -> tuple[np.ndarray, dict]:
    """EL2N: mean error-vector norm of the trained (or early) surrogate."""
    from recprune.scoring.difficulty import el2n_early, el2n_scores

    c = ctx.cfg.el2n
    if c.mode == "early":
        vals, secs = el2n_early(ctx.ds, ctx.surrogate_config, ctx.rows, c,
                                show_progress=ctx.show, models=ctx.early_models)
        return vals, {"seconds_by_step": secs}
    return el2n_scores(ctx.surrogate.model, ctx.samples, ctx.rows, max_tokens=c.max_tokens), {}
