"""BIGRec throughput on Games: training tokens/s and generation prompts/s (run on an idle machine).

One short LoRA epoch on ``--train-users`` random users (with and without the shared prompt prefix)
and beam-search generation + grounding for ``--rank-users`` random test users (beams 4 and 1),
all with the default SmolLM2-135M-Instruct (or ``--llm``). Item-title embeddings are computed
once and cached before the timed ranking (``item_embedding_seconds`` is reported separately).

    python benchmarks/bench_bigrec_speed.py --train-users 64 --rank-users 32
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

from recprune.backends import create_backend
from recprune.data import load_dataset
from recprune.evaluation import eval_user_rows
from recprune.store import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/games")
    ap.add_argument("--llm", default=None)
    ap.add_argument("--train-users", type=int, default=64)
    ap.add_argument("--rank-users", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="benchmarks/results/bigrec_speed_games.json")
    a = ap.parse_args()
    ds = load_dataset(a.data)
    rng = np.random.default_rng(0)
    train_rows = np.sort(rng.choice(ds.n_users, a.train_users, replace=False))
    rank_rows = eval_user_rows(ds, "test", a.rank_users, seed=1)
    base = {"model": a.llm, "device": a.device, "epochs": 1, "seed": 0}
    res: dict = {"date": date.today().isoformat(), "machine": platform.machine(),
                 "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                 "train_users": a.train_users, "rank_users": a.rank_users}
    rows = []
    for share in (True, False):
        b = create_backend("bigrec", share_prefix=share, **base)
        t0 = time.perf_counter()
        fit = b.fit(ds, train_rows, progress=False)
        st = fit.stats
        rows.append({"what": f"train 1 epoch, share_prefix={share}",
                     "seconds": time.perf_counter() - t0,
                     "tokens_per_s": st["train_tokens_per_s"],
                     "mean_sample_tokens": st["mean_sample_tokens"]})
        print(rows[-1], flush=True)
    b.rank(ds, rank_rows[:1], 20, progress=False)  # item embeddings: computed / cached once
    for beams in (4, 1):
        b.config.num_beams = beams
        t0 = time.perf_counter()
        b.rank(ds, rank_rows, 20, progress=False)
        st = b.last_rank_stats
        rows.append({"what": f"rank {len(rank_rows)} test users, beams {beams}",
                     "seconds": time.perf_counter() - t0, "prompts_per_s": st["prompts_per_s"],
                     "grounding_seconds": st["grounding_seconds"],
                     "mean_generated_chars": float(np.mean([len(g) for g in
                                                            b.last_generations]))})
        print(rows[-1], flush=True)
    res["rows"] = rows
    write_json(Path(a.out), res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
