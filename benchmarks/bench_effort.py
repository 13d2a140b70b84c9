"""Benchmark of the DEALRec effort scorer on real Games samples.

For ``lora_layers`` "all" and "last", one run, side by side, for each prefix mode ("exact",
"fixed", "none", see :mod:`recprune.scoring.effort`):

(a) forward-only floor: a no-grad forward over exactly the tokens that mode's batched scorer
    processes (same batches and layout, prefix handled the same way, LM head on the loss
    positions);
(b) the batched scorer (per-sample gradient norms from one backward per batch);
plus (c) naive: one full-prompt forward + ``loss.backward()`` per sample through the standard
peft model (LM head on every position, no prefix sharing), as the reference implementation.

Reported: s/sample, tokens processed (layer-averaged: with prefix="exact" the prefix counts
for the share of the layers it runs per sample in, from the lowest scored layer up), tokens/s,
the ratio of each batched scorer to its own floor and to the exact scorer, the Spearman rank
correlation of the "fixed" (and "none") scores with the exact ones, and the largest relative
difference of the exact scores from the naive ones and from "none".

Run on an otherwise idle machine (another CPU-heavy process makes torch several times slower)::

    python benchmarks/bench_effort.py --n 64
    python benchmarks/bench_effort.py --n 8 --layers last --skip-naive   # quick check
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

MODES = ("exact", "fixed", "none")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return float("nan")
    try:
        from scipy.stats import spearmanr

        return float(spearmanr(a, b).statistic)
    except ImportError:
        ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
        rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
        return float(np.corrcoef(ra, rb)[0, 1])


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))


def _timed(fn):
    gc.collect()
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run(args) -> dict:
    from recprune.data import load_dealrec_dir
    from recprune.llm.loading import load_causal_lm
    from recprune.scoring.effort import EffortConfig, EffortScorer

    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_dealrec_dir(args.data)
    rng = np.random.default_rng(args.seed)
    rows = np.sort(rng.choice(ds.n_users, size=min(args.n, ds.n_users), replace=False))
    n = len(rows)
    results: dict = {"n": n, "threads": torch.get_num_threads(), "device": None,
                     "platform": platform.processor() or platform.machine(), "layers": {}}

    def scorer(layers, mode):
        model, tok = load_causal_lm(args.model, device=args.device)
        cfg = EffortConfig(lora_layers=layers, prefix=mode, seed=args.seed,
                           max_batch_tokens=args.max_batch_tokens, packing=args.packing)
        return EffortScorer(model, tok, cfg)

    for layers in args.layers:
        res: dict = {"modes": {}}
        scores: dict = {}
        for mode in args.modes:
            sc = scorer(layers, mode)
            results["device"] = str(sc.device)
            ts = sc.prepare(ds, rows)
            batches = sc.batches(ts, sc.sorted_order(ts))
            real = int(ts.lengths.sum())
            P = len(ts.prefix_ids)
            r = {"prefix_tokens": P, "insert_layer": sc.insert_layer, "l0": sc.l0,
                 "tokens_real": real, "tokens_processed": int(sum(b.tokens for b in batches)),
                 "n_batches": len(batches), "packing": sc.packing}
            res["tokens_full_prompt"] = real + n * P  # the same in every mode
            # warm-up (allocator, kernels) on the first batch
            sc._run_batch(ts, batches[0].idx, sc._prefix(ts), grad=True)
            _, r["floor_s"] = _timed(lambda: sc.sample_losses(ts))
            scores[mode], r["batched_s"] = _timed(lambda: sc.score_tokenized(ts, progress=False))
            r["scores"] = scores[mode].tolist()
            if mode == args.modes[0] and not args.skip_naive:
                # the naive reference: full prompt, one backward per sample (the same for every
                # mode except "fixed", whose reference keeps the fixed prefix cache)
                naive_sc = sc if mode != "fixed" else scorer(layers, "none")
                ts_n = ts if mode != "fixed" else naive_sc.prepare(ds, rows)
                scores["naive"], t_c = _timed(lambda: naive_sc.reference_scores(ts_n))
                res["naive"] = {"s": t_c, "tokens": real + n * P}
                del naive_sc
            res["modes"][mode] = r
            del sc
            gc.collect()
        if "exact" in scores:
            for other in ("fixed", "none"):
                if other in scores:
                    res[f"spearman_{other}_vs_exact"] = _spearman(scores[other], scores["exact"])
            if "none" in scores:
                res["max_rel_diff_exact_vs_none"] = _max_rel(scores["exact"], scores["none"])
            if "naive" in scores:
                res["max_rel_diff_exact_vs_naive"] = _max_rel(scores["exact"], scores["naive"])
        results["layers"][str(layers)] = res
    return results


def print_table(results: dict, file=sys.stdout) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        print(json.dumps(results, indent=1), file=file)
        return
    n = results["n"]
    con = Console(file=file, width=130)
    notes = []
    t = Table(title=f"Effort score, {n} real Games samples, {results['device']}, "
                    f"{results['threads']} threads")
    for col, j in (("lora_layers", "left"), ("method", "left"), ("s/sample", "right"),
                   ("tokens", "right"), ("tokens/s", "right"), ("/ own floor", "right"),
                   ("/ exact (b)", "right")):
        t.add_column(col, justify=j)
    for layers, res in results["layers"].items():
        modes = res["modes"]
        b_exact = modes["exact"]["batched_s"] if "exact" in modes else None

        def row(label, s, tokens, floor=None):
            t.add_row(layers, label, f"{s / n:.3f}", str(tokens), f"{tokens / s:.0f}",
                      f"{s / floor:.2f}" if floor else "",
                      f"{s / b_exact:.2f}" if b_exact else "")

        hows = []
        for mode, r in modes.items():
            hows.append({"exact": f"exact: prefix below layer {r['l0']} shared" if
                         r["prefix_tokens"] else "exact: l0 = 0, nothing shared",
                         "fixed": "fixed: whole prefix constant",
                         "none": "none: full prompt per sample"}[mode])
            row(f"(a) floor, prefix={mode!r}", r["floor_s"], r["tokens_processed"])
            row(f"(b) batched, prefix={mode!r}", r["batched_s"], r["tokens_processed"],
                r["floor_s"])
        if "naive" in res:
            row("(c) naive: full prompt, 1 backward/sample", res["naive"]["s"],
                res["naive"]["tokens"])
        first = next(iter(modes.values()))
        parts = [f"{res['tokens_full_prompt']} full-prompt tokens (shared prefix "
                 f"{max(r['prefix_tokens'] for r in modes.values())} tokens per sample)",
                 f"packing={first['packing']}", ", ".join(hows)]
        parts += [f"{k.replace('spearman_', 'Spearman ').replace('_vs_', ' vs ')} = {v:.4f}"
                  for k, v in res.items() if k.startswith("spearman_")]
        parts += [f"{k.replace('max_rel_diff_', 'max rel diff ').replace('_vs_', ' vs ')} = "
                  f"{v:.1e}" for k, v in res.items() if k.startswith("max_rel_diff_")]
        notes.append(f"lora_layers={layers}: " + "; ".join(parts))
        t.add_section()
    con.print(t)
    for line in notes:
        con.print(line)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=64, help="number of random Games users (64)")
    p.add_argument("--data", default="../shared/data/games")
    p.add_argument("--model", default=None, help="model (default SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="auto")
    p.add_argument("--layers", nargs="+", default=["all", "last"], choices=["all", "last"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                   help="prefix modes to run (all three by default; the first one also "
                        "gets the naive reference)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--max-batch-tokens", type=int, default=None)
    p.add_argument("--packing", type=lambda s: {"auto": None, "on": True, "off": False}[s],
                   default=None, help="auto|on|off")
    p.add_argument("--skip-naive", action="store_true", help="skip (c), the slow baseline")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    args.modes = list(dict.fromkeys(args.modes))
    results = run(args)
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
