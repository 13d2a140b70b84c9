"""Training, full-ranking evaluation and checkpointing of the SASRec surrogate."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from recprune.data.dataset import InteractionDataset, Sequences
from recprune.errors import ConfigError, DataError, ScoringError
from recprune.evaluation.metrics import recall_ndcg, summarize, topk_items
from recprune.store import atomic_path
from recprune.surrogate.samples import SurrogateSamples, build_samples
from recprune.surrogate.sasrec import SASRec, SASRecConfig, sequence_losses
from recprune.utils.progress import progress
from recprune.utils.seed import seed_everything

log = logging.getLogger(__name__)


@dataclass
class SurrogateTrainConfig:
    """How the surrogate is trained. Architecture defaults are the paper's (2 layers, 2 heads,
    hidden 64, dropout 0.5, max length 50)."""

    hidden: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.5
    max_len: int = 50
    loss: str = "ce"  # "ce": full softmax (deterministic, fast to converge); "bce": 1 negative
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 5  # evaluations without improvement before stopping
    eval_every: int = 1
    metric: str = "ndcg@20"
    max_minutes: float | None = None  # wall-clock cap for training
    include_last: bool = False
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        if self.loss not in ("ce", "bce"):
            raise ConfigError(f"surrogate loss must be 'ce' or 'bce', got {self.loss!r}")
        if self.hidden % self.n_heads:
            raise ConfigError(f"hidden ({self.hidden}) must be divisible by n_heads "
                              f"({self.n_heads})")
        for name in ("lr", "batch_size", "max_epochs", "max_len", "eval_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"surrogate {name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    def model_config(self, n_items: int) -> SASRecConfig:
        return SASRecConfig(n_items=n_items, hidden=self.hidden, n_layers=self.n_layers,
                            n_heads=self.n_heads, dropout=self.dropout, max_len=self.max_len)


@dataclass
class TrainResult:
    model: SASRec
    config: SurrogateTrainConfig
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_metrics: dict = field(default_factory=dict)
    seconds: float = 0.0


def _batches(samples: SurrogateSamples, rows: np.ndarray, batch_size: int,
             rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar-length users (sorted inside chunks of 50 batches)."""
    rows = rng.permutation(rows)
    chunk = batch_size * 50
    out = []
    for i in range(0, len(rows), chunk):
        out.extend(samples.length_buckets(rows[i:i + chunk], batch_size))
    return [out[j] for j in rng.permutation(len(out))]


def _training_loss(model: SASRec, seq: torch.Tensor, tgt: torch.Tensor, loss: str,
                   gen: torch.Generator) -> torch.Tensor:
    """Mean next-item loss over all target positions of the batch."""
    mask = tgt > 0
    if loss == "ce":
        h = model.encode(seq)[mask]  # only positions with a target: (P, d)
        logits = h @ model.item_emb.weight[1:].T
        return F.cross_entropy(logits, tgt[mask] - 1)
    neg = torch.randint(1, model.cfg.n_items + 1, tgt.shape, generator=gen).to(tgt.device)
    per = sequence_losses(model, seq, tgt, loss="bce", neg=neg)
    return per.sum() / mask.sum().clamp(min=1)


@torch.no_grad()
def evaluate(model: SASRec, ds: InteractionDataset, period: str = "valid", *,
             ks: tuple[int, ...] = (10, 20, 50), batch_size: int = 1024,
             rows: np.ndarray | None = None, per_user: bool = False) -> dict:
    """Full-ranking evaluation over all items.

    ``period="valid"``: history = training items (masked), truth = validation items.
    ``period="test"``: history = training + validation items (masked), truth = test items.
    Evaluated users: those with a non-empty ``period`` line (or ``rows``).
    """
    if period not in ("valid", "test"):
        raise ConfigError(f"period must be 'valid' or 'test', got {period!r}")
    model.eval()
    device = next(model.parameters()).device
    hist: Sequences = ds.train if period == "valid" else ds.train.concat(ds.valid)
    truth = ds.valid if period == "valid" else ds.test
    rows = ds.eval_rows(period) if rows is None else np.asarray(rows)
    seq_all = hist.to_padded(model.cfg.max_len, rows=rows)
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(rows), batch_size):
        r = rows[i:i + batch_size]
        seq = torch.from_numpy(seq_all[i:i + batch_size]).to(device)
        scores = model.score_all(seq)
        top = topk_items(scores, max(ks), exclude=hist, rows=r)
        for k, v in recall_ndcg(top, truth, r, ks).items():
            parts.setdefault(k, []).append(v)
    res = {k: np.concatenate(v) for k, v in parts.items()}
    out: dict = summarize(res)
    out["n_users"] = int(len(rows))
    if per_user:
        out["per_user"] = res
        out["rows"] = rows
    return out


