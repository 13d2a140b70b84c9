"""Inverse Hessian-vector product solvers behind one interface.

Every solver approximates ``x = (H + damping * I)^{-1} v`` for the empirical-risk Hessian ``H``
of a :class:`~recprune.scoring.objective.SurrogateObjective` and returns ``(x, report)``; the
report says how well it converged. Solvers are registered by name in :data:`SOLVERS`.

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

import math
import time
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np
import torch

from recprune.errors import ConfigError, ScoringError
from recprune.scoring.objective import SurrogateObjective
from recprune.utils.progress import progress
from recprune.utils.registry import Registry

SOLVERS: Registry[IHVPSolver] = Registry("iHVP solver")
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


@register_solver("lissa")
@dataclass
class LiSSA(IHVPSolver):
    depth: int = 5000  # recursion steps T
    damping: float = 0.01  # d in the reference parametrisation; effective damping = d * scale
    scale: float = 25.0
    repeats: int = 1  # independent recursions, averaged
    batch_size: int = 1  # samples per Hessian estimate (paper / reference: 1)
    seed: int = 0
    check_residual: bool = True
    report_every: int = 100

    def __post_init__(self) -> None:
        if self.depth <= 0 or self.repeats <= 0 or self.batch_size <= 0:
            raise ConfigError("LiSSA depth, repeats and batch_size must be positive")
        if self.scale <= 0 or not 0 <= self.damping < 1:
            raise ConfigError("LiSSA needs scale > 0 and 0 <= damping < 1")

    @property
    def effective_damping(self) -> float:
        return self.damping * self.scale

    def solve(self, obj, v, *, show_progress=False):
        t0 = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        hvp = obj.hvp_sampler(self.batch_size, rng)
        est = torch.zeros_like(v)
        trace: list[dict] = []
        with progress(show_progress) as prog:
            task = prog.add_task("influence: LiSSA", total=self.depth * self.repeats, info="")
            for rep in range(self.repeats):
                h = v.clone()
                prev = h.clone()
                for t in range(1, self.depth + 1):
                    h = v + (1.0 - self.damping) * h - hvp(h) / self.scale
                    if t % self.report_every == 0 or t == self.depth:
                        _check_finite(h, "the LiSSA recursion",
                                      f"increase scale (now {self.scale}) so that the Hessian's "
                                      "eigenvalues divided by it stay below 2, or increase damping")
                        hn = float(h.norm())
                        change = float((h - prev).norm()) / max(hn, 1e-30)
                        prev = h.clone()
                        trace.append({"repeat": rep, "step": t, "norm": hn / self.scale,
                                      "rel_change": change})
                        prog.update(task, advance=self.report_every if t % self.report_every == 0
                                    else t % self.report_every,
                                    info=f"|x| {hn / self.scale:.4g}  change {change:.2e}")
                est += h / self.scale
        x = est / self.repeats
        # converged if the last window changed the estimate by < 5% (stochastic noise floor)
        last = [r["rel_change"] for r in trace[-3:]]
        rep = SolverReport(solver="lissa", damping=self.effective_damping,
                           seconds=time.perf_counter() - t0, iterations=self.depth * self.repeats,
                           converged=bool(last and max(last) < 0.05), trace=trace,
                           notes=f"reference parametrisation: d={self.damping}, scale={self.scale}")
        if self.check_residual:
            rep.residual = relative_residual(obj, x, v, self.effective_damping)
        rep.seconds = time.perf_counter() - t0
        return x, rep


@register_solver("cg")
@dataclass
class ConjugateGradient(IHVPSolver):
    damping: float = 0.25
    max_iter: int = 50
    tol: float = 1e-4  # stop when ||r|| / ||v|| < tol
    hessian_samples: int | None = None  # None: all samples; else a fixed random subsample
    seed: int = 0

    def solve(self, obj, v, *, show_progress=False):
        t0 = time.perf_counter()
        rows = obj.active_rows
        if self.hessian_samples is not None and self.hessian_samples < len(rows):
            rng = np.random.default_rng(self.seed)
            rows = np.sort(rng.choice(rows, self.hessian_samples, replace=False))
            weight = len(obj.active_rows) / obj.n / len(rows)
        else:
            weight = 1.0 / obj.n
        batches = obj.batches(rows)

        def A(p: torch.Tensor) -> torch.Tensor:
            hv = torch.zeros_like(p)
            for b in batches:
                hv += obj.hvp(p, b, weight=1.0)
            return hv * weight + self.damping * p

        x = torch.zeros_like(v)
        r = v.clone()
        p = r.clone()
        rs = float(r @ r)
        vn = math.sqrt(float(v @ v)) or 1.0
        trace, converged, it = [], False, 0
        with progress(show_progress) as prog:
            task = prog.add_task("influence: CG", total=self.max_iter, info="")
            for it in range(1, self.max_iter + 1):
                ap = A(p)
                curv = float(p @ ap)
                if curv <= 0:
                    raise ScoringError(
                        f"CG met negative curvature (p'(H + {self.damping} I)p = {curv:.3g}) at "
                        f"iteration {it}: the damped Hessian is not positive definite; increase "
                        "damping")
                alpha = rs / curv
                x += alpha * p
                r -= alpha * ap
                rs_new = float(r @ r)
                rel = math.sqrt(rs_new) / vn
                trace.append({"iteration": it, "residual": rel})
                prog.update(task, advance=1, info=f"residual {rel:.2e}")
                if rel < self.tol:
                    converged = True
                    break
                p = r + (rs_new / rs) * p
                rs = rs_new
        _check_finite(x, "the CG solution", "increase damping")
        rep = SolverReport(solver="cg", damping=self.damping, seconds=time.perf_counter() - t0,
                           iterations=it, converged=converged,
                           residual=trace[-1]["residual"] if trace else 0.0, trace=trace,
                           notes="" if self.hessian_samples is None else
                           f"Hessian from {len(rows)} sampled training samples")
        return x, rep


@register_solver("exact")
@dataclass
class ExactSolver(IHVPSolver):
    damping: float = 0.25

    def solve(self, obj, v, *, show_progress=False):
        t0 = time.perf_counter()
        H = obj.dense_hessian().double()
        H = 0.5 * (H + H.T)
        A = H + self.damping * torch.eye(len(H), dtype=H.dtype, device=H.device)
        eig = torch.linalg.eigvalsh(A)
        x = torch.linalg.solve(A, v.double()).to(v.dtype)
        rep = SolverReport(solver="exact", damping=self.damping, seconds=time.perf_counter() - t0,
                           iterations=1, converged=True,
                           residual=float((A @ x.double() - v.double()).norm() / v.norm()),
                           notes=f"eigenvalues of H + damping I in [{float(eig[0]):.4g}, "
                                 f"{float(eig[-1]):.4g}]")
        return x, rep
