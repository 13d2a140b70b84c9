"""DEALRec ablations of the paper's Figure 4, each a registered selector.

* ``dealrec_no_influence`` ("w/o IS"): the influence score removed; samples are grouped by the
  (min-max normalised) effort score alone and drawn with Algorithm 2.
* ``dealrec_no_effort`` ("w/o delta_s"): the effort score removed (lambda = 0); influence only,
  Algorithm 2. Needs no LLM.
* ``dealrec_greedy`` ("Greedy"): the overall score of Eq. 13, but the highest-scoring samples are
  taken instead of the coverage-enhanced Algorithm 2.

All keep DEALRec's other options (``n_groups``, ``hard_prune``); the option an ablation fixes is
rejected if set to anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recprune.errors import ConfigError
from recprune.selection.base import ScoreTable, minmax, register_selector
from recprune.selection.dealrec import DEALRec


@register_selector("dealrec_no_influence")
@dataclass
class DEALRecNoInfluence(DEALRec):
    """Effort score only (``lam`` is meaningless without the influence term and must stay 1)."""

    lam: float = 1.0

    def __post_init__(self) -> None:
        if self.lam != 1.0:
            raise ConfigError("dealrec_no_influence groups by the effort score alone; lam does "
                              "not apply")
        super().__post_init__()

    @property
    def requires(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("effort",)

    def overall(self, scores: ScoreTable) -> np.ndarray:
        return minmax(scores["effort"])


@register_selector("dealrec_no_effort")
@dataclass
class DEALRecNoEffort(DEALRec):
    """Influence score only (lambda fixed to 0)."""

    lam: float = 0.0

    def __post_init__(self) -> None:
        if self.lam != 0.0:
            raise ConfigError("dealrec_no_effort fixes lam = 0 (no effort score)")
        super().__post_init__()


@register_selector("dealrec_greedy")
@dataclass
class DEALRecGreedy(DEALRec):
    """Overall score (Eq. 13), greedy top instead of Algorithm 2."""

    strategy: str = "greedy"

    def __post_init__(self) -> None:
        if self.strategy != "greedy":
            raise ConfigError("dealrec_greedy fixes strategy = 'greedy'; use 'dealrec' for "
                              "Algorithm 2")
        super().__post_init__()
