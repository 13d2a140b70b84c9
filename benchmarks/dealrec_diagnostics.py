"""Why does (or doesn't) DEALRec's selection beat Random? Diagnostics that need no test data.

Reads the scores a `recprune benchmark` run cached (influence, effort, GraNd, EL2N, ... from the
cells' ``select/scores.csv`` and ``cache/scores/*.npy``) and reports, for the candidate pool:

1. the distribution of every score (quantiles, and how equal-width groups split it: DEALRec's
   Algorithm 2 draws from K equal-width score ranges, so a heavy-tailed score leaves most samples
   in a few groups and spends much of the budget on the few samples of the tail groups);
2. Spearman correlations of the scores with each other and with what a sample is made of
   (sequence length, popularity of its items);
3. for a grid of Eq. 13's lambda and Algorithm 2's K, what DEALRec then selects (sequence length,
   item popularity, distinct items, overlap with the default selection and with Random), without
   any fine-tuning;
4. the surrogate's own quality on the validation period against most-popular (``--surrogate``).

Nothing here looks at the test period: hyper-parameters are compared on selection statistics or,
with ``recprune benchmark --period valid --cache-dir RUN/cache``, on validation metrics.

    python benchmarks/dealrec_diagnostics.py --run runs/bench-tiger --data ../shared/data/games \
        --surrogate --out benchmarks/results/dealrec_diagnostics_games
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from recprune.data import load_dataset
from recprune.pipeline.benchmark import pool_scores
from recprune.selection import get_selector
from recprune.selection.base import ScoreTable
from recprune.selection.dealrec import equal_width_groups


def all_scores(run: Path, n_pool: int) -> pd.DataFrame:
    """Every per-sample score of the pool: the cells' scores.csv (seed 0) + cached .npy columns."""
    merged = pool_scores(run, exclude=("stratum", "overall"))
    for name in ("influence", "grand", "el2n"):
        f = run / "cache" / "scores" / f"{name}.npy"
        if f.exists() and (merged is None or name not in merged.columns):
            v = np.load(f)
            if v.ndim == 1 and len(v) == n_pool:  # only a full-pool run's cache is row-aligned
                col = pd.DataFrame({"row": np.arange(n_pool), name: v})
                merged = col if merged is None else merged.merge(col, on="row", how="outer")
    if merged is None:
        raise SystemExit(f"no scores found under {run}")
    return merged.sort_values("row").reset_index(drop=True)


def sample_features(ds, rows: np.ndarray) -> pd.DataFrame:
    pop = np.bincount(ds.train.items, minlength=ds.n_items + 1).astype(np.float64)
    lens = ds.train.lengths[rows]
    logpop = np.log10(np.maximum(pop[ds.train.items], 1.0))
    # per-user sums over the concatenated training sequences (every user has >= 1 item)
    starts = np.concatenate([[0], np.cumsum(ds.train.lengths)[:-1]])
    sums = np.add.reduceat(logpop, starts)[rows]
    return pd.DataFrame({"length": lens, "mean_log10_pop": sums / np.maximum(lens, 1)})


def describe(scores: pd.DataFrame, cols: list[str], k: int) -> pd.DataFrame:
    out = []
    for c in cols:
        v = scores[c].to_numpy(dtype=np.float64)
        q = np.quantile(v, [0, 0.01, 0.5, 0.99, 1])
        g = equal_width_groups(v, k)
        sizes = np.bincount(g, minlength=k)
        out.append({"score": c, "min": q[0], "p1": q[1], "median": q[2], "p99": q[3],
                    "max": q[4], "share_negative": float((v < 0).mean()),
                    f"groups_nonempty_of_{k}": int((sizes > 0).sum()),
                    "largest_group_share": float(sizes.max() / len(v)),
                    "p1_p99_span_share": float((q[3] - q[1]) / max(q[4] - q[0], 1e-300))})
    return pd.DataFrame(out)


