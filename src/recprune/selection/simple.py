"""Baseline selectors: uniform random, and greedy top-k of one score."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recprune.selection.base import ScoreTable, Selection, Selector, check_budget, register_selector


@register_selector("random")
@dataclass
class RandomSelector(Selector):
    """Uniform sampling without replacement (a strong baseline in data-efficient training)."""

    def select(self, scores: ScoreTable, budget: int, *, seed: int = 0) -> Selection:
        budget = check_budget(budget, len(scores))
        pos = np.random.default_rng(seed).choice(len(scores), size=budget, replace=False)
        return Selection(rows=scores.rows[pos])


@register_selector("greedy")
@dataclass
class GreedySelector(Selector):
    """The ``budget`` samples with the highest ``score`` (ties: lower row first)."""

    score: str = "influence"

    @property
    def requires(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.score,)

    def select(self, scores: ScoreTable, budget: int, *, seed: int = 0) -> Selection:
        budget = check_budget(budget, len(scores))
        pos = np.argsort(-scores[self.score], kind="stable")[:budget]
        return Selection(rows=scores.rows[pos])
