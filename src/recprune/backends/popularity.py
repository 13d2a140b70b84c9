"""Most-popular baseline: every user gets the items most often interacted with in the training
period of the fitted users (all users when fitted on all rows), history excluded."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recprune.backends.base import BACKENDS, FitResult, Recommender, check_rows, history_for
from recprune.data.dataset import InteractionDataset
from recprune.errors import ConfigError, DataError
from recprune.evaluation.metrics import topk_items
from recprune.store import save_npy


@dataclass
class PopularityConfig:
    period: str = "train"  # count interactions of this period only ('train'); kept for clarity
    seed: int = 0  # unused (the ranking is deterministic); accepted like every backend's seed


@BACKENDS.register("pop")
class MostPopular(Recommender):
    """Rank items by their training-period interaction count (ties: lower item id first)."""

    def __init__(self, **options) -> None:
        self.config = PopularityConfig(**options)
        if self.config.period != "train":
            raise ConfigError("pop: only period='train' is supported")
        self.counts: np.ndarray | None = None

    def fit(self, ds: InteractionDataset, rows: np.ndarray, *, out_dir=None,
            progress: bool = True) -> FitResult:
        t0 = time.perf_counter()
        rows = check_rows(ds, rows, "selection")
        self.counts = np.bincount(ds.train.subset(rows).items, minlength=ds.n_items + 1)
        return FitResult(seconds=time.perf_counter() - t0,
                         stats={"n_users": int(len(rows)), "n_interactions":
                                int(self.counts.sum())})

    def rank(self, ds: InteractionDataset, rows: np.ndarray, k: int, *, period: str = "test",
             progress: bool = True) -> np.ndarray:
        import torch

        if self.counts is None:
            self.fit(ds, np.arange(ds.n_users))
        if len(self.counts) != ds.n_items + 1:
            raise DataError(f"pop: fitted on {len(self.counts) - 1} items, data has {ds.n_items}")
        rows = check_rows(ds, rows)
        hist = history_for(ds, period)
        # score = count, ties broken towards the lower item id; item 0 (padding) never ranked
        base = self.counts.astype(np.float64) - np.arange(ds.n_items + 1) / (ds.n_items + 2)
        base[0] = -np.inf
        out = np.empty((len(rows), min(k, ds.n_items)), dtype=np.int64)
        for s in range(0, len(rows), 2048):
            r = rows[s:s + 2048]
            scores = torch.from_numpy(np.broadcast_to(base, (len(r), len(base))).copy())
            out[s:s + len(r)] = topk_items(scores, k, exclude=hist, rows=r).numpy()
        if out.shape[1] < k:
            out = np.pad(out, ((0, 0), (0, k - out.shape[1])), constant_values=-1)
        return out

    def save(self, path: str | Path) -> None:
        if self.counts is None:
            raise ConfigError("pop: fit before save")
        Path(path).mkdir(parents=True, exist_ok=True)
        save_npy(Path(path) / "counts.npy", self.counts)
        self._write_manifest(path)

    @classmethod
    def _load(cls, path: Path, *, device: str = "auto") -> MostPopular:
        import json

        m = cls(**json.loads((path / "backend.json").read_text())["config"])
        m.counts = np.load(path / "counts.npy")
        return m
