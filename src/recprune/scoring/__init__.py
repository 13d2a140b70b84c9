"""Scoring stage: per-sample scores that selectors rank by.

- :mod:`recprune.scoring.influence` — DEALRec influence score (Eq. 11) on the surrogate.
- :mod:`recprune.scoring.ihvp` — inverse-HVP solvers (LiSSA, CG, exact), registered by name.
- :mod:`recprune.scoring.effort` — DEALRec effort score (Eq. 12) on the LLM (imports transformers;
  import it explicitly).
"""

from recprune.scoring.influence import InfluenceConfig, InfluenceResult, influence_scores
from recprune.scoring.objective import SurrogateObjective, resolve_params
from recprune.scoring.solvers import SOLVERS, IHVPSolver, SolverReport, get_solver, register_solver

__all__ = ["SOLVERS", "IHVPSolver", "InfluenceConfig", "InfluenceResult", "SolverReport",
           "SurrogateObjective", "get_solver", "influence_scores", "register_solver",
           "resolve_params"]
