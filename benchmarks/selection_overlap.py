"""Who each selection picks, and whether a method's accuracy comes from the test users it selected.

An analysis of a finished (or partly finished) `recprune benchmark` run, not a tuning step: it
reads each cell's selection (`select/done.json`) and its per-user test metrics (`eval/`) and
prints, per method (averaged over the finished seeds):

- `active_in_valid`: share of the selected users with interactions in the validation period
  (the pool's share for comparison) -- users still active after the training period;
- `test users selected`: how many of the evaluated test users are in the selection (their own
  training histories were fine-tuned on);
- the metric on the evaluated users inside and outside the selection: if a method's gain over
  Random held only inside, it would come from training on the evaluated users themselves.

    python benchmarks/selection_overlap.py --run runs/bench-tiger --backend tiger \
        --data ../shared/data/games
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from recprune.data import load_dataset
from recprune.evaluation import EvalResult


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="benchmark run directory")
    ap.add_argument("--backend", default="tiger")
    ap.add_argument("--data", default="../shared/data/games")
    ap.add_argument("--metric", default="ndcg@20")
    args = ap.parse_args()

    ds = load_dataset(args.data)
    active = ds.valid.lengths > 0
    run = Path(args.run)
    cfg = json.loads((run / "config.json").read_text())
    print(f"pool share active in the validation period: {active.mean():.3f} (all users)\n")
    head = (f"| method | seeds | active_in_valid | test users selected | {args.metric} selected "
            f"test users | {args.metric} other test users | {args.metric} all |")
    print(head)
    print("|---|---:|---:|---:|---:|---:|---:|")
    budget_dirs = sorted(run.glob("cells/b*"))
    for budget_dir in budget_dirs:
        for method in cfg["methods"]:
            rows = []
            for seed_dir in sorted((budget_dir / method).glob("s*")):
                cell = seed_dir / args.backend
                if not (cell / "cell.json").exists():
                    continue
                sel = np.asarray(json.loads((seed_dir / "select" / "done.json").read_text())
                                 ["rows"], dtype=np.int64)
                ev = EvalResult.load(cell / "eval")
                inside = np.isin(ev.rows, sel)
                v = ev.per_user[args.metric]
                rows.append((active[sel].mean(), inside.sum(),
                             v[inside].mean() if inside.any() else np.nan,
                             v[~inside].mean(), v.mean()))
            if not rows:
                continue
            a = np.asarray(rows, dtype=np.float64)
            label = method if len(budget_dirs) == 1 else f"{method} ({budget_dir.name})"
            print(f"| {label} | {len(rows)} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.1f} / "
                  f"{len(ev.rows)} | {np.nanmean(a[:, 2]):.4f} | {a[:, 3].mean():.4f} | "
                  f"{a[:, 4].mean():.4f} |")


if __name__ == "__main__":
    main()
