"""GORACS: group-level optimal-transport-guided coreset selection (Mithas-114/GORACS).

Proxy objective (POO)
---------------------
With ``E_T`` the text embeddings of the N candidate training prompts, ``E_V`` those of M
validation prompts and ``g`` one LLM gradient norm per candidate (the effort score machinery),

    C = cdist(E_T, E_V) / max(cdist) - lam * (g / max g)[:, None],  then min-max scaled to [0, 1],

and the objective of a subset S (|S| = n) is the exact optimal-transport cost between the uniform
distribution on S and the uniform distribution on the validation set over ``C[S, :]``
(POT ``ot.emd2``). Small distances pull the subset towards the validation distribution, large
gradient norms (samples the LLM still has to learn) make a candidate cheaper.

Stage 1: greedy initialisation (as the reference)
------------------------------------------------
Facility-location greedy on the relaxation ``(1/M) sum_j min_{i in S} C_ij``: start from the row
with the smallest sum, then add the row minimising ``sum_j min(m_j, C_ij)`` (``m_j``: current
column minimum over S) until ``n`` rows are chosen. The objective is supermodular, so the
gains can only shrink as S grows, and the greedy is run *lazily* (Minoux): stale gains are upper
bounds, only the current best few are recomputed, and a row is taken once its fresh gain beats
every stale bound (ties: lower row). This selects exactly what the plain greedy selects, with a
few full passes over C instead of n. The reference may run past n and then drops members that
are no column's nearest neighbour; here stage 1 stops at exactly n.

Stage 2: refinement by swaps (our bounds, not the reference's estimate)
----------------------------------------------------------------------
From the optimal plan ``P`` and dual potentials ``(u, v)`` of the current S (``ot.emd`` with
``log=True``; ``u_i + v_j <= C_ij``), every swap "remove r in S, add a not in S" is bracketed
without solving it:

* lower bound (duality): keeping ``v`` and giving ``a`` its best feasible potential
  ``u~_a = min_j (C_aj - v_j)`` is dual-feasible for the new subset, so
  ``cost' >= cost + (u~_a - u_r) / n``. A swap with ``u~_a >= u_r`` can never improve: the
  member with the worst contribution (largest ``u_r``) and the non-member with the best reduced
  cost (smallest ``u~_a``) are the dual-guided candidates.
* upper bound (a feasible plan): moving row r's transport mass to row a is feasible, so
  ``cost' <= cost - sum_j P_rj C_rj + sum_j P_rj C_aj`` (one sparse product ``C P^T`` per pass).
  A pair with an upper bound below ``cost`` is a guaranteed improvement.

Each pass ranks the pairs with the smallest upper bounds (guaranteed improvements first), then the
dual-guided pairs (worst ``cut_num`` members x best ``cut_num`` non-members) by their lower bound,
drops every pair whose lower bound is not below ``cost``, and evaluates at most ``cut_num`` of
them exactly; the first whose exact OT cost is lower (relative tolerance 1e-9) is accepted. The
search stops after ``max_iters`` accepted swaps, after a pass without one, or at ``max_seconds``.
The reference estimates each row's marginal importance with a "second minimum" matrix built with
a mask written into a temporary copy (so the mask has no effect) and tries up to ``cut_num**2``
pairs per pass; none of that is used here. Every accepted swap strictly lowers the exact
objective, so ``objective_final <= objective_greedy``.

Memory and devices
------------------
C is one float32 (N, M) array (49k x 5k: 0.98 GB), filled in row chunks; every later pass works on
row chunks of about ``chunk_elems`` entries, so the peak is C plus a few chunk-sized temporaries
(plus the n x M float64 plan of the exact OT). The chunked passes run in torch on ``device``
(``"auto"``: CUDA when available, C then copied to the GPU once); the exact OT is POT's network
simplex on the CPU.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from recprune.errors import ConfigError, ScoringError
from recprune.selection.base import ScoreTable, Selection, Selector, check_budget, register_selector

log = logging.getLogger(__name__)

_REL_TOL = 1e-9


def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(spec)
    except RuntimeError as e:
        raise ConfigError(f"bad device {spec!r}: {e}") from None


def _chunks(n: int, m: int, chunk_elems: int) -> list[slice]:
    step = max(1, int(chunk_elems) // max(m, 1))
    return [slice(s, min(s + step, n)) for s in range(0, n, step)]


def cost_matrix(train_emb: np.ndarray, valid_emb: np.ndarray, grad_norm: np.ndarray | None,
                lam: float, *, device: str | torch.device = "cpu",
                chunk_elems: int = 1 << 22) -> np.ndarray:
    """The POO cost matrix (N, M) float32 in [0, 1] (see the module docstring), built in place in
    row chunks: three passes (distances + their max, shift by the gradient term + min/max,
    rescale), no full-size temporary."""
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    et = np.asarray(train_emb, dtype=np.float32)
    ev = torch.from_numpy(np.ascontiguousarray(valid_emb, dtype=np.float32)).to(dev)
    n, m = len(et), len(ev)
    if et.ndim != 2 or ev.ndim != 2 or et.shape[1] != ev.shape[1]:
        raise ConfigError(f"embedding shapes do not match: {et.shape} vs {tuple(ev.shape)}")
    if n == 0 or m == 0:
        raise ConfigError("GORACS needs at least one candidate and one validation sample")
    C = np.empty((n, m), dtype=np.float32)
    Ct = torch.from_numpy(C)
    parts = _chunks(n, m, chunk_elems)
    dmax = 0.0
    for sl in parts:
        d = torch.cdist(torch.from_numpy(et[sl]).to(dev), ev)
        dmax = max(dmax, float(d.max()))
        Ct[sl] = d.cpu()
    gn = None
    if lam and grad_norm is not None:
        g = np.asarray(grad_norm, dtype=np.float64)
        if len(g) != n:
            raise ConfigError(f"{len(g)} gradient norms for {n} candidates")
        gmax = float(g.max())
        gn = torch.from_numpy((g / gmax).astype(np.float32)) if gmax > 0 else None
    lo, hi = np.inf, -np.inf
    for sl in parts:
        blk = Ct[sl]
        if dmax > 0:
            blk.div_(dmax)
        if gn is not None:
            blk.sub_(lam * gn[sl, None])
        lo, hi = min(lo, float(blk.min())), max(hi, float(blk.max()))
    for sl in parts:
        if hi > lo:
            Ct[sl].sub_(lo).div_(hi - lo)
        else:
            Ct[sl].zero_()
    return C


@dataclass
class OTResult:
    cost: float
    plan: np.ndarray  # (n, M) float64
    u: np.ndarray
    v: np.ndarray


def ot_objective(C: np.ndarray, S: np.ndarray, *, duals: bool = False,
                 num_itermax: int = 10_000_000) -> float | OTResult:
    """Exact OT cost between uniform weights on the rows ``S`` and on all columns of ``C``
    (``ot.emd2``); with ``duals=True`` the plan and the dual potentials as well."""
    import ot

    S = np.asarray(S, dtype=np.int64)
    sub = np.asarray(C[S], dtype=np.float64)
    a = np.full(len(S), 1.0 / len(S))
    b = np.full(C.shape[1], 1.0 / C.shape[1])
    if not duals:
        cost, lg = ot.emd2(a, b, sub, numItermax=num_itermax, log=True)
        _check_ot(lg)
        return float(cost)
    plan, lg = ot.emd(a, b, sub, numItermax=num_itermax, log=True)
    _check_ot(lg)
    return OTResult(float(lg["cost"]), plan, np.asarray(lg["u"]), np.asarray(lg["v"]))


def _check_ot(lg: dict) -> None:
    if lg.get("result_code", 1) != 1 or lg.get("warning"):
        raise ScoringError(f"exact OT did not reach optimality ({lg.get('warning')}); raise "
                           "num_itermax")


def greedy_init(Ct: torch.Tensor, n: int, *, chunk_elems: int = 1 << 22,
                batch: int = 64) -> np.ndarray:
    """Stage 1 (lazy facility-location greedy); returns n row indices in the order added."""
    N, M = Ct.shape
    parts = _chunks(N, M, chunk_elems)
    sums = torch.cat([Ct[sl].sum(1, dtype=torch.float64) for sl in parts]).cpu().numpy()
    first = int(np.argmin(sums))
    chosen = [first]
    mcol = Ct[first].clone()

    def gains(idx: np.ndarray) -> np.ndarray:
        rows = Ct[torch.as_tensor(idx, device=Ct.device)]
        return (mcol - rows).clamp_min_(0).sum(1, dtype=torch.float64).cpu().numpy()

    bound = np.concatenate([gains(np.arange(sl.start, sl.stop)) for sl in parts])
    bound[first] = -np.inf
    fresh = np.ones(N, dtype=bool)
    while len(chosen) < n:
        while True:
            b = min(batch, N)
            top = np.argpartition(-bound, b - 1)[:b] if b < N else np.arange(N)
            top = top[np.lexsort((top, -bound[top]))]
            best = top[0]
            if fresh[best]:
                break
            stale = top[~fresh[top] & np.isfinite(bound[top])]
            bound[stale] = gains(stale)
            fresh[stale] = True
        chosen.append(int(best))
        torch.minimum(mcol, Ct[int(best)], out=mcol)
        bound[best] = -np.inf
        fresh[:] = False
    return np.asarray(chosen, dtype=np.int64)


@dataclass
class _Pass:
    """Candidate swaps of one refinement pass: (ub, lb, r_position, a_row)."""

    pairs: list[tuple[float, float, int, int]]
    guaranteed: int


def _candidate_swaps(Ct: torch.Tensor, S: np.ndarray, res: OTResult, cut_num: int,
                     chunk_elems: int) -> _Pass:
    N, M = Ct.shape
    n = len(S)
    dev = Ct.device
    member = np.zeros(N, dtype=bool)
    member[S] = True
    cost = res.cost
    plan = res.plan
    nz_r, nz_j = np.nonzero(plan)
    p_vals = plan[nz_r, nz_j]
    sub = Ct[torch.as_tensor(S, device=dev)].double().cpu().numpy()
    d = np.bincount(nz_r, weights=p_vals * sub[nz_r, nz_j], minlength=n)  # sum_j P_rj C_rj
    P = torch.sparse_coo_tensor(torch.from_numpy(np.vstack([nz_r, nz_j])),
                                torch.from_numpy(p_vals.astype(np.float32)), (n, M),
                                device=dev, check_invariants=False).coalesce()
    v = torch.as_tensor(res.v, dtype=torch.float32, device=dev)
    d_t = torch.as_tensor(d, dtype=torch.float64, device=dev)
    u_tilde = np.empty(N)
    best_ub: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    k = cut_num
    for sl in _chunks(N, max(M, n), chunk_elems):
        blk = Ct[sl]
        u_tilde[sl] = (blk - v).amin(1).double().cpu().numpy()
        q = torch.sparse.mm(P, blk.T).T.double()  # (rows, n): sum_j P_rj C_aj
        ub = q - d_t  # cost' - cost <= ub
        mem = torch.as_tensor(member[sl], device=dev)
        ub[mem] = torch.inf
        flat = ub.flatten()
        kk = min(k, flat.numel())
        vals, idx = torch.topk(flat, kk, largest=False)
        idx = idx.cpu().numpy()
        best_ub.append((vals.cpu().numpy(), sl.start + idx // n, idx % n))
    u_tilde[member] = np.inf
    vals = np.concatenate([b[0] for b in best_ub])
    a_rows = np.concatenate([b[1] for b in best_ub])
    r_pos = np.concatenate([b[2] for b in best_ub])
    keep = np.isfinite(vals)
    vals, a_rows, r_pos = vals[keep], a_rows[keep], r_pos[keep]
    order = np.lexsort((r_pos, a_rows, vals))[:k]
    u = res.u
    pairs: dict[tuple[int, int], tuple[float, float]] = {}
    for i in order:
        r, a = int(r_pos[i]), int(a_rows[i])
        pairs[(r, a)] = (cost + float(vals[i]), cost + (u_tilde[a] - u[r]) / n)
    worst = np.lexsort((np.arange(n), -u))[:k]
    outside = np.flatnonzero(~member)
    best_new = outside[np.lexsort((outside, u_tilde[outside]))][:k]
    for r in worst:
        for a in best_new:
            key = (int(r), int(a))
            if key not in pairs:
                pairs[key] = (np.inf, cost + (u_tilde[a] - u[r]) / n)
    tol = _REL_TOL * max(1.0, abs(cost))
    cand = [(ub, lb, r, a) for (r, a), (ub, lb) in pairs.items() if lb < cost - tol]
    sure = sorted((c for c in cand if c[0] < cost - tol), key=lambda c: (c[0], c[2], c[3]))
    rest = sorted((c for c in cand if not c[0] < cost - tol), key=lambda c: (c[1], c[2], c[3]))
    return _Pass(pairs=sure + rest, guaranteed=len(sure))


def refine(C: np.ndarray, Ct: torch.Tensor, S: np.ndarray, *, max_iters: int = 100,
           cut_num: int = 30, max_seconds: float | None = None, chunk_elems: int = 1 << 22,
           num_itermax: int = 10_000_000) -> tuple[np.ndarray, dict]:
    """Stage 2: swap refinement; returns the refined rows (same positions as ``S`` where not
    swapped) and statistics."""
    S = np.array(S, dtype=np.int64)
    t0 = time.perf_counter()
    res = ot_objective(C, S, duals=True, num_itermax=num_itermax)
    start = res.cost
    accepted, evals, passes, guaranteed_used = 0, 1, 0, 0
    trace = [res.cost]
    stop = "max_iters"
    if len(S) == C.shape[0]:
        return S, {"objective_start": start, "objective_final": start, "swaps_accepted": 0,
                   "swaps_with_guaranteed_bound": 0, "exact_evaluations": 1, "passes": 0,
                   "stop_reason": "no non-member left", "trace": trace}
    while accepted < max_iters:
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            stop = "max_seconds"
            break
        passes += 1
        cand = _candidate_swaps(Ct, S, res, cut_num, chunk_elems)
        improved = False
        for ub, _lb, r, a in cand.pairs[:cut_num]:
            trial = S.copy()
            trial[r] = a
            new = ot_objective(C, trial, duals=True, num_itermax=num_itermax)
            evals += 1
            tol = _REL_TOL * max(1.0, abs(res.cost))
            if new.cost < res.cost - tol:
                guaranteed_used += int(ub < res.cost - tol)
                S, res = trial, new
                accepted += 1
                trace.append(res.cost)
                improved = True
                if accepted % 10 == 0:
                    log.info("goracs refinement: %d of at most %d swaps, objective %.6g -> "
                             "%.6g, %d exact OT evaluations, %.0f s", accepted, max_iters,
                             start, res.cost, evals, time.perf_counter() - t0)
                break
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                break
        if not improved:
            stop = ("max_seconds" if max_seconds is not None
                    and time.perf_counter() - t0 > max_seconds else
                    "no improving swap among the candidates")
            break
    log.info("goracs refinement: %d swaps, objective %.6g -> %.6g, %d exact OT evaluations, "
             "%.0f s (%s)", accepted, start, res.cost, evals, time.perf_counter() - t0, stop)
    return S, {"objective_start": start, "objective_final": res.cost,
               "swaps_accepted": accepted, "swaps_with_guaranteed_bound": int(guaranteed_used),
               "exact_evaluations": evals, "passes": passes, "stop_reason": stop,
               "trace": trace}


@register_selector("goracs")
@dataclass
class GORACS(Selector):
    """GORACS (see the module docstring).

    lam: weight of the gradient-norm term of the cost (reference default for next-item
        recommendation: 0.1; 0 = distances only, no gradient score needed).
    max_iters: maximum number of accepted swaps in stage 2 (reference: 100; 0 = greedy only).
    cut_num: candidate pairs per side considered, and exact evaluations tried, per pass
        (reference: 30).
    grad_score: the per-sample gradient norm column (``effort``: the LLM LoRA gradient norm, as
        the reference; any other score column, e.g. ``grand``, as a cheaper stand-in).
    features, validation: names of the candidate and validation text embeddings.
    device: ``"auto"`` (CUDA if available), ``"cpu"`` or a torch device for the chunked passes.
    max_seconds: optional wall-clock cap of stage 2.
    chunk_elems: entries of C per chunk of the passes (memory vs. speed).
    """

    lam: float = 0.1
    max_iters: int = 100
    cut_num: int = 30
    grad_score: str = "effort"
    features: str = "text_emb"
    validation: str = "val_emb"
    device: str = "auto"
    max_seconds: float | None = None
    chunk_elems: int = 1 << 22

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ConfigError(f"lambda must be >= 0, got {self.lam}")
        if self.max_iters < 0:
            raise ConfigError(f"max_iters must be >= 0, got {self.max_iters}")
        if self.cut_num < 1:
            raise ConfigError(f"cut_num must be >= 1, got {self.cut_num}")
        if self.chunk_elems < 1:
            raise ConfigError(f"chunk_elems must be >= 1, got {self.chunk_elems}")
        _device(self.device)

    @property
    def requires(self) -> tuple[str, ...]:  # type: ignore[override]
        base = (self.features, self.validation)
        return base + (self.grad_score,) if self.lam > 0 else base

    def select(self, scores: ScoreTable, budget: int, *, seed: int = 0) -> Selection:
        budget = check_budget(budget, len(scores))
        dev = _device(self.device)
        t0 = time.perf_counter()
        g = scores[self.grad_score] if self.lam > 0 else None
        C = cost_matrix(scores.feature(self.features), scores.get_aux(self.validation), g,
                        self.lam, device=dev, chunk_elems=self.chunk_elems)
        Ct = torch.from_numpy(C)
        if dev.type != "cpu":
            try:
                Ct = Ct.to(dev)
            except RuntimeError as e:  # out of device memory: run the passes on the CPU
                log.warning("goracs: cost matrix does not fit on %s (%s); using the CPU", dev, e)
        t_cost = time.perf_counter() - t0
        log.info("goracs: cost matrix %d x %d (%.2f GB) in %.0f s", C.shape[0], C.shape[1],
                 C.nbytes / 1e9, t_cost)
        t0 = time.perf_counter()
        S = greedy_init(Ct, budget, chunk_elems=self.chunk_elems)
        t_greedy = time.perf_counter() - t0
        log.info("goracs: greedy initialisation of %d rows in %.0f s", budget, t_greedy)
        t0 = time.perf_counter()
        greedy_rows = S.copy()
        if self.max_iters > 0:
            S, stats = refine(C, Ct, S, max_iters=self.max_iters, cut_num=self.cut_num,
                              max_seconds=self.max_seconds, chunk_elems=self.chunk_elems)
            obj_greedy = stats.pop("objective_start")
        else:
            obj_greedy = ot_objective(C, S)
            stats = {"objective_final": obj_greedy, "swaps_accepted": 0,
                     "exact_evaluations": 1, "passes": 0, "stop_reason": "max_iters = 0",
                     "trace": [obj_greedy]}
        t_refine = time.perf_counter() - t0
        in_greedy = np.isin(np.arange(len(scores)), greedy_rows).astype(np.int64)
        return Selection(rows=scores.rows[S], extras={"goracs_greedy": in_greedy},
                         info={"objective_greedy": obj_greedy, **stats,
                               "n_candidates": int(C.shape[0]), "n_validation": int(C.shape[1]),
                               "cost_matrix_bytes": int(C.nbytes),
                               "seconds": {"cost_matrix": t_cost, "greedy": t_greedy,
                                           "refine": t_refine},
                               "device": str(Ct.device)})
