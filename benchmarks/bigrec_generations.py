"""What did BIGRec generate? Diagnostics of an evaluation's ``generations.jsonl``.

For each evaluated user: is the generated text exactly an item title (after the same cleaning
as the prompts), the title of one of the user's history items (which the evaluation excludes),
the title of a test item (a hit before grounding), and how many distinct texts were generated
(mode collapse). Prints one table row per evaluation directory given.

    python benchmarks/bigrec_generations.py runs/bench_llm/bigrec/untuned/eval \\
        runs/bench_llm/bigrec/random/eval
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from recprune.backends.base import history_for
from recprune.data import load_dataset
from recprune.evaluation import EvalResult
from recprune.data import clean_title

def _norm(t: str) -> str:
    return " ".join(clean_title(t).split()).lower()

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("evals", nargs="+", help="evaluation directories with generations.jsonl")
    ap.add_argument("--data", default="../shared/data/games")
    a = ap.parse_args()
    ds = load_dataset(a.data)
    title_items: dict[str, list[int]] = {}
    for i in range(1, ds.n_items + 1):
        t = ds.titles[i]
        if t:
            title_items.setdefault(_norm(t), []).append(i)
    row_of = {int(u): r for r, u in enumerate(ds.user_ids)}
    print("| evaluation | users | distinct texts | most common text share | exact item title | "
          "a history title | a test-item title | R@20 | N@20 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for d in a.evals:
        d = Path(d)
        gens = [json.loads(line) for line in (d / "generations.jsonl").read_text().splitlines()]
        ev = EvalResult.load(d)
        period = ev.period
        hist_all = history_for(ds, period)  # once, not per user
        truth_all = ds.test if period == "test" else ds.valid
        n = len(gens)
        texts = [_norm(g["generated"]) for g in gens]
        exact = hist = test = 0
        for g, t in zip(gens, texts):
            items = set(title_items.get(t, ()))
            if not items:
                continue
            exact += 1
            r = row_of[int(g["user_id"])]
            if items & set(hist_all[r].tolist()):
                hist += 1
            truth = truth_all[r]
            if items & set(truth.tolist()):
                test += 1
        top = Counter(texts).most_common(1)[0][1] / max(1, n)
        s = ev.summary()
        print(f"| {d} | {n} | {len(set(texts))} | {top:.3f} | {exact / n:.3f} | {hist / n:.3f} | "
              f"{test / n:.3f} | {s['recall@20']['mean']:.4f} | {s['ndcg@20']['mean']:.4f} |")

if __name__ == "__main__":
    main()
