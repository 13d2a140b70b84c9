"""Benchmark of the DEALRec effort scorer on real Games samples.

For ``lora_layers`` "all" and "last", one run, side by side:

(a) forward-only floor: a no-grad forward over exactly the tokens the batched scorer processes
    (shared prefix cached once, length-sorted batches, LM head on the loss positions);
(b) the batched scorer (per-sample gradient norms from one backward per batch);
(c) naive: one full-prompt forward + ``loss.backward()`` per sample through the standard peft
    model (LM head on every position, no prefix sharing), as the reference implementation;
plus the batched scorer without prefix sharing, and the Spearman rank correlation between the
``share_prefix=True`` and ``share_prefix=False`` scores.

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


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return float("nan")
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    try:
        from scipy.stats import spearmanr

        return float(spearmanr(a, b).statistic)
    except ImportError:
        return float(np.corrcoef(ra, rb)[0, 1])


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

    def scorer(layers, share_prefix):
        model, tok = load_causal_lm(args.model, device=args.device)
        cfg = EffortConfig(lora_layers=layers, share_prefix=share_prefix, seed=args.seed,
                           max_batch_tokens=args.max_batch_tokens, packing=args.packing)
        return EffortScorer(model, tok, cfg)

    for layers in args.layers:
        res: dict = {}
        sc = scorer(layers, True)
        results["device"] = str(sc.device)
        ts = sc.prepare(ds, rows)
        batches = sc.batches(ts, sc.sorted_order(ts))
        real = int(ts.lengths.sum())
        processed = int(sum(b.tokens for b in batches))
        full_tokens = real + n * len(ts.prefix_ids)
        res.update(prefix_tokens=len(ts.prefix_ids), tokens_real=real,
                   tokens_processed=processed, tokens_full_prompt=full_tokens,
                   n_batches=len(batches), packing=sc.packing)
        # warm-up (allocator, kernels) on the first batch
        sc._run_batch(ts, batches[0].idx, sc._prefix(ts), grad=True)
        _, t_fwd = _timed(lambda: sc.sample_losses(ts))
        s_shared, t_b = _timed(lambda: sc.score_tokenized(ts, progress=False))
        res["a_forward_only"] = {"s": t_fwd, "tokens": processed}
        res["b_batched"] = {"s": t_b, "tokens": processed}
        del sc
        gc.collect()
        sc2 = scorer(layers, False)
        ts2 = sc2.prepare(ds, rows)
        p2 = int(sum(b.tokens for b in sc2.batches(ts2, sc2.sorted_order(ts2))))
        s_full, t_b2 = _timed(lambda: sc2.score_tokenized(ts2, progress=False))
        res["b2_batched_no_prefix_sharing"] = {"s": t_b2, "tokens": p2}
        if not args.skip_naive:
            s_naive, t_c = _timed(lambda: sc2.reference_scores(ts2))
            res["c_naive_per_sample"] = {"s": t_c, "tokens": int(ts2.lengths.sum())}
            res["max_rel_diff_b2_vs_naive"] = float(np.max(np.abs(s_full - s_naive) /
                                                           np.maximum(np.abs(s_naive), 1e-30)))
        del sc2
        gc.collect()
        res["spearman_shared_vs_full"] = _spearman(s_shared, s_full)
        res["scores_shared"] = s_shared.tolist()
        res["scores_full"] = s_full.tolist()
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
    con = Console(file=file, width=120)
    notes = []
    t = Table(title=f"Effort score, {n} real Games samples, {results['device']}, "
                    f"{results['threads']} threads")
    t.add_column("lora_layers")
    t.add_column("method")
    t.add_column("s/sample", justify="right")
    t.add_column("tokens", justify="right")
    t.add_column("tokens/s", justify="right")
    t.add_column("ratio", justify="right")
    names = {"a_forward_only": "(a) forward-only floor",
             "b_batched": "(b) batched scorer",
             "b2_batched_no_prefix_sharing": "(b') batched, share_prefix=False",
             "c_naive_per_sample": "(c) naive: 1 backward/sample"}
    for layers, res in results["layers"].items():
        a = res["a_forward_only"]["s"]
        b = res["b_batched"]["s"]
        for key, label in names.items():
            if key not in res:
                continue
            r = res[key]
            ratio = {"b_batched": f"(b)/(a) = {b / a:.2f}",
                     "c_naive_per_sample": f"(c)/(b) = {r['s'] / b:.2f}",
                     "b2_batched_no_prefix_sharing": f"(b')/(b) = {r['s'] / b:.2f}"}.get(key, "")
            t.add_row(layers, label, f"{r['s'] / n:.3f}", str(r["tokens"]),
                      f"{r['tokens'] / r['s']:.0f}", ratio)
        extra = (f"prefix {res['prefix_tokens']} tok shared; {res['tokens_real']} sample tokens "
                 f"({res['tokens_full_prompt']} with prefix), {res['n_batches']} batches, "
                 f"packing={res['packing']}; Spearman(shared, full) = "
                 f"{res['spearman_shared_vs_full']:.4f}")
        if "max_rel_diff_b2_vs_naive" in res:
            extra += f"; max rel diff (b') vs (c) = {res['max_rel_diff_b2_vs_naive']:.1e}"
        notes.append(f"lora_layers={layers}: {extra}")
        t.add_section()
    con.print(t)
    for line in notes:
        con.print(line)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=64, help="number of random Games users (64)")
    p.add_argument("--data", default="/work/shared/data/games")
    p.add_argument("--model", default=None, help="model (default SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="auto")
    p.add_argument("--layers", nargs="+", default=["all", "last"], choices=["all", "last"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--max-batch-tokens", type=int, default=None)
    p.add_argument("--packing", type=lambda s: {"auto": None, "on": True, "off": False}[s],
                   default=None, help="auto|on|off")
    p.add_argument("--skip-naive", action="store_true", help="skip (c), the slow baseline")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    results = run(args)
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