def train_surrogate(ds: InteractionDataset, config: SurrogateTrainConfig | None = None, *,
                    show_progress: bool = True,
                    on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train SASRec on the training period, early-stopping on the validation period.

    The model with the best validation ``config.metric`` is returned (not the last one).
    ``on_epoch`` is called with each epoch's record (loss, seconds, validation metrics).
    """
    cfg = config or SurrogateTrainConfig()
    cfg.validate()
    if cfg.metric.split("@")[0] not in ("recall", "ndcg"):
        raise ConfigError(f"metric must be recall@K or ndcg@K, got {cfg.metric!r}")
    gen = seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    samples = build_samples(ds, cfg.max_len, include_last=cfg.include_last)
    train_rows = np.flatnonzero(samples.lengths.numpy() > 0)
    if len(train_rows) == 0:
        raise DataError("no user has enough training items for a surrogate target "
                        "(each needs >= 3 training items)", path=ds.source)
    has_valid = len(ds.eval_rows("valid")) > 0
    if not has_valid:
        log.warning("no validation interactions: training for max_epochs without early stopping")
    model = SASRec(cfg.model_config(ds.n_items)).to(cfg.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98),
                           weight_decay=cfg.weight_decay)
    res = TrainResult(model=model, config=cfg)
    best, best_state, bad = -math.inf, None, 0
    t0 = time.perf_counter()
    ks = tuple(sorted({10, 20, 50, int(cfg.metric.split("@")[1])}))
    with progress(show_progress) as prog:
        task = prog.add_task("surrogate", total=cfg.max_epochs, info="")
        for epoch in range(1, cfg.max_epochs + 1):
            model.train()
            te = time.perf_counter()
            total, nb = 0.0, 0
            for rows in _batches(samples, train_rows, cfg.batch_size, rng):
                seq, tgt = samples.batch(rows)
                loss = _training_loss(model, seq.to(cfg.device), tgt.to(cfg.device), cfg.loss,
                                      gen)
                if not torch.isfinite(loss):
                    raise ScoringError(f"surrogate training loss became {loss.item()} at epoch "
                                       f"{epoch}; lower the learning rate (now {cfg.lr})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
                nb += 1
            rec = {"epoch": epoch, "loss": total / max(nb, 1),
                   "epoch_seconds": time.perf_counter() - te}
            if has_valid and epoch % cfg.eval_every == 0:
                m = evaluate(model, ds, "valid", ks=ks)
                rec.update({f"valid_{k}": v for k, v in m.items() if k != "n_users"})
                if m[cfg.metric] > best:
                    best, bad = m[cfg.metric], 0
                    best_state = copy.deepcopy(model.state_dict())
                    res.best_epoch, res.best_metrics = epoch, m
                else:
                    bad += 1
            rec["elapsed_seconds"] = time.perf_counter() - t0
            res.history.append(rec)
            if on_epoch is not None:
                on_epoch(rec)
            info = f"loss {rec['loss']:.4f}"
            if f"valid_{cfg.metric}" in rec:
                info += f"  valid {cfg.metric} {rec[f'valid_{cfg.metric}']:.4f} (best {best:.4f})"
            prog.update(task, advance=1, info=info)
            if has_valid and bad >= cfg.patience:
                break
            if cfg.max_minutes is not None and rec["elapsed_seconds"] > 60 * cfg.max_minutes:
                log.info("surrogate: stopping at the %.1f-minute cap", cfg.max_minutes)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        res.best_epoch = len(res.history)
    model.eval()
    res.seconds = time.perf_counter() - t0
    return res


def save_surrogate(path: str | Path, result: TrainResult, ds: InteractionDataset) -> None:
    """Write model weights, configs and training history to one file, atomically."""
    payload = {
        "format": "recprune-sasrec-v1",
        "model_config": result.model.cfg.to_dict(),
        "train_config": asdict(result.config),
        "state_dict": result.model.state_dict(),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_metrics": result.best_metrics,
        "seconds": result.seconds,
        "dataset": {"name": ds.name, "n_users": ds.n_users, "n_items": ds.n_items,
                    "n_train": ds.train.nnz},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_surrogate(path: str | Path, ds: InteractionDataset | None = None,
                   device: str = "cpu") -> TrainResult:
    """Load a checkpoint written by :func:`save_surrogate`; check it fits ``ds``."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise DataError("surrogate checkpoint not found", path=path) from None
    except Exception as e:
        raise DataError(f"not a readable surrogate checkpoint ({type(e).__name__}: {e})",
                        path=path) from None
    if not isinstance(payload, dict) or payload.get("format") != "recprune-sasrec-v1":
        raise DataError("not a recprune SASRec checkpoint", path=path)
    if ds is not None:
        meta = payload["dataset"]
        if (meta["n_items"], meta["n_users"], meta["n_train"]) != (ds.n_items, ds.n_users,
                                                                   ds.train.nnz):
            raise DataError(f"checkpoint was trained on another dataset ({meta}) than "
                            f"'{ds.name}' ({ds.n_users} users, {ds.n_items} items)", path=path)
    model = SASRec(SASRecConfig(**payload["model_config"])).to(device)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    tc = SurrogateTrainConfig(**payload["train_config"])
    return TrainResult(model=model, config=tc, history=payload["history"],
                       best_epoch=payload["best_epoch"], best_metrics=payload["best_metrics"],
                       seconds=payload["seconds"])
