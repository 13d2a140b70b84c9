"""The benchmark's outputs: tables, paired tests against the baseline, coverage, plots, report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from recprune.data.dataset import InteractionDataset
from recprune.evaluation.statistics import aggregate, seed_mean, seed_test
from recprune.pipeline.benchmark.config import FULL, BenchmarkConfig, BenchmarkResult, Cell
from recprune.evaluation import paired_test
from recprune.store import (atomic_path, write_text)

log = logging.getLogger(__name__)


def significance(cfg: BenchmarkConfig, evals: dict) -> pd.DataFrame:
    """Every method against the baseline: the paired per-user tests on seed-averaged metrics
    (``p_ttest``, ``p_wilcoxon``) and the seed-level Welch test (``p_seeds``)."""
    rows = []
    groups: dict = {}
    for (budget, method, _seed, backend), ev in evals.items():
        groups.setdefault((budget, method, backend), []).append(ev)
    for (budget, method, backend), evs in groups.items():
        if method == cfg.baseline:
            continue
        base = groups.get((budget, cfg.baseline, backend))
        if base is None:  # full data / most-popular: against every budget's baseline
            base_keys = [k for k in groups if k[1] == cfg.baseline and k[2] == backend]
            if method == "most-popular":
                base_keys = [k for k in groups if k[1] == cfg.baseline]
        else:
            base_keys = [(budget, cfg.baseline, backend)]
        a = seed_mean(evs)
        for bk in base_keys:
            b = seed_mean(groups[bk])
            for metric in cfg.table_metrics:
                t = paired_test(a, b, metric)
                rows.append({"budget": bk[0], "method": method, "backend": backend,
                             "baseline_backend": bk[2], "metric": metric,
                             "mean": t["mean_a"], "baseline_mean": t["mean_b"],
                             "rel_improvement": t["rel_improvement"], "p_ttest": t["p_ttest"],
                             "p_wilcoxon": t["p_wilcoxon"],
                             "p_seeds": seed_test(evs, groups[bk], metric),
                             "seeds": len(evs), "baseline_seeds": len(groups[bk]),
                             "n_users": t["n_users"]})
    return pd.DataFrame(rows)


def _fmt(mean: float, std: float) -> str:
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if np.isfinite(std) else "")


def markdown_table(cfg: BenchmarkConfig, agg: pd.DataFrame, sig: pd.DataFrame,
                   budget) -> str:
    """Table-2 layout for one budget: methods x (backend, metric), mean ± std over seeds; the
    best selection method per column in bold; * = paired per-user t-test p < 0.05 against the
    baseline, † = seed-level Welch test p < 0.05 (:func:`seed_test`)."""
    metrics = cfg.table_metrics
    sub = agg[(agg["budget"] == budget) | (agg["budget"] == "")]
    backends = [b for b in cfg.backends]
    order = [m for m in cfg.methods if m != FULL] + ([FULL] if FULL in cfg.methods else [])
    if cfg.popularity:
        order = order + ["most-popular"]
    head = "| method | " + " | ".join(f"{b} {m}" for b in backends for m in metrics) + " |"
    lines = [head, "|---|" + "---:|" * (len(backends) * len(metrics))]
    best = {}
    for b in backends:
        few = sub[(sub["backend"] == b) & ~sub["method"].isin([FULL, "most-popular"])]
        for m in metrics:
            best[(b, m)] = few[f"{m}_mean"].max() if len(few) else None
    for meth in order:
        cells = []
        for b in backends:
            bb = "pop" if meth == "most-popular" else b
            r = sub[(sub["method"] == meth) & (sub["backend"] == bb)]
            for m in metrics:
                if not len(r):
                    cells.append("-")
                    continue
                mean, std = float(r[f"{m}_mean"].iloc[0]), float(r[f"{m}_std"].iloc[0])
                txt = _fmt(mean, std)
                if meth not in (FULL, "most-popular") and best[(b, m)] is not None \
                        and np.isclose(mean, best[(b, m)]):
                    txt = f"**{txt}**"
                if len(sig):
                    s = sig[(sig["method"] == meth) & (sig["backend"] == bb)
                            & (sig["metric"] == m) & (sig["baseline_backend"] == b)
                            & (sig["budget"] == budget)]
                    if len(s) and s["p_ttest"].iloc[0] < 0.05:
                        txt += "*"
                    if len(s) and s["p_seeds"].iloc[0] < 0.05:
                        txt += "†"
                cells.append(txt)
        label = {FULL: "all (full data)", "most-popular": "most popular"}.get(meth, meth)
        want = cfg.full_seeds if meth == FULL else cfg.seeds
        have = sub.loc[sub["method"] == meth, "seeds"]
        if meth != "most-popular" and len(have) and int(have.max()) < want:
            label += f" ({int(have.max())}/{want} seeds)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def coverage_stats(ds: InteractionDataset, pool_rows: np.ndarray,
                   selections: dict[str, np.ndarray]) -> pd.DataFrame:
    """How each selection covers the pool: sequence lengths, item popularity, distinct items, and
    ``next_item_positions`` (sum over users of training length - 1: the training examples of a
    backend that learns from every next-item position, as TIGER does by default) and
    ``active_in_valid`` (the share of users with interactions in the validation period, i.e.
    still active after the training period; a validation-matching selector such as GORACS
    prefers them)."""
    pop = np.bincount(ds.train.items, minlength=ds.n_items + 1).astype(np.float64)

    def stats(name, rows):
        lens = ds.train.lengths[rows]
        items = ds.train.subset(np.asarray(rows, dtype=np.int64)).items
        return {"selection": name, "users": int(len(rows)), "mean_length": float(lens.mean()),
                "median_length": float(np.median(lens)),
                "next_item_positions": int(np.maximum(lens - 1, 0).sum()),
                "mean_log10_item_pop": float(np.log10(pop[items]).mean()) if len(items) else 0.0,
                "distinct_items": int(len(np.unique(items))),
                "active_in_valid": float((ds.valid.lengths[rows] > 0).mean()) if len(rows)
                else 0.0,
                "distinct_items_share_of_pool": 0.0}

    out = [stats("pool (full data)", pool_rows)]
    out += [stats(k, v) for k, v in selections.items()]
    df = pd.DataFrame(out)
    df["distinct_items_share_of_pool"] = df["distinct_items"] / max(1, out[0]["distinct_items"])
    return df


def write_outputs(cfg: BenchmarkConfig, ds: InteractionDataset, out: Path, records: list[dict],
                  evals: dict, pool_rows: np.ndarray, budgets: list[int],
                  missing: list[str] | None = None) -> BenchmarkResult:
    from recprune.evaluation import plots

    cells = pd.DataFrame(records)
    with atomic_path(out / "cells.csv") as tmp:
        cells.to_csv(tmp, index=False)
    agg = aggregate(cells, cfg.table_metrics)
    with atomic_path(out / "table.csv") as tmp:
        agg.to_csv(tmp, index=False)
    sig = significance(cfg, evals)
    with atomic_path(out / "significance.csv") as tmp:
        sig.to_csv(tmp, index=False)
    # selections of seed 0 at the first budget, for the coverage and score plots
    sels = {}
    for m in cfg.methods:
        if m == FULL:
            continue
        done = out / Cell(budgets[0], m, 0).path / "select" / "done.json"
        if done.exists():
            sels[m] = np.asarray(json.loads(done.read_text())["rows"], dtype=np.int64)
    cov = coverage_stats(ds, pool_rows, sels)
    with atomic_path(out / "coverage.csv") as tmp:
        cov.to_csv(tmp, index=False)
    pngs = {}
    colors = plots.method_colors(m for m in cfg.methods if m != FULL)
    pngs["metric_by_method.png"] = plots.metric_by_method(
        agg, cfg.metric, out / "metric_by_method.png", budgets[0] if budgets else "", cells,
        colors)
    pngs["coverage.png"] = plots.coverage(ds, pool_rows, sels, out / "coverage.png", colors)
    scores = pool_scores(out, budgets[0] if budgets else None, cfg.methods)
    if scores is not None and len(scores.columns) > 2:
        pngs["score_distributions.png"] = plots.score_distributions(
            scores, sels, out / "score_distributions.png", colors=colors)
    if len(budgets) > 1:
        pngs["sweep.png"] = plots.sweep(agg, cfg.metric, len(pool_rows), out / "sweep.png")
    report = _report(cfg, ds, agg, sig, cov, cells, budgets, pool_rows, pngs, missing or [])
    write_text(out / "report.md", report)
    for b in budgets:
        write_text(out / f"table_b{b}.md", markdown_table(cfg, agg, sig, b) + "\n")
    if budgets:
        write_text(out / "table.md", markdown_table(cfg, agg, sig, budgets[0]) + "\n")
    return BenchmarkResult(out=out, cells=cells, table=agg, significance=sig, evals=evals)


def pool_scores(out: Path, budget=None, methods=None,
                exclude: tuple[str, ...] = ()) -> pd.DataFrame | None:
    """Every score column of the pool, merged over the seed-0 cells' ``scores.csv`` (of
    ``methods`` at ``budget``; default every method and budget); None if there is none.

    Scores are the floating-point columns; integer and boolean ones are a selector's labels
    (CCS strata, TF-DCon/RecRanker clusters, DEALRec groups, GORACS's greedy flag) and are left
    out, as are the interaction counts ``n_train`` / ``n_valid`` and ``exclude``."""
    out = Path(out)
    if methods is None:
        files = sorted(out.glob("cells/b*/*/s0/select/scores.csv"))
    elif budget is None:
        return None
    else:
        files = [out / Cell(budget, m, 0).path / "select" / "scores.csv" for m in methods
                 if m != FULL]
    skip = {"user_id", "row", "selected", "group", "n_train", "n_valid", *exclude}
    merged = None
    for f in files:
        if not f.exists():
            continue
        df = pd.read_csv(f)
        keep = ["row"] + [c for c in df.columns
                          if c not in skip and pd.api.types.is_float_dtype(df[c])]
        df = df[keep]
        if merged is None:
            merged = df
        else:
            new = [c for c in df.columns if c not in merged.columns]
            if new:
                merged = merged.merge(df[["row", *new]], on="row", how="outer")
    return merged


def _report(cfg, ds, agg, sig, cov, cells, budgets, pool_rows, pngs, missing) -> str:
    lines = [f"# recprune benchmark on {ds.name}", "",
             f"Pool: {len(pool_rows)} training users"
             + ("" if cfg.pool is None else f" (seeded draw, pool seed {cfg.pool_seed})")
             + f"; budgets {budgets} ("
             + ", ".join(f"{100 * b / len(pool_rows):.2f}%" for b in budgets) + " of the pool); "
             f"{cfg.seeds} seed(s) per method; evaluated on {cells['eval_users'].iloc[0]} "
             f"{cfg.period} users (eval seed {cfg.eval_seed}); backends "
             f"{list(cfg.backends)}. Mean ± std over seeds; best selection method per column in "
             f"bold; * = paired t-test p < 0.05 against {cfg.baseline} (per-user values averaged "
             f"over seeds); † = Welch's t-test on the per-seed means p < 0.05 (the seed as the "
             f"random unit).", ""]
    if missing:
        lines += [f"**Interim report: {len(missing)} cell(s) of the grid are not finished and "
                  "are left out** (a method with fewer seeds than the grid's is marked "
                  "'k/n seeds'): " + ", ".join(f"`{m}`" for m in missing), ""]
    for b in budgets:
        lines += [f"## Budget {b}", "", markdown_table(cfg, agg, sig, b), ""]
    if len(sig):
        lines += [f"## Paired tests against {cfg.baseline} ({cfg.metric})", "",
                  "p (t) and p (Wilcoxon): paired over the test users, seeds held fixed; "
                  "p (seeds): Welch's t-test on the per-seed means (seeds as the random unit, "
                  "`-` with fewer than two seeds on a side).", "",
                  "| budget | method | backend | mean | baseline | rel. | p (t) | p (Wilcoxon) "
                  "| p (seeds) |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        s = sig[sig["metric"] == cfg.metric]
        for _, r in s.iterrows():
            lines.append(f"| {r['budget']} | {r['method']} | {r['backend']} | {r['mean']:.4f} | "
                         f"{r['baseline_mean']:.4f} | {100 * r['rel_improvement']:+.1f}% | "
                         f"{r['p_ttest']:.3g} | {r['p_wilcoxon']:.3g} | "
                         + (f"{r['p_seeds']:.3g} |" if np.isfinite(r['p_seeds']) else "- |"))
        lines.append("")
    lines += ["## Wall time per stage (seconds, mean over seeds)", "",
              "| budget | method | backend | selection | fine-tune | evaluate | epochs |",
              "|---|---|---|---:|---:|---:|---:|"]
    g = cells.groupby(["budget", "method", "backend"], sort=False)
    for (b, m, be), r in g:
        lines.append(f"| {b or '-'} | {m} | {be} | {r['select_only_s'].mean():.1f} | "
                     f"{r['finetune_s'].mean():.0f} | {r['eval_s'].mean():.0f} | "
                     f"{r['epochs'].mean():.1f} |")
    shared: dict = {}
    for v in cells["shared_stages"]:
        for k, s in json.loads(v).items():
            shared[k] = max(shared.get(k, 0.0), s)
    if shared:
        lines += ["", "Shared stages (computed once, cached in `cache/`): "
                  + ", ".join(f"{k} {v:.0f} s" for k, v in shared.items()), ""]
    lines += ["", "## Coverage of the selections (seed 0)", "",
              "`next_item_positions`: training examples of a backend that learns every "
              "next-item position (TIGER); `active_in_valid`: share of the users with "
              "interactions in the validation period.", "", _md(cov), ""]
    for name in pngs:
        lines += [f"![{name}]({name})", ""]
    return "\n".join(lines)


def _md(df: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (floats with 3 decimals)."""
    def f(v):
        return f"{v:.3f}" if isinstance(v, (float, np.floating)) else str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(f(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines)
