"""Inverse Hessian-vector product solvers behind one interface.

Every solver approximates ``x = (H + damping * I)^{-1} v`` for the empirical-risk Hessian ``H``
of a :class:`~recprune.scoring.objective.SurrogateObjective` and returns ``(x, report)``; the
report says how well it converged. Solvers are registered by name in :data:`SOLVERS`; each is
one file of this package.

- ``lissa``: LiSSA (Agarwal et al., 2017), the DEALRec paper's Algorithm 1, in the reference
  implementation's parametrisation ``h <- v + (1 - d) h - H_t h / scale`` with ``H_t`` a Hessian
  estimate from ``batch_size`` random samples. Its fixed point is ``scale (H + d*scale I)^{-1} v``;
  recprune divides by ``scale``, so the effective damping is ``d * scale`` (reference: 0.01 x 25 =
  0.25). The paper's Algorithm 1 is the undamped ``d = 0, scale = 1`` case, which diverges unless
  every eigenvalue of H lies in (0, 2).
- ``cg``: conjugate gradient on ``(H + damping I) x = v`` with exact (full-data, or a fixed
  subsample's) Hessian-vector products.
- ``exact``: dense Hessian and a direct solve; only for small parameter subsets (tests, checks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch

from recprune.errors import ScoringError
from recprune.scoring.objective import SurrogateObjective
from recprune.utils.registry import Registry

SOLVERS: Registry[IHVPSolver] = Registry("iHVP solver", package="recprune.scoring.solvers")
register_solver = SOLVERS.register


def get_solver(name: str, **options) -> IHVPSolver:
    """Instantiate a registered solver: ``get_solver("lissa", depth=5000)``."""
    return SOLVERS.create(name, **options)


@dataclass
class SolverReport:
    solver: str
    damping: float
    seconds: float
    iterations: int
    converged: bool | None = None
    residual: float | None = None  # ||(H + damping I) x - v|| / ||v|| (exact HVPs), if computed
    trace: list[dict] = field(default_factory=list)  # progress of the iteration
    notes: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class IHVPSolver:
    name: ClassVar[str] = ""
    damping: float

    def solve(self, obj: SurrogateObjective, v: torch.Tensor, *,
              show_progress: bool = False) -> tuple[torch.Tensor, SolverReport]:
        raise NotImplementedError

    def config(self) -> dict:
        return {"solver": self.name, **{k: v for k, v in vars(self).items()
                                        if not k.startswith("_")}}


def relative_residual(obj: SurrogateObjective, x: torch.Tensor, v: torch.Tensor,
                      damping: float) -> float:
    """``||(H + damping I) x - v|| / ||v||`` with an exact full-data HVP."""
    r = obj.hvp_full(x) + damping * x - v
    return float(r.norm() / v.norm().clamp(min=1e-30))


def _check_finite(x: torch.Tensor, what: str, hint: str) -> None:
    if not torch.isfinite(x).all():
        raise ScoringError(f"{what} became non-finite; {hint}")
