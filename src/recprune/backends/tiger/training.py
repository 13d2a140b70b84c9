"""Training TIGER's T5 on next-item examples, resumable from a checkpoint.

Full fine-tuning of the whole T5 with AdamW, a linear warm-up then a constant learning rate, and
gradient clipping. An epoch trains on shuffled batches of similar history length
(:func:`~recprune.backends.tiger.examples.bucketed_batches`), each padded to its own longest
history. After each epoch the teacher-forced loss on the validation examples is computed;
training stops after ``patience`` epochs without improvement and the best epoch's weights are
restored (without validation examples every epoch runs and the last is kept).

Resuming: with a checkpoint path (``out_dir/tiger_fit.pt``), the fit's whole state (model,
optimiser, scheduler, best weights, RNG states, history) is written there atomically after every
epoch, and within an epoch every ``checkpoint_minutes`` (with the epoch's starting RNG state and
the number of batches done, so a long epoch loses at most that much work). The checkpoint also
holds the fit's spec (:func:`fit_spec`: the options that change training, the training rows,
the semantic IDs and the starting weights). A later fit with the same spec resumes after the
last checkpoint, bit-for-bit as if uninterrupted on CPU, and returns at once when that fit had
finished; a checkpoint of a *different* fit is refused with a :class:`ConfigError` naming what
differs (remove it or choose another directory). The checkpoint is left in place after a
finished fit.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recprune.backends.tiger.config import EVAL_ONLY, RUNTIME_ONLY, TigerConfig
from recprune.backends.tiger.examples import Examples, bucketed_batches, encoder_inputs, labels
from recprune.errors import ConfigError, DataError, ScoringError
from recprune.store import Hasher, atomic_path, canonical, describe, diff, digest
from recprune.utils.cpu import flush_denormals
from recprune.utils.progress import progress as progress_bar
from recprune.utils.seed import seed_everything

log = logging.getLogger(__name__)

CHECKPOINT = "tiger_fit.pt"
_FORMAT = 2  # part of the spec: bump when the checkpoint's contents change


def fit_spec(config: TigerConfig, rows: np.ndarray, codes: np.ndarray, model) -> dict:
    """What a resumable fit depends on: the options that change training, the training rows,
    the semantic IDs and the weights the fit starts from."""
    skip = EVAL_ONLY + RUNTIME_ONLY + ("embedding_cache", "use_cache")
    init = Hasher()
    for name, weights in model.state_dict().items():
        init.update(name, weights)
    return canonical({"format": _FORMAT,
                      "config": {k: v for k, v in asdict(config).items() if k not in skip},
                      "rows": digest(np.sort(rows)), "codes": digest(codes),
                      "init": init.hexdigest()})


def batch_loss(model, ex: Examples, idx: np.ndarray, item_tokens: np.ndarray,
               device: torch.device) -> torch.Tensor:
    """Teacher-forced mean token loss of the T5 on examples ``idx``."""
    ids, mask = encoder_inputs(ex, idx, item_tokens)
    target = labels(ex, idx, item_tokens)
    return model(input_ids=torch.from_numpy(ids).to(device),
                 attention_mask=torch.from_numpy(mask).to(device),
                 labels=torch.from_numpy(target).to(device), use_cache=False).loss


@torch.no_grad()
def valid_loss(model, ex: Examples, item_tokens: np.ndarray, device: torch.device,
               batch_size: int) -> float:
    """Teacher-forced mean token loss on all of ``ex`` in eval mode (no dropout), in batches of
    ``batch_size`` examples of similar history length."""
    was_training = model.training
    model.eval()
    order = np.argsort(ex.hist_len, kind="stable")
    total = 0.0
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        total += float(batch_loss(model, ex, idx, item_tokens, device)) * len(idx)
    model.train(was_training)
    return total / len(order)


class Trainer:
    """One fit of the T5 (see the module docstring). After :meth:`run`, ``state`` holds the
    ``history`` (one record per epoch), ``best_epoch``, ``train_seconds`` and ``train_examples``
    of the whole fit, including epochs an interrupted process finished; ``resumed_from`` is the
    number of such epochs and ``partial_seconds`` the time spent in the epoch this process
    continued mid-way."""

    def __init__(self, model, config: TigerConfig, item_tokens: np.ndarray,
                 device: torch.device, checkpoint: Path | None = None,
                 spec: dict | None = None) -> None:
        self.cfg = config
        self.model = model.to(device)
        self.item_tokens = item_tokens
        self.device = device
        self.checkpoint, self.spec = checkpoint, spec
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=config.lr,
                                     weight_decay=config.weight_decay)
        warm = max(config.warmup_steps, 1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt,
                                                       lambda s: min(1.0, (s + 1) / warm))
        seed_everything(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.state: dict[str, Any] = {
            "epoch": 0, "history": [], "best_loss": math.inf, "best_epoch": None,
            "best_state": None, "bad": 0, "done": False, "train_seconds": 0.0,
            "train_examples": 0}
        self.resumed_from = 0
        self.partial_seconds = 0.0
        if checkpoint is not None and checkpoint.is_file():
            self._restore()
            self.resumed_from = self.state["epoch"]
            log.info("tiger: resuming from %s after epoch %d", checkpoint, self.resumed_from)

    def run(self, ex: Examples, vex: Examples, progress: bool = True) -> bool:
        """Train on ``ex`` with early stopping on ``vex``, then keep the best epoch's weights.
        Returns whether subnormal floats were flushed to zero while training."""
        with flush_denormals(self.device) as flushed, progress_bar(progress) as prog:
            task = prog.add_task("TIGER fit", total=1, info="")
            epoch = self.state["epoch"]
            partial = self.state.pop("partial", None)  # a mid-epoch checkpoint to continue from
            self.partial_seconds = float(partial["seconds"]) if partial is not None else 0.0
            while not self.state["done"] and epoch < self.cfg.epochs:
                epoch += 1
                loss_sum, seen, train_s = self._train_epoch(epoch, ex, partial, prog, task)
                partial = None
                t = time.perf_counter()
                vloss = (valid_loss(self.model, vex, self.item_tokens, self.device,
                                    self.cfg.eval_batch_size * 4) if len(vex) else None)
                rec = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1),
                       "valid_loss": vloss, "seconds": train_s + time.perf_counter() - t,
                       "examples": seen, "examples_per_s": seen / max(train_s, 1e-9)}
                self._end_epoch(rec, train_s)
                vtxt = f" valid {vloss:.4f}" if vloss is not None else ""
                prog.update(task, info=f"train {rec['train_loss']:.4f}{vtxt}")
                log.info("tiger epoch %d: train loss %.4f%s (%.1fs, %.0f ex/s)", epoch,
                         rec["train_loss"], vtxt, rec["seconds"], rec["examples_per_s"])
        if self.state["best_state"] is not None:
            self.model.load_state_dict(self.state["best_state"])
        self.model.eval()
        return flushed

    def _train_epoch(self, epoch: int, ex: Examples, partial: dict | None, prog,
                     task) -> tuple[float, int, float]:
        """One epoch's optimiser steps: ``(summed example loss, examples, seconds)``, counting
        what an interrupted process did of this epoch when continuing from ``partial``."""
        cfg = self.cfg
        self.model.train()
        t0 = time.perf_counter()
        loss_sum, seen, skip, before = 0.0, 0, 0, 0.0
        epoch_rng = json.dumps(self.rng.bit_generator.state)
        if partial is not None:
            # the interrupted epoch's batches: its starting RNG state, then skip the batches
            # already trained (model / optimiser / torch RNG are restored)
            epoch_rng = partial["epoch_rng"]
            self.rng.bit_generator.state = json.loads(epoch_rng)
            skip, loss_sum, seen = partial["batches"], partial["total"], partial["seen"]
            before = partial["seconds"]
        batches = bucketed_batches(ex.hist_len, cfg.batch_size, self.rng)
        prog.update(task, description=f"TIGER epoch {epoch}/{cfg.epochs}", total=len(batches),
                    completed=skip)
        last_save = time.perf_counter()
        for b, idx in enumerate(batches):
            if b < skip:
                continue
            if (self.checkpoint is not None and cfg.checkpoint_minutes > 0 and b > skip
                    and time.perf_counter() - last_save > 60 * cfg.checkpoint_minutes):
                self.state["partial"] = {"epoch_rng": epoch_rng, "batches": b,
                                         "total": loss_sum, "seen": seen,
                                         "seconds": before + time.perf_counter() - t0}
                self.save_checkpoint()
                self.state.pop("partial")
                last_save = time.perf_counter()
            loss = batch_loss(self.model, ex, idx, self.item_tokens, self.device)
            if not torch.isfinite(loss):
                raise ScoringError(f"tiger: training loss became {loss.item()} at epoch "
                                   f"{epoch}; lower the learning rate (now {cfg.lr})")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
            self.sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
            prog.update(task, advance=1, info=f"loss {loss_sum / seen:.4f}")
        return loss_sum, seen, before + time.perf_counter() - t0

    def _end_epoch(self, rec: dict, train_s: float) -> None:
        """Record a finished epoch: keep its weights if its validation loss is the best yet,
        decide on early stopping, write the checkpoint."""
        state = self.state
        state["train_seconds"] += train_s
        state["train_examples"] += rec["examples"]
        vloss = rec["valid_loss"]
        if vloss is None or vloss < state["best_loss"]:
            state["best_loss"] = math.inf if vloss is None else vloss
            state["best_epoch"] = rec["epoch"]
            state["best_state"] = {k: v.detach().to("cpu", copy=True)
                                   for k, v in self.model.state_dict().items()}
            state["bad"] = 0
        else:
            state["bad"] += 1
        state["history"].append(rec)
        state["epoch"] = rec["epoch"]
        state["done"] = state["bad"] >= self.cfg.patience or rec["epoch"] >= self.cfg.epochs
        if self.checkpoint is not None:
            self.save_checkpoint()

    # --------------------------------------------------------------- the checkpoint

    def save_checkpoint(self) -> None:
        payload = {"spec": self.spec,
                   "state": {k: v for k, v in self.state.items() if k != "best_state"},
                   "best_state": self.state["best_state"],
                   "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                   "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                   "numpy_rng": json.dumps(self.rng.bit_generator.state),
                   "torch_rng": torch.get_rng_state(),
                   "cuda_rng": (torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                                else [])}
        with atomic_path(self.checkpoint) as tmp:
            torch.save(payload, tmp)

    def _restore(self) -> None:
        path = self.checkpoint
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            stored = payload.get("spec")
        except Exception as e:  # noqa: BLE001 - a torn / foreign file
            raise DataError(f"tiger: unreadable fit checkpoint ({e}); remove it to start over",
                            path=path) from None
        if stored is None:
            raise ConfigError(f"tiger: {path} is a fit checkpoint of another format (it names no "
                              "spec); remove it or use another out_dir")
        changes = diff(stored, self.spec)
        if changes:
            raise ConfigError(f"tiger: {path} is the checkpoint of a different fit "
                              f"({describe(changes)}); remove it or use another out_dir")
        self.model.load_state_dict(payload["model"])
        self.model.to(self.device)
        self.opt.load_state_dict(payload["optimizer"])
        self.sched.load_state_dict(payload["scheduler"])
        self.rng.bit_generator.state = json.loads(payload["numpy_rng"])
        torch.set_rng_state(payload["torch_rng"])
        if payload["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
        self.state = {**payload["state"], "best_state": payload["best_state"]}
