"""Fine-tune + evaluate one LLM-recommender backend on Games: the issue-3 measurement grid.

Cells (each a resumable run directory under ``--work``; a finished cell is never recomputed):

* ``pop``       most-popular over all training users (the baseline to beat)
* ``untuned``   the backend without fine-tuning (TIGER: random-initialised T5 on the semantic
                IDs; BIGRec: the base LLM)
* ``random``    fine-tuned on ``--budget`` (default 1,024) uniformly random training users
* ``full``      fine-tuned on all training users (TIGER only: the full-data reference)

Every cell is evaluated on the same fixed seeded subset of ``--eval-users`` test users (full
ranking over all items, training + validation items excluded). The table gives each metric with
its 95% CI, the ratio to most-popular, the paired t-test p-value against most-popular, and the
wall time of fine-tuning and of evaluation.

    python benchmarks/bench_llm.py --backend tiger --cells pop,untuned,random,full
    python benchmarks/bench_llm.py --backend bigrec --cells pop,untuned,random --set num_beams=4
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from recprune.data import load_dataset
from recprune.evaluation import EvalResult, paired_test
from recprune.pipeline import EvaluateConfig, FinetuneConfig, run_evaluate, run_finetune
from recprune.store import write_json, write_text

METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def _parse_sets(sets: list[str]) -> dict:
    out = {}
    for s in sets:
        k, v = s.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="../shared/data/games")
    ap.add_argument("--backend", required=True)
    ap.add_argument("--cells", default="pop,untuned,random")
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--eval-users", default="1000",
                    help="number of test users (a fixed seeded subset) or 'all'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/bench_llm")
    ap.add_argument("--set", action="append", default=[], help="backend option KEY=VALUE")
    ap.add_argument("--full-set", action="append", default=[],
                    help="extra backend option for the 'full' cell only (e.g. epochs=...)")
    ap.add_argument("--results", default="benchmarks/results")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    n_eval = None if a.eval_users == "all" else int(a.eval_users)
    # the 1,000-user evaluation lives in <cell>/eval, others in <cell>/eval_<n|all>
    eval_dir = "eval" if n_eval == 1000 else f"eval_{a.eval_users}"
    opts = _parse_sets(a.set)
    ds = load_dataset(a.data)
    work = Path(a.work) / a.backend
    cells = [c.strip() for c in a.cells.split(",") if c.strip()]
    rng = np.random.default_rng(a.seed)
    random_rows = np.sort(rng.choice(ds.n_users, size=a.budget, replace=False))
    evals: dict[str, EvalResult] = {}
    info: dict[str, dict] = {}
    for cell in cells:
        t0 = time.perf_counter()
        ecfg = dict(data=a.data, out=str(work / cell / eval_dir), eval_users=n_eval,
                    seed=a.seed, ks=(10, 20, 50))
        if cell in ("pop", "untuned"):
            name = "pop" if cell == "pop" else a.backend
            ev = run_evaluate(EvaluateConfig(backend=name, backend_options={} if cell == "pop"
                                             else opts, **ecfg), dataset=ds)
            info[cell] = {"fit_seconds": None, "n_train_users": ds.n_users if cell == "pop" else 0}
        elif cell in ("random", "full"):
            rows = random_rows if cell == "random" else np.arange(ds.n_users)
            copts = dict(opts, **(_parse_sets(a.full_set) if cell == "full" else {}))
            ft = run_finetune(FinetuneConfig(data=a.data, out=str(work / cell / "finetune"),
                                             backend=a.backend, backend_options=copts,
                                             seed=a.seed), dataset=ds, rows=rows)
            ev = run_evaluate(EvaluateConfig(model=str(work / cell / "finetune"), **ecfg),
                              dataset=ds, backend=ft.backend)
            info[cell] = {"fit_seconds": ft.fit.seconds, "n_train_users": int(len(rows)),
                          "epochs": len(ft.fit.history), "best_epoch": ft.fit.best_epoch,
                          "fit_stats": ft.fit.stats, "history": ft.fit.history}
        else:
            raise SystemExit(f"unknown cell {cell!r}")
        evals[cell] = ev
        info[cell]["eval_seconds"] = ev.seconds
        info[cell]["eval_users_per_s"] = ev.n_users / ev.seconds if ev.seconds else None
        print(f"[{cell}] done in {time.perf_counter() - t0:.0f} s", flush=True)

    base = evals.get("pop")
    lines = [f"backend {a.backend}, data {ds.name}, {evals[cells[0]].n_users} test users "
             f"(seed {a.seed}), options {opts}",
             "| cell | train users | fit s | eval s | " + " | ".join(
                 f"{m} [95% CI]" for m in METRICS) + " | ratio vs pop (N@20) | p vs pop (N@20) "
             "| p vs untuned (N@20) |",
             "|---|---:|---:|---:|" + "---|" * len(METRICS) + "---:|---:|---:|"]
    untuned = evals.get("untuned")
    table = {}
    for cell, ev in evals.items():
        s = ev.summary()
        row = {m: s[m] for m in METRICS}
        cmp = paired_test(ev, base, "ndcg@20") if base is not None and cell != "pop" else None
        cmp_u = (paired_test(ev, untuned, "ndcg@20")
                 if untuned is not None and cell not in ("pop", "untuned") else None)
        table[cell] = {"metrics": row, "vs_pop": cmp, "vs_untuned": cmp_u, **info[cell]}
        fit_s = info[cell]["fit_seconds"]
        fit_txt = "-" if fit_s is None else f"{fit_s:.0f}"
        ratio = "-" if cmp is None else f"{cmp['mean_a'] / cmp['mean_b']:.2f}x"
        pval = "-" if cmp is None else f"{cmp['p_ttest']:.2g}"
        pval_u = "-" if cmp_u is None else f"{cmp_u['p_ttest']:.2g}"
        cis = " | ".join(f"{row[m]['mean']:.4f} [{row[m]['ci_low']:.4f}, {row[m]['ci_high']:.4f}]"
                         for m in METRICS)
        lines.append(f"| {cell} | {info[cell]['n_train_users']} | {fit_txt} | {ev.seconds:.0f} | "
                     f"{cis} | {ratio} | {pval} | {pval_u} |")
    text = "\n".join(lines)
    print(text)
    meta = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "command": "python benchmarks/bench_llm.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()
                if v not in (None, [], "")),
            "cells": table}
    res = Path(a.results)
    stem = f"llm_{a.backend}_games{a.tag}" + ("" if n_eval == 1000 else f"_eval{a.eval_users}")
    write_json(res / f"{stem}.json", meta)
    write_text(res / f"{stem}.txt", text + "\n")


if __name__ == "__main__":
    main()
