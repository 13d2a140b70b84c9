"""LiSSA inverse-HVP solver (see :mod:`recprune.scoring.solvers.base`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from recprune.errors import ConfigError
from recprune.scoring.solvers.base import (IHVPSolver, SolverReport, _check_finite, register_solver,
                                           relative_residual)
from recprune.utils.progress import progress


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
