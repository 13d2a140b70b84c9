"""Exact (dense Hessian) inverse-HVP solver (see :mod:`recprune.scoring.solvers.base`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from recprune.scoring.solvers.base import IHVPSolver, SolverReport, register_solver


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