def selection_stats(ds, feats: pd.DataFrame, pos: np.ndarray, ref: dict[str, set]) -> dict:
    rows_items = ds.train.subset(np.asarray(pos, dtype=np.int64)).items
    d = {"mean_length": float(feats["length"].to_numpy()[pos].mean()),
         "mean_log10_pop": float(feats["mean_log10_pop"].to_numpy()[pos].mean()),
         "distinct_items": int(len(np.unique(rows_items)))}
    s = set(pos.tolist())
    for name, r in ref.items():
        d[f"jaccard_{name}"] = len(s & r) / len(s | r)
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a `recprune benchmark` run directory (full pool)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--lams", default="0,0.1,0.3,1,3")
    ap.add_argument("--groups", default="10,25,50,100")
    ap.add_argument("--surrogate", action="store_true",
                    help="also evaluate the run's cached surrogate on the validation period")
    ap.add_argument("--out", help="write OUT.txt and OUT.json")
    args = ap.parse_args()

    run = Path(args.run)
    ds = load_dataset(args.data)
    scores = all_scores(run, ds.n_users)
    if len(scores) != ds.n_users:
        raise SystemExit(f"the diagnostics need a full-pool run; {run} has {len(scores)} rows")
    rows = scores["row"].to_numpy(dtype=np.int64)
    feats = sample_features(ds, rows)
    cols = [c for c in ("influence", "effort", "grand", "el2n") if c in scores.columns]
    lines: list[str] = [f"# DEALRec diagnostics: {run} ({len(rows)} pool samples)", ""]
    result: dict = {"run": str(run), "n_pool": int(len(rows)), "budget": args.budget}

    desc = describe(scores, cols, 50)
    lines += ["## 1. Score distributions (equal-width groups: K = 50)", "",
              desc.to_string(index=False, float_format=lambda v: f"{v:.4g}"), ""]
    result["distributions"] = desc.to_dict(orient="records")

    table = pd.concat([scores[cols].reset_index(drop=True), feats], axis=1)
    rho = pd.DataFrame(spearmanr(table.to_numpy()).statistic, index=table.columns,
                       columns=table.columns)
    lines += ["## 2. Spearman correlations", "", rho.to_string(float_format=lambda v: f"{v:+.3f}"),
              ""]
    result["spearman"] = rho.round(4).to_dict()

    if "influence" in cols:
        lams = [float(x) for x in args.lams.split(",")]
        if "effort" not in cols:
            lams = [0.0]
        ks = [int(x) for x in args.groups.split(",")]
        table_s = ScoreTable(rows=rows, columns={c: scores[c].to_numpy() for c in cols})
        def positions(name: str, **opts) -> tuple[np.ndarray, dict]:
            sel = get_selector(name, **opts).select(table_s, args.budget, seed=0)
            return np.searchsorted(rows, sel.rows), sel.info  # rows are sorted

        ref: dict[str, set] = {}
        rand, _ = positions("random")
        ref["random"] = set(rand.tolist())
        dflt, _ = positions("dealrec", lam=0.3 if "effort" in cols else 0.0, n_groups=50)
        ref["default"] = set(dflt.tolist())
        grid = [{"selection": "random", "lam": None, "K": None,
                 **selection_stats(ds, feats, rand, ref)}]
        for lam in lams:
            for k in ks:
                pos, info = positions("dealrec", lam=lam, n_groups=k)
                # Algorithm 2's own log: groups whose every member was drawn
                fully = sum(1 for g in info["groups"] if g["size"] and g["drawn"] == g["size"])
                largest = max(g["size"] for g in info["groups"])
                grid.append({"selection": "dealrec", "lam": lam, "K": k,
                             "largest_group_share": largest / len(rows),
                             "groups_fully_taken": fully,
                             **selection_stats(ds, feats, pos, ref)})
            # the reference release's variant: the top 10% by overall score dropped first
            pos, _ = positions("dealrec", lam=lam, n_groups=50, hard_prune=0.1)
            grid.append({"selection": "dealrec, hard prune 10%", "lam": lam, "K": 50,
                         **selection_stats(ds, feats, pos, ref)})
            pos, _ = positions("dealrec", lam=lam, strategy="greedy")
            grid.append({"selection": "greedy (top overall)", "lam": lam, "K": None,
                         **selection_stats(ds, feats, pos, ref)})
        gdf = pd.DataFrame(grid)
        lines += [f"## 3. What DEALRec selects (budget {args.budget}, seed 0) for lambda and K",
                  "", "pool: mean length %.2f, mean log10 item popularity %.3f, %d distinct items"
                  % (feats["length"].mean(), feats["mean_log10_pop"].mean(),
                     len(np.unique(ds.train.items))), "",
                  gdf.to_string(index=False, float_format=lambda v: f"{v:.3f}"), ""]
        result["selections"] = gdf.to_dict(orient="records")

    if args.surrogate:
        import torch

        from recprune.backends import create_backend
        from recprune.evaluation.evaluate import evaluate_backend
        from recprune.surrogate import evaluate, load_surrogate

        torch.manual_seed(0)
        sur = load_surrogate(run / "cache" / "surrogate.pt", ds)
        sm = {k: float(v) for k, v in evaluate(sur.model, ds, "valid").items()
              if k in ("recall@20", "ndcg@20")}
        pop = create_backend("pop")
        pop.fit(ds, rows)
        psum = evaluate_backend(pop, ds, period="valid").summary()
        pm = {k: float(psum[k]["mean"]) for k in ("recall@20", "ndcg@20")}
        lines += ["## 4. Surrogate (SASRec) quality on the validation period (all users)", "",
                  "| model | R@20 | N@20 |", "|---|---:|---:|",
                  f"| surrogate | {sm['recall@20']:.4f} | {sm['ndcg@20']:.4f} |",
                  f"| most popular | {pm['recall@20']:.4f} | {pm['ndcg@20']:.4f} |", ""]
        result["surrogate"] = {"surrogate": sm, "most_popular": pm}
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out + ".txt").write_text(text + "\n")
        Path(args.out + ".json").write_text(json.dumps(result, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
