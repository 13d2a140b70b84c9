"""Full-ranking evaluation of a backend, confidence intervals and paired comparisons.

:func:`evaluate_backend` ranks ALL items for each evaluated user with a fitted (or untuned)
backend, the user's history (train, plus valid for the test period) excluded, and computes
per-user Recall@K / NDCG@K against every item of the evaluated period. :class:`EvalResult` keeps
the per-user values (and the rankings), so two runs on the same users can be compared with
:func:`paired_test`; :meth:`EvalResult.summary` gives each mean with a 95% confidence interval
(Student-t over users; per-user values are independent across users).

Evaluated users are every user with a non-empty line in the period, or a fixed seeded subset of
them (:func:`eval_user_rows`), so that different runs evaluate the same users.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence as SeqT
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recprune.data.dataset import InteractionDataset
from recprune.errors import ConfigError, DataError
from recprune.evaluation.metrics import recall_ndcg
from recprune.store import atomic_path, save_npy, write_json

DEFAULT_KS = (10, 20, 50)


def eval_user_rows(ds: InteractionDataset, period: str = "test", n: int | None = None,
                   seed: int = 0) -> np.ndarray:
    """Rows of the users evaluated on ``period``: all with ground truth, or a seeded subset of
    ``n`` of them (sorted). The subset depends only on (data, period, n, seed)."""
    if period not in ("valid", "test"):
        raise ConfigError(f"period must be 'valid' or 'test', got {period!r}")
    rows = ds.eval_rows(period)
    if not len(rows):
        raise DataError(f"no user has {period}-period items: nothing to evaluate",
                        path=ds.source or None, field=period)
    if n is None or n >= len(rows):
        return rows
    if n < 1:
        raise ConfigError(f"eval users must be >= 1, got {n}")
    return np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))


def mean_ci(x: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of the finite values of ``x``."""
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    if len(x) < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return m, m - half, m + half


