"""The recommender-backend interface shared by BIGRec, TIGER and the popularity baseline.

A backend is a class registered in :data:`BACKENDS` by name (``@BACKENDS.register("tiger")``);
adding one is one new file. Its lifecycle mirrors a scikit-learn estimator::

    rec = BACKENDS.create("tiger", epochs=20, seed=0)   # options = the backend's config fields
    rec.fit(ds, rows)                                     # fine-tune on the selected user rows
    ranked = rec.rank(ds, eval_rows, k=50, period="test")  # (n, 50) item ids, -1 = no item
    rec.save(run_dir / "model"); rec2 = load_backend(run_dir / "model")

Conventions every backend follows
---------------------------------
* A *training sample* of user row ``u`` is built from ``ds.train[u]`` only: the history is
  ``items[:-1]``, the target the last training item (the DEALRec / BIGRec few-shot sample).
  Backends may use more next-item positions of the same sequence (TIGER does; documented there).
* Validation (early stopping) uses the selected users that have validation-period items:
  history = their training items, target = their validation items.
* ``rank(ds, rows, k, period)``: the history is ``ds.train`` for ``period="valid"`` and
  ``ds.train + ds.valid`` for ``period="test"``; items of the history are NEVER returned (they
  are excluded before the top-k is taken, as the reference evaluation masks them); each row
  holds ``k`` distinct item ids in ``1..n_items`` best first, right-padded with ``-1`` when the
  backend produces fewer than ``k`` candidates (a ``-1`` never counts as a hit).
* ``rank`` works on an un-fitted backend too: that is the *untuned* model.
* ``save(dir)`` writes everything needed to reproduce ``rank`` (config + weights);
  :func:`load_backend` restores it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from recprune.data.dataset import InteractionDataset, Sequences
from recprune.errors import ConfigError, DataError
from recprune.store import write_json
from recprune.utils.registry import Registry

BACKENDS: Registry[Recommender] = Registry(
    "backend", package="recprune.backends")  # type: ignore[name-defined]


@dataclass
class FitResult:
    """What :meth:`Recommender.fit` did: one dict per epoch (``epoch``, ``train_loss``,
    ``valid_loss`` (or None), ``seconds``, ...), the epoch whose weights were kept, the wall
    time, and throughput figures (e.g. ``tokens_per_s`` / ``examples_per_s``).

    ``seconds`` is the wall time of the whole fit, also when it was resumed from a checkpoint:
    see :func:`resumed_fit_seconds`."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def resumed_fit_seconds(this_process: float, history: list[dict], resumed_epochs: int,
                        partial_seconds: float = 0.0) -> float:
    """Wall time of a fit that may have been resumed: this process's own time, plus the
    recorded ``seconds`` of the ``resumed_epochs`` epochs that earlier processes finished, plus
    ``partial_seconds`` an earlier process spent in the epoch this one continued mid-way.
    (Time an interrupted process spent after its last checkpoint was lost and is not counted.)"""
    return float(this_process + sum(float(h["seconds"]) for h in history[:resumed_epochs])
                 + partial_seconds)


class Recommender(ABC):
    """Base class of LLM-recommender backends (see the module docstring for the contract)."""

    name: ClassVar[str]
    config: Any  # a dataclass of the backend's options

    @abstractmethod
    def fit(self, ds: InteractionDataset, rows: np.ndarray, *, out_dir: str | Path | None = None,
            progress: bool = True) -> FitResult:
        """Fine-tune on the training samples of user ``rows``; ``out_dir`` may hold resumable
        checkpoints."""

    @abstractmethod
    def rank(self, ds: InteractionDataset, rows: np.ndarray, k: int, *, period: str = "test",
             progress: bool = True) -> np.ndarray:
        """(len(rows), k) int64 ranked item ids per user, history excluded, -1 padded."""

    @abstractmethod
    def save(self, path: str | Path) -> None:
        """Write config + weights into directory ``path`` (atomically per file)."""

    @classmethod
    @abstractmethod
    def _load(cls, path: Path, *, device: str = "auto") -> Recommender:
        """Restore a backend written by :meth:`save` (``backend.json`` already checked)."""

    def config_dict(self) -> dict:
        return asdict(self.config) if is_dataclass(self.config) else dict(self.config)

    def _write_manifest(self, path: str | Path) -> None:
        write_json(Path(path) / "backend.json", {"backend": self.name,
                                                 "config": self.config_dict()})


