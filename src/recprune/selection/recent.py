"""``recent``: uniform sampling among the users still active in the validation period.

Not a method from the literature but a control for it. On a temporal split (DEALRec's 8:1:1 by
time) the users who interact again in the validation period carry the latest training-period
items, those the test period's users go on to buy. GORACS, whose transport target is the
validation interactions, selects mostly such users; ``recent`` draws them at random, so that
comparing the two separates "which recent users" from "recent users at all". It reads no test
data: the validation period precedes the test period.

If fewer pool users are active than the budget, all of them are taken and the rest is drawn
uniformly from the inactive ones (reported in ``info['n_active']`` and ``info['filled']``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recprune.errors import ConfigError
from recprune.selection.base import ScoreTable, Selection, Selector, check_budget, register_selector


@register_selector("recent")
@dataclass
class RecentSelector(Selector):
    """Uniform draw among pool users with at least ``min_valid`` validation interactions."""

    min_valid: int = 1
    requires = ("n_valid",)

    def __post_init__(self) -> None:
        if (isinstance(self.min_valid, bool) or not isinstance(self.min_valid, (int, np.integer))
                or self.min_valid < 1):
            raise ConfigError(f"recent.min_valid must be a positive integer, got "
                              f"{self.min_valid!r}")

    def select(self, scores: ScoreTable, budget: int, *, seed: int = 0) -> Selection:
        budget = check_budget(budget, len(scores))
        is_active = scores["n_valid"] >= self.min_valid
        active = np.flatnonzero(is_active)
        rng = np.random.default_rng(seed)
        if len(active) >= budget:
            pos = rng.choice(active, size=budget, replace=False)
            filled = 0
        else:
            rest = np.setdiff1d(np.arange(len(scores)), active)
            filled = budget - len(active)
            pos = np.concatenate([rng.permutation(active),
                                  rng.choice(rest, size=filled, replace=False)])
        return Selection(rows=scores.rows[pos],
                         extras={"active": is_active},
                         info={"n_active": int(len(active)), "filled": int(filled)})