@dataclass
class EvalResult:
    """Per-user metrics of one evaluation (rows / user ids in the same order as the arrays)."""

    period: str
    ks: tuple[int, ...]
    rows: np.ndarray
    user_ids: np.ndarray
    per_user: dict[str, np.ndarray]
    ranked: np.ndarray | None = None
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
    generations: list[str] | None = None  # generated texts (BIGRec), not saved by save()

    @property
    def n_users(self) -> int:
        return int(len(self.rows))

    def summary(self, level: float = 0.95) -> dict[str, dict[str, float]]:
        """``{metric: {mean, ci_low, ci_high, n}}``."""
        out = {}
        for k, v in self.per_user.items():
            m, lo, hi = mean_ci(v, level)
            out[k] = {"mean": m, "ci_low": lo, "ci_high": hi, "n": int(np.isfinite(v).sum())}
        return out

    def to_dict(self) -> dict:
        return {"period": self.period, "ks": list(self.ks), "n_users": self.n_users,
                "seconds": round(self.seconds, 3),
                "users_per_s": round(self.n_users / self.seconds, 3) if self.seconds else None,
                "metrics": self.summary(), **self.info}

    def save(self, directory: str | Path) -> None:
        """``metrics.json`` (summary with CIs), ``per_user.csv`` (user_id, row, metrics) and
        ``ranked.npy`` (the top-K item ids), written atomically."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        df = pd.DataFrame({"user_id": self.user_ids, "row": self.rows, **self.per_user})
        with atomic_path(d / "per_user.csv") as tmp:
            df.to_csv(tmp, index=False)
        if self.ranked is not None:
            save_npy(d / "ranked.npy", self.ranked)
        write_json(d / "metrics.json", self.to_dict())

    @classmethod
    def load(cls, directory: str | Path) -> EvalResult:
        d = Path(directory)
        try:
            meta = json.loads((d / "metrics.json").read_text())
            df = pd.read_csv(d / "per_user.csv")
        except FileNotFoundError as e:
            raise DataError(f"not an evaluation directory ({e.filename} missing)",
                            path=str(d)) from None
        except (json.JSONDecodeError, pd.errors.ParserError) as e:
            raise DataError(f"unreadable evaluation output: {e}", path=str(d)) from None
        metrics = [c for c in df.columns if c not in ("user_id", "row")]
        ranked = np.load(d / "ranked.npy") if (d / "ranked.npy").exists() else None
        info = {k: v for k, v in meta.items()
                if k not in ("period", "ks", "n_users", "seconds", "users_per_s", "metrics")}
        return cls(period=meta["period"], ks=tuple(meta["ks"]), rows=df["row"].to_numpy(),
                   user_ids=df["user_id"].to_numpy(),
                   per_user={m: df[m].to_numpy(dtype=np.float64) for m in metrics},
                   ranked=ranked, seconds=float(meta.get("seconds") or 0.0), info=info)


def evaluate_rankings(ranked: np.ndarray, ds: InteractionDataset, rows: np.ndarray,
                      period: str = "test", ks: SeqT[int] = DEFAULT_KS) -> EvalResult:
    """Metrics of given rankings (``ranked[b]`` for user row ``rows[b]``; -1 = no item)."""
    ranked = np.asarray(ranked, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    if ranked.ndim != 2 or ranked.shape[0] != len(rows):
        raise ConfigError(f"ranked must be (n_users, K) for {len(rows)} users, "
                          f"got {ranked.shape}")
    if ranked.shape[1] < max(ks):  # a shorter list is a list padded with "no item"
        ranked = np.pad(ranked, ((0, 0), (0, max(ks) - ranked.shape[1])), constant_values=-1)
    if (ranked > ds.n_items).any():
        raise DataError(f"ranking holds item ids above n_items={ds.n_items}")
    truth = {"valid": ds.valid, "test": ds.test}[period]
    per_user = recall_ndcg(ranked, truth, rows, ks)
    order = [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks]
    return EvalResult(period=period, ks=tuple(ks), rows=rows, user_ids=ds.user_ids[rows],
                      per_user={m: per_user[m] for m in order}, ranked=ranked)


def evaluate_backend(backend, ds: InteractionDataset, *, period: str = "test",
                     ks: SeqT[int] = DEFAULT_KS, rows: np.ndarray | None = None,
                     eval_users: int | None = None, seed: int = 0,
                     progress: bool = True, chunk_dir: str | Path | None = None,
                     chunk_users: int = 200) -> EvalResult:
    """Rank all items with ``backend`` for the evaluated users and score the rankings.

    ``rows`` (explicit user rows) or ``eval_users`` (a seeded subset, see
    :func:`eval_user_rows`); default: every user with ``period`` items.

    With ``chunk_dir``, users are ranked in chunks of ``chunk_users`` and each finished chunk
    (its rankings, generated texts if the backend keeps them, and its wall seconds) is written
    atomically to ``chunk_dir/chunk_NNNNN.npz``; a later call with the same ``chunk_dir`` (the
    caller keys it to the backend, data and users) loads finished chunks instead of ranking them
    again, so a killed evaluation of a slow backend loses at most one chunk. ``seconds`` is
    the sum of the chunks' ranking times.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ConfigError(f"ks must be positive integers, got {ks}")
    if rows is None:
        rows = eval_user_rows(ds, period, eval_users, seed)
    rows = np.asarray(rows, dtype=np.int64)
    k = max(ks)
    if chunk_dir is None:
        t0 = time.perf_counter()
        ranked = backend.rank(ds, rows, k, period=period, progress=progress)
        seconds = time.perf_counter() - t0
        gens = getattr(backend, "last_generations", None)
    else:
        if chunk_users < 1:
            raise ConfigError(f"chunk_users must be >= 1, got {chunk_users}")
        cdir = Path(chunk_dir)
        cdir.mkdir(parents=True, exist_ok=True)
        parts, gen_parts, seconds = [], [], 0.0
        starts = range(0, len(rows), chunk_users)
        for ci, s in enumerate(starts):
            sub = rows[s:s + chunk_users]
            f = cdir / f"chunk_{ci:05d}.npz"
            if f.exists():
                try:
                    z = np.load(f, allow_pickle=False)
                    if np.array_equal(z["rows"], sub):
                        parts.append(z["ranked"])
                        gen_parts.append(list(z["generated"]) if "generated" in z else None)
                        seconds += float(z["seconds"])
                        continue
                except (OSError, ValueError, KeyError):
                    pass  # unreadable / foreign chunk: rank it again
            if progress and len(rows) > chunk_users:
                print(f"evaluate: chunk {ci + 1}/{len(starts)} ({len(sub)} users)", flush=True)
            t0 = time.perf_counter()
            part = np.asarray(backend.rank(ds, sub, k, period=period, progress=progress))
            sec = time.perf_counter() - t0
            g = getattr(backend, "last_generations", None)
            g = list(g) if g is not None and len(g) == len(sub) else None
            arrays = {"rows": sub, "ranked": part, "seconds": np.float64(sec)}
            if g is not None:
                arrays["generated"] = np.array(g, dtype=np.str_)
            with atomic_path(f) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **arrays)
            parts.append(part)
            gen_parts.append(g)
            seconds += sec
        ranked = np.concatenate(parts, axis=0) if parts else np.zeros((0, k), np.int64)
        gens = (None if any(g is None for g in gen_parts)
                else [str(x) for g in gen_parts for x in g])
    res = evaluate_rankings(ranked, ds, rows, period, ks)
    res.seconds = seconds
    res.info["backend"] = getattr(backend, "name", type(backend).__name__)
    if gens is not None and len(gens) == len(rows):
        res.generations = list(gens)
    return res


