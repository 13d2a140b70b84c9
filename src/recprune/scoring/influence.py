"""Influence score (DEALRec Eq. 11).

``I(s) = (1/n) grad L(s)^T x`` with ``x = (H + damping I)^{-1} v`` and
``v = (1/n) sum_i grad L(s_i)``
(the "symmetric trick": one inverse-HVP serves every sample). ``I(s) > 0`` means that removing
``s`` would raise the empirical risk, i.e. ``s`` is useful. The scores of all samples come in
batches, either from explicit per-sample gradients (``vmap(grad(.))``) contracted with ``x``, or
(default, same values) from one forward-mode ``jvp`` of the per-sample losses along ``x``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from recprune.errors import ScoringError
from recprune.scoring.objective import SurrogateObjective
from recprune.scoring.solvers import SolverReport, get_solver
from recprune.surrogate.samples import SurrogateSamples
from recprune.surrogate.sasrec import SASRec
from recprune.utils.progress import progress

log = logging.getLogger(__name__)


@dataclass
class InfluenceConfig:
    # 'all' (the paper's theta), 'reference' (one 64x64 layer), or parameter names
    params: str | list[str] = "all"
    solver: str = "lissa"
    solver_options: dict = field(default_factory=dict)
    per_sample: str = "jvp"  # 'jvp' (forward-mode, fast) or 'vmap' (explicit per-sample grads)
    batch_size: int = 256  # samples per batch of the per-sample pass
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class InfluenceResult:
    scores: np.ndarray  # Eq. 11 score of every user row
    ihvp: torch.Tensor  # x = (H + damping I)^{-1} v
    mean_grad: torch.Tensor  # v
    report: SolverReport
    param_names: list[str]
    n_params: int
    seconds: dict[str, float]


def influence_scores(model: SASRec, samples: SurrogateSamples,
                     config: InfluenceConfig | None = None,
                     *, loss: str = "ce", show_progress: bool = True) -> InfluenceResult:
    """Influence score of every training sample on the surrogate's empirical risk."""
    cfg = config or InfluenceConfig()
    opts = {"seed": cfg.seed, **cfg.solver_options} if cfg.solver in ("lissa", "cg") else dict(
        cfg.solver_options)
    solver = get_solver(cfg.solver, **opts)
    obj = SurrogateObjective(model, samples, params=cfg.params, loss=loss, seed=cfg.seed)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    v = obj.mean_grad()
    if not torch.isfinite(v).all():
        raise ScoringError("the surrogate's mean training gradient is not finite; retrain it")
    timings["mean_grad"] = time.perf_counter() - t
    t = time.perf_counter()
    x, report = solver.solve(obj, v, show_progress=show_progress)
    timings["ihvp"] = time.perf_counter() - t
    if report.residual is not None and report.residual > 0.5:
        log.warning("influence: the %s inverse-HVP estimate is poor (relative residual %.2f; "
                    "1.0 is what x = 0 gives): the scores' ranking may be unreliable. Consider "
                    "more LiSSA depth/repeats, a larger scale, or --solver cg (converged, "
                    "deterministic).", report.solver, report.residual)
    t = time.perf_counter()
    with progress(show_progress) as prog:
        task = prog.add_task("influence: per-sample", total=len(obj.active_rows), info="")
        dots = obj.per_sample_dot(x, batch_size=cfg.batch_size, method=cfg.per_sample,
                                  on_batch=lambda k: prog.advance(task, k))
    scores = dots / obj.n
    if not np.isfinite(scores).all():
        bad = np.flatnonzero(~np.isfinite(scores))
        raise ScoringError(f"non-finite influence scores for {len(bad)} samples "
                           f"(first rows {bad[:5].tolist()})")
    timings["per_sample"] = time.perf_counter() - t
    return InfluenceResult(scores=scores, ihvp=x, mean_grad=v, report=report,
                           param_names=obj.names, n_params=obj.dim, seconds=timings)
