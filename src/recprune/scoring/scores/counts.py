"""Interaction counts of every pool row (the recency control and reports read them)."""

from __future__ import annotations

import numpy as np

from recprune.scoring.context import ScoringContext
from recprune.scoring.registry import register_score


@register_score("n_train", "column", order=30)
def n_train(ctx: ScoringContext) -> tuple[np.ndarray, dict]:
    """Number of training interactions of every pool row."""
    return ctx.ds.train.lengths[ctx.rows].astype(np.float64), {}


@register_score("n_valid", "column", order=40)
def n_valid(ctx: ScoringContext) -> tuple[np.ndarray, dict]:
    """Number of validation-period interactions of every pool row (0: inactive after the
    training period)."""
    return ctx.ds.valid.lengths[ctx.rows].astype(np.float64), {}
