"""Statistics over seeds: per-user means across seeds, aggregates, Welch's test on seed means."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recprune.evaluation.evaluate import EvalResult


def seed_mean(evals: list[EvalResult]) -> EvalResult:
    """Per-user metric averaged over seeds (all evaluated on the same users)."""
    first = evals[0]
    per_user = {m: np.mean([e.per_user[m] for e in evals], axis=0) for m in first.per_user}
    return EvalResult(period=first.period, ks=first.ks, rows=first.rows,
                      user_ids=first.user_ids, per_user=per_user)


def aggregate(cells: pd.DataFrame, metrics) -> pd.DataFrame:
    """Mean and std over seeds of each metric and stage time per (budget, method, backend)."""
    cols = [*metrics, "finetune_s", "eval_s", "select_only_s"]
    g = cells.groupby(["budget", "method", "backend"], sort=False)
    agg = g[cols].agg(["mean", "std"])
    agg.columns = [f"{a}_{b}" for a, b in agg.columns]
    agg["seeds"] = g.size()
    agg["n_train_users"] = g["n_train_users"].first()
    return agg.reset_index()


def seed_test(a: list[EvalResult], b: list[EvalResult], metric: str) -> float:
    """Two-sided p-value of Welch's t-test between the per-seed means of ``a`` and ``b``
    (the seed as the random unit: selection, RQ-VAE/LoRA initialisation and training order all
    change with it); NaN with fewer than two seeds on either side, and NaN when neither side
    varies over its seeds (the test is undefined then, and a constant difference is not
    evidence that another draw of seeds would keep it)."""
    from scipy import stats

    xa = np.array([float(np.nanmean(e.per_user[metric])) for e in a])
    xb = np.array([float(np.nanmean(e.per_user[metric])) for e in b])
    if len(xa) < 2 or len(xb) < 2:
        return float("nan")
    if xa.std() == 0 and xb.std() == 0:
        return float("nan")
    return float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)
