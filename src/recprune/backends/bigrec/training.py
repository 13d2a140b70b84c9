"""Fine-tuning BIGRec's LoRA adapter, resumable from its one checkpoint.

Samples (:func:`training_samples`, tokenised once per fit): one Alpaca sample per selected user
with >= 2 training items (:func:`recprune.llm.prompts.build_records`: history = training items
but the last, response = ``"<title of the last training item>"`` + eos, oldest titles dropped
until the sample fits ``cutoff_len`` tokens). Validation samples (early stopping): the selected
users that have validation items, history = all their training items, target = their first
validation item (``period="valid"``). ``train_on_inputs=False`` takes the loss on the response
(title + eos) only; ``True`` on every token, as the reference does.

Optimisation (:class:`Trainer`): AdamW on the LoRA parameters with a linear warm-up, then linear
decay to 0 over ``epochs``, and gradient clipping at ``max_grad_norm``, as the HF ``Trainer``
the reference uses. Per epoch a seeded random permutation is stably sorted by length, cut into
optimizer batches of ``batch_size`` and the batch order is shuffled (:func:`epoch_batches`);
the loss of a batch is the mean NLL over all its loss tokens, however it is cut into
micro-batches (:mod:`recprune.backends.bigrec.loss`). LoRA dropout is seeded per epoch. After
every epoch the validation loss decides early stopping (``patience``); the best epoch's adapter
is kept (without validation samples, the last).

Checkpoint and resume: given a :class:`~recprune.store.RunStore` (the ``out_dir`` of
:meth:`BigRec.fit <recprune.backends.bigrec.BigRec.fit>`), the trainer writes one artifact,
``checkpoint/``, after every epoch and, every ``checkpoint_minutes``, between two optimizer
steps. It always holds the whole state at a step boundary: the adapter (``adapter.safetensors``),
the best epoch's adapter (``best_adapter.safetensors``), the optimizer, scheduler and torch
random state (``optim.pt``) and the :class:`Progress` (``progress.json``). Its spec is the fit's
identity (:func:`fit_spec`). A fit with the same spec continues after the last checkpointed step
and ends as an uninterrupted fit would; a finished fit just restores its best adapter; a
checkpoint of another spec is refused with a :class:`~recprune.errors.ConfigError` naming what
differs.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from recprune.backends.base import FitResult, resumed_fit_seconds
from recprune.backends.bigrec.config import BigRecConfig
from recprune.backends.bigrec.loss import loss_pass, micro_batches
from recprune.backends.bigrec.model import LoraLM
from recprune.data.dataset import InteractionDataset
from recprune.errors import ConfigError, ScoringError
from recprune.llm.prompts import (PromptTemplate, TokenizedSamples, build_records,
                                  tokenize_records)
from recprune.store import RunStore, digest, read_json, rows_key, write_json
from recprune.utils.progress import progress as progress_bar

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
ADAPTER_FILE = "adapter.safetensors"
BEST_ADAPTER_FILE = "best_adapter.safetensors"
OPTIM_FILE = "optim.pt"
PROGRESS_FILE = "progress.json"


# ----------------------------------------------------------------------------- samples

def tokenize_samples(records: list[dict], tokenizer, template: PromptTemplate,
                     config: BigRecConfig) -> TokenizedSamples:
    """Training / validation records as token ids (shared prefix split off, loss targets)."""
    return tokenize_records(records, tokenizer, prefix_text=template.shared_prefix(),
                            cutoff_len=config.cutoff_len, add_eos=True, loss_on=config.loss_on)


def training_samples(ds: InteractionDataset, train_rows: np.ndarray, valid_rows: np.ndarray,
                     template: PromptTemplate, tokenizer, config: BigRecConfig
                     ) -> tuple[TokenizedSamples, TokenizedSamples | None]:
    """The training samples of ``train_rows`` and the validation samples of ``valid_rows``
    (``None`` when there are none)."""
    def samples(rows: np.ndarray, period: str) -> TokenizedSamples:
        records = build_records(ds, rows, template, period=period, tokenizer=tokenizer,
                                cutoff_len=config.cutoff_len, add_eos=True)
        return tokenize_samples(records, tokenizer, template, config)

    return samples(train_rows, "train"), samples(valid_rows, "valid") if len(valid_rows) else None


def fit_spec(lm: LoraLM, config: BigRecConfig, train: TokenizedSamples,
             valid: TokenizedSamples | None, rows: np.ndarray) -> dict:
    """What identifies a fit: the training options, the base model, the training rows and the
    tokenised samples."""
    return {"options": config.training_options(), "base_model": lm.base_fingerprint(),
            "rows": rows_key(rows),
            "train_samples": digest(train.prefix_ids, train.indptr, train.ids, train.target)[:16],
            "valid_samples": (digest(valid.indptr, valid.ids, valid.target)[:16]
                              if valid is not None else None)}


def epoch_batches(ts: TokenizedSamples, epoch: int, seed: int,
                  batch_size: int) -> list[np.ndarray]:
    """Optimizer batches of one epoch: samples of similar length together, seeded order."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(ts.n)
    order = perm[np.argsort(ts.lengths[perm], kind="stable")]
    batches = [order[s:s + batch_size] for s in range(0, ts.n, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def valid_loss(lm: LoraLM, valid: TokenizedSamples, config: BigRecConfig) -> float:
    """Mean NLL per loss token over the validation samples (no gradient, prefix once)."""
    batches = micro_batches(valid, np.arange(valid.n),
                            max(config.eval_batch_size, config.micro_batch_size),
                            config.max_micro_tokens)
    denom = float(valid.n_targets.sum())
    s, _ = loss_pass(lm, valid, batches, grad=False, denom=denom,
                     share_prefix=config.share_prefix, loss_on=config.loss_on,
                     where="(validation)")
    return s / max(denom, 1.0)


# ----------------------------------------------------------------------------- the fit

@dataclass
class Progress:
    """Where a fit stands between two optimizer steps: what its checkpoint restores."""

    epoch: int = 0  # the epoch in progress, 0-based (= epochs finished)
    step: int = 0  # its optimizer steps done
    samples: int = 0  # the samples of those steps
    loss_sum: float = 0.0  # their summed NLL
    target_sum: float = 0.0  # their loss tokens
    tokens_run: int = 0  # tokens they ran through the model
    padded: int = 0  # padding tokens among those
    seconds: float = 0.0  # time spent in the epoch so far
    history: list[dict] = field(default_factory=list)  # one record per finished epoch
    best_epoch: int | None = None
    best_valid: float | None = None
    bad_epochs: int = 0  # epochs since the best one
    stopped: bool = False  # early stopping ended the fit

    def next_epoch(self) -> Progress:
        """The progress at the start of the next epoch (the epoch's own sums reset)."""
        return Progress(epoch=self.epoch + 1, history=self.history, best_epoch=self.best_epoch,
                        best_valid=self.best_valid, bad_epochs=self.bad_epochs,
                        stopped=self.stopped)


class Trainer:
    """Fits ``lm``'s adapter to tokenised samples (see the module docstring).

    ``store``: where the checkpoint lives (``None``: no checkpoints)."""

    def __init__(self, lm: LoraLM, config: BigRecConfig, train: TokenizedSamples,
                 valid: TokenizedSamples | None, rows: np.ndarray,
                 store: RunStore | None = None) -> None:
        self.lm, self.config, self.train, self.valid, self.store = lm, config, train, valid, store
        self.spec = fit_spec(lm, config, train, valid, rows) if store is not None else None
        self.opt = torch.optim.AdamW(lm.lora_params, lr=config.lr,
                                     weight_decay=config.weight_decay)
        self.steps_per_epoch = math.ceil(train.n / config.batch_size)
        total_steps = self.steps_per_epoch * config.epochs
        warm = min(config.warmup_steps, total_steps // 10)  # short fits: no step wasted warming

        def lr_lambda(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            return max(0.0, (total_steps - step) / max(1, total_steps - warm))

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda)
        self.progress = Progress()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.epoch_tokens = int(train.lengths.sum() + len(train.prefix_ids) * train.n)
        # this process's totals over the epochs it finished (resumed parts included)
        self._train_seconds = 0.0
        self._tokens_run = 0
        self._padded = 0

    def run(self, *, started: float, n_selected: int, progress: bool = True) -> FitResult:
        """Train to the end (from the checkpoint, if the store has one of this fit), keep the
        best epoch's adapter. ``started``: ``time.perf_counter()`` when the fit began."""
        cfg, ts = self.config, self.train
        rng_state = self._resume()
        start_epoch, earlier_seconds = self.progress.epoch, self.progress.seconds
        rng_devices = [self.lm.device] if self.lm.device.type == "cuda" else []
        # the caller's global RNG state is left alone (dropout is seeded per epoch)
        with progress_bar(progress) as pb, torch.random.fork_rng(devices=rng_devices):
            task = pb.add_task("bigrec fit", total=(cfg.epochs - start_epoch) * ts.n, info="")
            while self.progress.epoch < cfg.epochs and not self.progress.stopped:
                self._run_epoch(pb, task, rng_state)
                rng_state = None
        if self.best_state is not None:
            self.lm.load_adapter_state(self.best_state)
        self.lm.peft.eval()
        history = self.progress.history
        this_process = time.perf_counter() - started
        n_done = len(history) - start_epoch
        P = len(ts.prefix_ids)
        stats = {
            "n_train": int(ts.n), "n_valid": int(self.valid.n if self.valid is not None else 0),
            "n_selected": int(n_selected), "prefix_tokens": P,
            "mean_sample_tokens": float(P + ts.lengths.mean()),
            "train_tokens_per_s": (self.epoch_tokens * n_done / self._train_seconds
                                   if self._train_seconds > 0 else None),
            "tokens_run_per_s": (self._tokens_run / self._train_seconds
                                 if self._train_seconds > 0 else None),
            "padding_fraction": (self._padded / max(1, self.epoch_tokens * n_done)
                                 if n_done else None),
            "share_prefix": bool(cfg.share_prefix), "steps_per_epoch": self.steps_per_epoch,
            "resumed_after_epoch": start_epoch or None, "stopped_early": self.progress.stopped,
            "seconds_this_process": this_process, "n_truncated": int(ts.n_truncated),
        }
        return FitResult(history=history, best_epoch=self.progress.best_epoch,
                         seconds=resumed_fit_seconds(this_process, history, start_epoch,
                                                     earlier_seconds),
                         stats=stats)

    def _run_epoch(self, pb, task, rng_state: torch.Tensor | None) -> None:
        """The rest of the epoch in progress, its validation and its checkpoint."""
        cfg, ts, p = self.config, self.train, self.progress
        t0 = time.perf_counter() - p.seconds
        torch.manual_seed(cfg.seed * 1_000_003 + p.epoch)  # LoRA dropout
        if rng_state is not None:  # continuing inside the epoch
            torch.set_rng_state(rng_state)
        pb.update(task, advance=p.samples)
        self.lm.peft.train()
        skip = p.step
        last_save = time.perf_counter()
        for step, batch in enumerate(epoch_batches(ts, p.epoch, cfg.seed, cfg.batch_size)):
            if step < skip:
                continue
            if (step > skip and cfg.checkpoint_minutes > 0
                    and time.perf_counter() - last_save > 60 * cfg.checkpoint_minutes):
                p.seconds = time.perf_counter() - t0
                self._save()
                last_save = time.perf_counter()
            self._step(batch, f"at epoch {p.epoch + 1}, step {step + 1}")
            rate = self.epoch_tokens * p.step / self.steps_per_epoch / (time.perf_counter() - t0)
            pb.update(task, advance=len(batch),
                      info=f"epoch {p.epoch + 1}/{cfg.epochs} loss "
                           f"{p.loss_sum / max(p.target_sum, 1):.4f} {rate:.0f} tok/s")
        train_time = time.perf_counter() - t0
        self._train_seconds += train_time
        self._tokens_run += p.tokens_run
        self._padded += p.padded
        self.lm.peft.eval()
        tv = time.perf_counter()
        loss = valid_loss(self.lm, self.valid, cfg) if self.valid is not None else None
        rec = {"epoch": p.epoch + 1, "train_loss": p.loss_sum / max(p.target_sum, 1.0),
               "valid_loss": loss, "seconds": time.perf_counter() - t0,
               "train_seconds": train_time, "valid_seconds": time.perf_counter() - tv,
               "tokens": self.epoch_tokens, "tokens_run": p.tokens_run,
               "lr_end": float(self.sched.get_last_lr()[0])}
        p.history.append(rec)
        if loss is None or p.best_valid is None or loss < p.best_valid:
            p.best_epoch, p.bad_epochs = p.epoch + 1, 0
            if loss is not None:
                p.best_valid = loss
            self.best_state = self.lm.adapter_state()
        else:
            p.bad_epochs += 1
            p.stopped = cfg.patience is not None and p.bad_epochs >= cfg.patience
        self.progress = p.next_epoch()
        self._save()
        pb.update(task, info=f"epoch {rec['epoch']}: train {rec['train_loss']:.4f}"
                  + (f" valid {loss:.4f}" if loss is not None else ""))

    def _step(self, batch: np.ndarray, where: str) -> None:
        """One optimizer step on the samples ``batch``."""
        cfg, ts, p = self.config, self.train, self.progress
        batches = micro_batches(ts, batch, cfg.micro_batch_size, cfg.max_micro_tokens)
        denom = float(ts.n_targets[batch].sum())
        s, run = loss_pass(self.lm, ts, batches, grad=True, denom=max(denom, 1.0),
                           share_prefix=cfg.share_prefix, loss_on=cfg.loss_on, where=where)
        if cfg.max_grad_norm is not None:
            gn = torch.nn.utils.clip_grad_norm_(self.lm.lora_params, cfg.max_grad_norm)
            if not torch.isfinite(gn):
                raise ScoringError(f"bigrec: non-finite gradient {where}")
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        p.step += 1
        p.samples += len(batch)
        p.loss_sum += s
        p.target_sum += denom
        p.tokens_run += run
        p.padded += sum(len(mb.idx) * mb.T for mb in batches) - int(ts.lengths[batch].sum())

    # -- the checkpoint ------------------------------------------------------------------------

    def _save(self) -> None:
        if self.store is None:
            return
        from safetensors.torch import save_file

        with self.store.write_dir(CHECKPOINT, self.spec, epoch=self.progress.epoch,
                                  step=self.progress.step) as d:
            save_file(self.lm.adapter_state(), str(d / ADAPTER_FILE))
            if self.best_state is not None:
                save_file(self.best_state, str(d / BEST_ADAPTER_FILE))
            torch.save({"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                        "torch_rng": torch.get_rng_state()}, d / OPTIM_FILE)
            write_json(d / PROGRESS_FILE, asdict(self.progress))

    def _resume(self) -> torch.Tensor | None:
        """Restore this fit's checkpoint, if the store has one. Returns the torch random state
        to continue an epoch with (``None`` at an epoch boundary or without a checkpoint)."""
        store = self.store
        if store is None:
            return None
        store.require_same(CHECKPOINT, self.spec, hint="It holds the checkpoint of a different "
                           "fit: use another out_dir or delete it")
        if not store.has_dir(CHECKPOINT, self.spec):
            return None
        from safetensors.torch import load_file

        d, dev = store.path(CHECKPOINT), self.lm.device
        try:
            progress = Progress(**read_json(d / PROGRESS_FILE))
            adapter = load_file(str(d / ADAPTER_FILE), device=str(dev))
            best = d / BEST_ADAPTER_FILE
            self.best_state = load_file(str(best), device=str(dev)) if best.is_file() else None
            state = torch.load(d / OPTIM_FILE, map_location=dev, weights_only=True)
        except Exception as e:  # noqa: BLE001 - json, safetensors and torch raise many kinds
            raise ConfigError(f"bigrec: unreadable checkpoint {d} ({e}); delete it to start "
                              "over") from None
        self.progress = progress
        self.lm.load_adapter_state(adapter)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        log.info("bigrec: resuming from %s at epoch %d, step %d", d, progress.epoch + 1,
                 progress.step)
        return state["torch_rng"] if progress.step else None