def paired_test(a: EvalResult, b: EvalResult, metric: str = "ndcg@20",
                level: float = 0.95) -> dict:
    """Paired comparison of run ``a`` against run ``b`` on their common users.

    Returns the mean per-user difference (a - b) with its Student-t CI, the relative
    improvement of the means, and two-sided p-values of the paired t-test and of the Wilcoxon
    signed-rank test (zero differences dropped; with many exact zeros, as recall@K has, the
    t-test is the one to read)."""
    from scipy import stats

    for r, name in ((a, "a"), (b, "b")):
        if metric not in r.per_user:
            raise ConfigError(f"run {name} has no metric {metric!r} "
                              f"(has {sorted(r.per_user)})")
    if a.period != b.period:
        raise ConfigError(f"runs evaluate different periods ({a.period} vs {b.period})")
    common, ia, ib = np.intersect1d(a.user_ids, b.user_ids, return_indices=True)
    if len(common) < 2:
        raise DataError(f"the two runs share {len(common)} evaluated users; a paired test needs "
                        "the same users (use the same --eval-users and --seed)")
    xa, xb = a.per_user[metric][ia], b.per_user[metric][ib]
    ok = np.isfinite(xa) & np.isfinite(xb)
    xa, xb = xa[ok], xb[ok]
    d = xa - xb
    m, lo, hi = mean_ci(d, level)
    t_p = float(stats.ttest_rel(xa, xb).pvalue) if d.std() > 0 else 1.0
    w_p = float(stats.wilcoxon(d[d != 0]).pvalue) if (d != 0).sum() >= 1 else 1.0
    ma, mb = float(xa.mean()), float(xb.mean())
    return {"metric": metric, "n_users": int(len(d)), "mean_a": ma, "mean_b": mb,
            "diff": m, "diff_ci_low": lo, "diff_ci_high": hi,
            "rel_improvement": (ma - mb) / mb if mb > 0 else float("nan"),
            "p_ttest": t_p, "p_wilcoxon": w_p,
            "n_a_better": int((d > 0).sum()), "n_b_better": int((d < 0).sum())}
