"""What did BIGRec generate? Diagnostics of an evaluation's ``generations.jsonl``.

For each evaluated user: is the generated text exactly an item title (after the same cleaning
as the prompts), the title of one of the user's history items (which the evaluation excludes),
the title of a test item (a hit before grounding), and how many distinct texts were generated
(mode collapse). Prints one table row per evaluation directory given, then the metrics of
each evaluation split by what the generated text was.

``--oracle N`` also checks the grounding step alone: for N seeded test users it grounds the
*true* title of one of their test items (what a perfect generator would write) with the base
model, exactly as BIGRec grounds its generations, and reports the resulting metrics.

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
    ap.add_argument("--oracle", type=int, default=0,
                    help="ground the true test title of this many users (0: skip)")
    ap.add_argument("--llm", default=None, help="base model of the grounding (default SmolLM2)")
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
    groups: dict[Path, tuple[dict[int, str], EvalResult]] = {}
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
        kind: dict[int, str] = {}  # user id -> what the generated text is
        for g, t in zip(gens, texts):
            items = set(title_items.get(t, ()))
            uid = int(g["user_id"])
            kind[uid] = "not a title"
            if not items:
                continue
            exact += 1
            kind[uid] = "an unseen item's title"
            r = row_of[uid]
            if items & set(hist_all[r].tolist()):
                hist += 1
                kind[uid] = "a history item's title (excluded)"
            truth = truth_all[r]
            if items & set(truth.tolist()):
                test += 1
        groups[d] = (kind, ev)
        top = Counter(texts).most_common(1)[0][1] / max(1, n)
        s = ev.summary()
        print(f"| {d} | {n} | {len(set(texts))} | {top:.3f} | {exact / n:.3f} | {hist / n:.3f} | "
              f"{test / n:.3f} | {s['recall@20']['mean']:.4f} | {s['ndcg@20']['mean']:.4f} |")
    # where do the hits come from: metrics by what the generated text was
    print()
    print("| evaluation | generated text is | users | R@20 | N@20 |")
    print("|---|---|---:|---:|---:|")
    for d, (kind, ev) in groups.items():
        pos = {int(u): i for i, u in enumerate(ev.user_ids)}
        for k in sorted(set(kind.values())):
            idx = [pos[u] for u, v in kind.items() if v == k]
            print(f"| {d} | {k} | {len(idx)} | {ev.per_user['recall@20'][idx].mean():.4f} | "
                  f"{ev.per_user['ndcg@20'][idx].mean():.4f} |")

    if a.oracle:
        oracle(ds, a.oracle, a.llm)


def oracle(ds, n: int, llm: str | None) -> None:
    """Ground the true title of each user's first titled test item; metrics of that ranking."""
    import numpy as np

    from recprune.backends import create_backend
    from recprune.evaluation import eval_user_rows
    from recprune.evaluation.evaluate import evaluate_rankings

    rows = eval_user_rows(ds, "test", n, seed=0)
    texts, keep, items = [], [], []
    for r in rows:
        titled = [i for i in ds.test[r].tolist() if ds.titles[i]]
        if titled:
            keep.append(r)
            items.append(titled[0])
            texts.append(ds.titles[titled[0]])
    rows = np.asarray(keep, dtype=np.int64)
    b = create_backend("bigrec", **({"model": llm} if llm else {}))
    b.generate = lambda ds_, rows_, **kw: list(texts)  # the perfect generator
    ranked = b.rank(ds, rows, 50, progress=False)
    s = evaluate_rankings(ranked, ds, rows).summary()
    first = (ranked[:, 0] == np.asarray(items)).mean()
    print()
    print(f"oracle grounding ({len(rows)} test users, true title of one test item): "
          + ", ".join(f"{m} {s[m]['mean']:.4f}" for m in ("recall@10", "recall@20", "ndcg@20"))
          + f"; that item ranked first for {first:.1%} of users")


if __name__ == "__main__":
    main()
