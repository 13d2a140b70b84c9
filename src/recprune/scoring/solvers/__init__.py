"""Inverse Hessian-vector product solvers (LiSSA, CG, exact), one file each, in :data:`SOLVERS`."""

from recprune.scoring.solvers.base import (SOLVERS, IHVPSolver, SolverReport, get_solver,
                                           register_solver, relative_residual)

__all__ = ["SOLVERS", "IHVPSolver", "SolverReport", "get_solver", "register_solver",
           "relative_residual"]
