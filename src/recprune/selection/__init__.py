"""Selection stage: selectors registered by name (``get_selector('dealrec', lam=0.3)``).

Registered: ``random``, ``greedy``, ``dealrec`` and its ablations ``dealrec_no_influence``,
``dealrec_no_effort``, ``dealrec_greedy``; the baselines ``grand``, ``el2n``, ``ccs``,
``tfdcon``, ``recranker``; ``goracs``; and ``recent`` (a recency control: random among the
users active in the validation period). Every module of this package is imported when the
registry is first asked, so a new method is one new file here (or a plugin module).
"""

from recprune.selection.base import (SELECTORS, ScoreTable, Selection, Selector, check_budget,
                                     get_selector, minmax, register_selector, top_scores)
from recprune.selection.dealrec import DEALRec, equal_width_groups, overall_score, stratified_sample

__all__ = ["DEALRec", "SELECTORS", "ScoreTable", "Selection", "Selector", "check_budget",
           "equal_width_groups", "get_selector", "minmax", "overall_score", "register_selector",
           "stratified_sample", "top_scores"]
