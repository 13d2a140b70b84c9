"""Conjugate gradient inverse-HVP solver (see :mod:`recprune.scoring.solvers.base`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from recprune.errors import ScoringError
from recprune.scoring.solvers.base import IHVPSolver, SolverReport, _check_finite, register_solver
from recprune.utils.progress import progress


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
