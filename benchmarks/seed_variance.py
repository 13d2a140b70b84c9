"""How far apart two seeds of the *same* method are, measured with the harness's own paired test.

An analysis of a finished (or partly finished) `recprune benchmark` run, not a tuning step. The
harness's paired test against Random (`significance.csv`, `p_ttest`) averages each method's
per-user metric over its seeds and pairs the test users: it holds the seeds fixed. If two seeds
of one method (same selector, same protocol; only the seed of the selection, of the model's
initialisation and of the training order changes) already differ "significantly" under that
test, then a p < 0.05 against Random is evidence about those particular fine-tuned models, not
about the method; the seed-level test (`p_seeds`, Welch's t-test on the per-seed means) is the
one that treats the seed as the random unit.

For every method with at least two finished seeds this prints each pair of seeds with the
paired t-test and Wilcoxon p-values, then the share of same-method pairs with p < 0.05 (about
5% if the seed did not matter) and, per method, the seed std of the metric next to the
standard error that test-user sampling alone would give one seed's mean.

    python benchmarks/seed_variance.py --run runs/bench-tiger --backend tiger
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from recprune.evaluation import EvalResult, paired_test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="benchmark run directory")
    ap.add_argument("--backend", default="tiger")
    ap.add_argument("--metric", default="ndcg@20")
    args = ap.parse_args()

    run = Path(args.run)
    cfg = json.loads((run / "config.json").read_text())
    print(f"run {run}, backend {args.backend}, metric {args.metric}\n")
    print("| budget | method | seeds | mean a | mean b | rel. | p (t) | p (Wilcoxon) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    n_pairs = n_sig = 0
    spread = []
    # every method with cells in the run, not only those of the last command's config.json (a
    # later `--finished-only` render of a subset, e.g. a sweep, rewrites it); its order first
    order = {m: i for i, m in enumerate(cfg.get("methods", []))}
    for budget_dir in sorted(run.glob("cells/b*")):
        methods = sorted((d.name for d in budget_dir.iterdir() if d.is_dir()),
                         key=lambda m: (order.get(m, len(order)), m))
        for method in methods:
            evs = {}
            for seed_dir in sorted((budget_dir / method).glob("s*")):
                cell = seed_dir / args.backend
                if (cell / "cell.json").exists():
                    evs[int(seed_dir.name[1:])] = EvalResult.load(cell / "eval")
            if len(evs) < 2:
                continue
            for a, b in itertools.combinations(sorted(evs), 2):
                t = paired_test(evs[a], evs[b], args.metric)
                n_pairs += 1
                n_sig += t["p_ttest"] < 0.05
                print(f"| {budget_dir.name[1:]} | {method} | {a} vs {b} | {t['mean_a']:.4f} | "
                      f"{t['mean_b']:.4f} | {100 * t['rel_improvement']:+.0f}% | "
                      f"{t['p_ttest']:.3g} | {t['p_wilcoxon']:.3g} |")
            means = np.array([np.nanmean(e.per_user[args.metric]) for e in evs.values()])
            se = np.mean([np.nanstd(e.per_user[args.metric], ddof=1)
                          / np.sqrt(np.isfinite(e.per_user[args.metric]).sum())
                          for e in evs.values()])
            spread.append((budget_dir.name[1:], method, len(evs), means.mean(),
                           means.std(ddof=1), se))
    if not n_pairs:
        print("\nno method has two finished seeds yet")
        return
    print(f"\nsame-method seed pairs with paired t-test p < 0.05: {n_sig} of {n_pairs} "
          f"({100 * n_sig / n_pairs:.0f}%; about 5% if the seed did not matter)\n")
    print("| budget | method | seeds | mean | seed std | test-user s.e. of one seed's mean | "
          "ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for b, m, k, mean, sd, se in spread:
        print(f"| {b} | {m} | {k} | {mean:.4f} | {sd:.4f} | {se:.4f} | {sd / se:.2f} |")


if __name__ == "__main__":
    main()
