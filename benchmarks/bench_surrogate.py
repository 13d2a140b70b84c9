"""Surrogate benchmark: SASRec seconds per epoch and validation quality over wall time on Games.

Trains recprune's SASRec (paper configuration: 2 layers, 2 heads, hidden 64, dropout 0.5, max
length 50) and prints one row per epoch: loss, seconds, elapsed, valid Recall/NDCG@20; then the
comparison with the reference implementation's figures measured on this kind of machine
(80-95 s/epoch; valid R@20 0.0198 / N@20 0.0098 after 5 epochs, 0.0377 / 0.0191 at its best,
~epoch 25, ~35 min).

    python benchmarks/bench_surrogate.py --data ../shared/data/games --minutes 15 \
        --out benchmarks/results/surrogate_games.json
"""

from __future__ import annotations

import argparse
import platform
from dataclasses import asdict

import torch

from recprune.data import load_dataset
from recprune.surrogate import SurrogateTrainConfig, save_surrogate, train_surrogate
from recprune.store import write_json

REF = {"s_per_epoch": (80, 95), "r20_5ep": 0.0198, "n20_5ep": 0.0098, "r20_best": 0.0377,
       "n20_best": 0.0191, "best_minutes": 35}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="../shared/data/games")
    ap.add_argument("--minutes", type=float, default=15.0, help="wall-clock cap")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--loss", default="ce")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the history as JSON here")
    ap.add_argument("--checkpoint", default=None, help="save the best model here")
    a = ap.parse_args()
    ds = load_dataset(a.data)
    cfg = SurrogateTrainConfig(loss=a.loss, lr=a.lr, batch_size=a.batch_size,
                               max_epochs=a.epochs, patience=a.patience, max_minutes=a.minutes,
                               seed=a.seed)
    print(f"recprune SASRec on {ds.name} ({ds.n_users} users, {ds.n_items} items), loss {a.loss}, "
          f"lr {a.lr}, batch {a.batch_size}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.machine()}")
    print(f"{'epoch':>5} {'loss':>8} {'s/epoch':>8} {'elapsed':>8} {'R@20':>7} {'N@20':>7}",
          flush=True)

    def row(h: dict) -> None:
        print(f"{h['epoch']:>5} {h['loss']:>8.4f} {h['epoch_seconds']:>8.1f} "
              f"{h['elapsed_seconds'] / 60:>7.1f}m {h.get('valid_recall@20', float('nan')):>7.4f} "
              f"{h.get('valid_ndcg@20', float('nan')):>7.4f}", flush=True)

    res = train_surrogate(ds, cfg, show_progress=False, on_epoch=row)
    b = res.best_metrics
    sec = sum(h["epoch_seconds"] for h in res.history) / len(res.history)
    first_ref = next((h for h in res.history if h.get("valid_recall@20", 0) >= REF["r20_best"]
                      and h.get("valid_ndcg@20", 0) >= REF["n20_best"]), None)
    print(f"\nbest epoch {res.best_epoch}: valid R@20 {b.get('recall@20', float('nan')):.4f} "
          f"N@20 {b.get('ndcg@20', float('nan')):.4f}; {sec:.1f} s/epoch (reference 80-95)")
    if first_ref:
        print(f"reference best quality (R@20 {REF['r20_best']}, N@20 {REF['n20_best']}) reached "
              f"after {first_ref['elapsed_seconds'] / 60:.1f} min (reference: ~{REF['best_minutes']} "
              f"min) = {first_ref['elapsed_seconds'] / 60 / REF['best_minutes']:.2f}x its time")
    else:
        print("reference best quality not reached in this run")
    if a.out:
        write_json(a.out, {"config": asdict(cfg), "history": res.history,
                           "best_epoch": res.best_epoch, "best": b,
                           "threads": torch.get_num_threads(), "seconds": res.seconds})
    if a.checkpoint:
        save_surrogate(a.checkpoint, res, ds)


if __name__ == "__main__":
    main()
