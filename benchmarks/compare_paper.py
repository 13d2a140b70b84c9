"""A `recprune benchmark` table side by side with the DEALRec paper's Games numbers.

Reads RUN/table.csv (mean and std over seeds) and RUN/significance.csv (paired tests against
Random on per-user metrics) and prints, per method, recprune's Recall/NDCG@20 and its change
relative to Random next to the paper's Table 2 (1,024-shot) values and *its* change relative to
Random. The paper's numbers are the published ones (Table 2, Games; full-data BIGRec from
Table 3; it reports no full-data TIGER). Absolute values are not expected to agree (other
hardware, model sizes and training budgets); the relative changes are the claims to check.

    python benchmarks/compare_paper.py --run runs/bench-tiger --backend tiger \
        --full-eval runs/bench_llm/tiger/full/eval
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from recprune.evaluation import EvalResult

# Lin et al., SIGIR'24, Table 2 (Games, 1,024 samples) and Table 3 (full data, BIGRec):
# R@10, R@20, N@10, N@20
PAPER = {
    "bigrec": {"tfdcon": (0.0102, 0.0157, 0.0062, 0.0078),
               "recranker": (0.0112, 0.0166, 0.0074, 0.0090),
               "ccs": (0.0164, 0.0246, 0.0097, 0.0122),
               "grand": (0.0158, 0.0250, 0.0098, 0.0125),
               "el2n": (0.0154, 0.0256, 0.0098, 0.0128),
               "random": (0.0163, 0.0241, 0.0100, 0.0122),
               "dealrec": (0.0181, 0.0276, 0.0115, 0.0142),
               "all": (0.0169, 0.0233, 0.0102, 0.0120)},
    "tiger": {"tfdcon": (0.0051, 0.0074, 0.0033, 0.0040),
              "recranker": (0.0028, 0.0045, 0.0019, 0.0024),
              "ccs": (0.0050, 0.0084, 0.0031, 0.0041),
              "grand": (0.0042, 0.0053, 0.0027, 0.0030),
              "el2n": (0.0034, 0.0048, 0.0024, 0.0029),
              "random": (0.0062, 0.0102, 0.0039, 0.0051),
              "dealrec": (0.0074, 0.0114, 0.0062, 0.0074)},
}
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def rel(a: float, b: float) -> str:
    return f"{100 * (a / b - 1):+.0f}%" if b else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--backend", required=True, choices=sorted(PAPER))
    ap.add_argument("--budget", type=int, help="default: the table's first budget")
    ap.add_argument("--full-eval", help="an eval/ directory of a full-data model evaluated on "
                                        "the same users (metrics.json), if not in the grid")
    ap.add_argument("--out", help="also write the Markdown table here")
    args = ap.parse_args()

    run = Path(args.run)
    t = pd.read_csv(run / "table.csv")
    sig = pd.read_csv(run / "significance.csv") if (run / "significance.csv").exists() else None
    t = t[t["backend"] == args.backend]
    budget = args.budget or int(t["budget"].dropna().iloc[0])
    few = t[t["budget"] == budget].set_index("method")
    rows = {m: {k: few.loc[m, f"{k}_mean"] for k in METRICS} | {
        "std20": few.loc[m, "ndcg@20_std"], "seeds": int(few.loc[m, "seeds"])}
        for m in few.index}
    full = t[t["method"] == "all"]
    if len(full):
        rows["all"] = {k: full.iloc[0][f"{k}_mean"] for k in METRICS} | {
            "std20": float("nan"), "seeds": int(full.iloc[0]["seeds"])}
    elif args.full_eval:
        # a full-data evaluation made outside the grid: only comparable on the same test users
        full_ev = EvalResult.load(args.full_eval)
        rnd = sorted(run.glob(f"cells/b{budget}/random/s*/{args.backend}/eval"))
        if not rnd:
            raise SystemExit(f"{run}: no finished random cell to check --full-eval against")
        grid_rows = EvalResult.load(rnd[0]).rows
        if full_ev.period != "test" or not np.array_equal(np.sort(full_ev.rows),
                                                          np.sort(grid_rows)):
            raise SystemExit(f"--full-eval {args.full_eval}: evaluated on other users (or "
                             f"period) than the grid's {len(grid_rows)} test users")
        rows["all"] = {k: float(full_ev.per_user[k].mean()) for k in METRICS} | {
            "std20": float("nan"), "seeds": 1}
    if "random" not in rows:
        raise SystemExit(f"{run}: no random cells at budget {budget}")
    paper = PAPER[args.backend]
    r0, p0 = rows["random"], paper["random"]
    lines = [f"{args.backend.upper()} on Games, budget {budget}: recprune ({run}) vs the "
             "paper. rel. = change against Random of the same source; p = paired t-test against "
             "Random on per-user NDCG@20 (seed-averaged).", "",
             "| method | seeds | R@20 | N@20 (± std over seeds) | R@20 rel. | N@20 rel. | p | "
             "paper R@20 | paper N@20 | paper R@20 rel. | paper N@20 rel. |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m, v in rows.items():
        p = ""
        if sig is not None and m != "random":
            s = sig[(sig["method"] == m) & (sig["metric"] == "ndcg@20")
                    & (sig["backend"] == args.backend) & (sig["budget"] == budget)]
            if len(s):
                p = f"{s['p_ttest'].iloc[0]:.2g}"
        pv = paper.get(m)
        std = "" if v["std20"] != v["std20"] else f" ± {v['std20']:.4f}"
        lines.append(
            f"| {m} | {v['seeds']} | {v['recall@20']:.4f} | {v['ndcg@20']:.4f}{std} | "
            f"{rel(v['recall@20'], r0['recall@20'])} | {rel(v['ndcg@20'], r0['ndcg@20'])} | {p} | "
            + (f"{pv[1]:.4f} | {pv[3]:.4f} | {rel(pv[1], p0[1])} | {rel(pv[3], p0[3])} |"
               if pv else "- | - | - | - |"))
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