def create_backend(name: str, **options: Any) -> Recommender:
    """Instantiate a registered backend with its options (a clear error for unknown ones)."""
    return BACKENDS.create(name, **options)


def load_backend(path: str | Path, *, device: str = "auto") -> Recommender:
    """Load a backend saved with :meth:`Recommender.save` (reads ``path/backend.json``)."""
    path = Path(path)
    manifest = path / "backend.json"
    if not manifest.is_file():
        raise DataError("not a saved recprune model (no backend.json)", path=str(path))
    try:
        name = json.loads(manifest.read_text())["backend"]
    except (json.JSONDecodeError, KeyError) as e:
        raise DataError(f"unreadable backend.json ({e})", path=str(manifest)) from None
    if name not in BACKENDS:
        raise DataError(f"unknown backend {name!r}", path=str(manifest), field="backend")
    return BACKENDS[name]._load(path, device=device)


# ----------------------------------------------------------------------------- helpers

def check_period(period: str) -> None:
    if period not in ("valid", "test"):
        raise ConfigError(f"period must be 'valid' or 'test', got {period!r}")


def history_for(ds: InteractionDataset, period: str) -> Sequences:
    """The history a ``period`` prediction conditions on (and whose items are excluded)."""
    check_period(period)
    return ds.train if period == "valid" else ds.train.concat(ds.valid)


def check_rows(ds: InteractionDataset, rows: np.ndarray, what: str = "rows") -> np.ndarray:
    """Validate user rows (1-D ints in range, unique, non-empty) and return them as int64."""
    rows = np.asarray(rows)
    if rows.ndim != 1 or (len(rows) and not np.issubdtype(rows.dtype, np.integer)):
        raise ConfigError(f"{what} must be a 1-D array of integer user rows")
    if not len(rows):
        raise ConfigError(f"{what} is empty: nothing to train / rank")
    rows = rows.astype(np.int64)
    if rows.min() < 0 or rows.max() >= ds.n_users:
        raise ConfigError(f"{what} must be user rows in 0..{ds.n_users - 1}")
    if len(np.unique(rows)) != len(rows):
        raise ConfigError(f"{what} contains duplicate user rows")
    return rows


def training_rows(ds: InteractionDataset, rows: np.ndarray) -> np.ndarray:
    """Rows usable as training samples (>= 2 training items: a history and a target).

    Raises :class:`DataError` naming the user when none is usable."""
    rows = check_rows(ds, rows, "selection")
    ok = ds.train.lengths[rows] >= 2
    if not ok.any():
        raise DataError(f"none of the {len(rows)} selected users has >= 2 training items; "
                        "no training sample can be built", field="train")
    return rows[ok]


def exclude_and_pad(candidates: np.ndarray, history: Sequences, rows: np.ndarray,
                    k: int) -> np.ndarray:
    """Drop history items and repeats from ranked ``candidates`` (n, m; -1 = none), keep the
    first ``k`` per row, right-pad with -1. Vectorised over rows."""
    cand = np.asarray(candidates, dtype=np.int64)
    n, m = cand.shape
    bad = cand < 0
    sub = history.subset(rows)
    if sub.nnz:
        width = int(max(cand.max(initial=0), sub.items.max(initial=0))) + 1
        keys = np.unique(sub.row_ids() * width + sub.items.astype(np.int64))
        q = np.arange(n)[:, None] * width + np.where(bad, 0, cand)
        pos = np.searchsorted(keys, q)
        bad |= (pos < len(keys)) & (keys[np.minimum(pos, len(keys) - 1)] == q)
    # repeats within a row: keep the first occurrence
    order = np.argsort(np.where(bad, -1, cand), axis=1, kind="stable")
    srt = np.take_along_axis(np.where(bad, -1, cand), order, 1)
    dup_sorted = np.zeros_like(srt, dtype=bool)
    dup_sorted[:, 1:] = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    dup = np.zeros_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, 1)
    bad |= dup
    keep_pos = np.cumsum(~bad, axis=1) - 1
    out = np.full((n, k), -1, dtype=np.int64)
    r, c = np.nonzero(~bad & (keep_pos < k))
    out[r, keep_pos[r, c]] = cand[r, c]
    return out
