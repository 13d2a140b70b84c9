"""Per-stage wall time of `recprune select --method dealrec --budget 1024` on the full Games data.

Stages measured on the full data (49,156 users): data loading (time and peak memory), surrogate
training (from the checkpoint's own record, or trained here), influence (mean gradient, LiSSA
5,000 steps, per-sample scores of all users), selection (Algorithm 2 over all users). The effort
stage is measured on a random sample of users (``--effort-n``) and its cost for all 49,156
users is extrapolated from the measured time per token and the token count of every user's
prompt (printed as an extrapolation, not a measurement).

    python benchmarks/bench_select.py --checkpoint /path/sasrec_games.pt --effort-n 256
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import numpy as np
import torch

from recprune.data import load_dataset
from recprune.scoring import InfluenceConfig, influence_scores
from recprune.selection import ScoreTable, get_selector
from recprune.surrogate import SurrogateTrainConfig, build_samples, load_surrogate, train_surrogate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="../shared/data/games")
    ap.add_argument("--checkpoint", default=None, help="trained surrogate; else train one")
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--effort-n", type=int, default=256)
    ap.add_argument("--lora-layers", default="all,last")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rows_out: list[tuple[str, float, str]] = []

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    ds = load_dataset(a.data)
    rows_out.append(("load data", time.perf_counter() - t,
                     f"peak RSS +{(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024:.0f} MB"))

    if a.checkpoint:
        sur = load_surrogate(a.checkpoint, ds)
        rows_out.append(("surrogate training", sur.seconds,
                         f"recorded in checkpoint: {len(sur.history)} epochs, best {sur.best_epoch}, "
                         f"valid N@20 {sur.best_metrics.get('ndcg@20', float('nan')):.4f}"))
    else:
        t = time.perf_counter()
        sur = train_surrogate(ds, SurrogateTrainConfig(seed=a.seed), show_progress=False)
        rows_out.append(("surrogate training", time.perf_counter() - t, f"{len(sur.history)} epochs"))

    samples = build_samples(ds, sur.model.cfg.max_len)
    t = time.perf_counter()
    inf = influence_scores(sur.model, samples, InfluenceConfig(seed=a.seed), loss=sur.config.loss,
                           show_progress=False)
    rows_out.append(("influence (all params)", time.perf_counter() - t,
                     ", ".join(f"{k} {v:.1f}s" for k, v in inf.seconds.items())))

    t = time.perf_counter()
    sel = get_selector("dealrec", lam=0.0).select(ScoreTable(np.arange(ds.n_users),
                                                             {"influence": inf.scores}),
                                                  a.budget, seed=a.seed)
    rows_out.append(("selection (Alg. 2, 49k users)", time.perf_counter() - t,
                     f"{len(sel.rows)} selected, {sel.info['nonempty_groups']} non-empty groups"))

    from recprune.scoring.effort import EffortConfig, EffortScorer
    from recprune.llm.loading import load_causal_lm

    t = time.perf_counter()
    model, tok = load_causal_lm(None, device="cpu")
    rows_out.append(("LLM load (SmolLM2, cached fp32)", time.perf_counter() - t, ""))
    rng = np.random.default_rng(a.seed)
    sample_rows = np.sort(rng.choice(ds.n_users, a.effort_n, replace=False))
    for layers in a.lora_layers.split(","):
        scorer = EffortScorer(model, tok, config=EffortConfig(lora_layers=layers))
        t = time.perf_counter()
        ts_all = scorer.prepare(ds)  # every user's prompt, tokenised (needed for the estimate)
        t_prep = time.perf_counter() - t
        ts = scorer.prepare(ds, sample_rows)
        t = time.perf_counter()
        scorer.score_tokenized(ts, progress=False)
        dt = time.perf_counter() - t
        tok_sample = int(ts.lengths.sum() + ts.n * len(ts.prefix_ids))
        tok_all = int(ts_all.lengths.sum() + ts_all.n * len(ts_all.prefix_ids))
        est = dt / tok_sample * tok_all
        rows_out.append((f"effort, lora_layers={layers}, {a.effort_n} users", dt,
                         f"{dt / a.effort_n:.3f} s/sample; all {ds.n_users} users: "
                         f"~{est / 3600:.1f} h extrapolated ({tok_all / 1e6:.2f}M prompt tokens); "
                         f"tokenising all prompts {t_prep:.1f}s"))
        del scorer

    print(f"\nrecprune select stages on {ds.name} ({ds.n_users} users), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.machine()}")
    print(f"{'stage':<44} {'seconds':>9}  notes")
    for name, sec, note in rows_out:
        print(f"{name:<44} {sec:>9.1f}  {note}")


if __name__ == "__main__":
    main()
