"""Selection stage: selectors registered by name (``get_selector('dealrec', lam=0.3)``)."""

from recprune.selection import dealrec, simple  # noqa: F401  (registers the selectors)
from recprune.selection.base import (SELECTORS, ScoreTable, Selection, Selector, check_budget,
                                     get_selector, minmax, register_selector)
from recprune.selection.dealrec import (DEALRec, equal_width_groups, overall_score,
                                        stratified_sample)

__all__ = ["DEALRec", "SELECTORS", "ScoreTable", "Selection", "Selector", "check_budget",
           "equal_width_groups", "get_selector", "minmax", "overall_score", "register_selector",
           "stratified_sample"]
