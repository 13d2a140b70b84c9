"""The registered ``tiger`` backend: semantic IDs, then a T5 trained from scratch on them.

Semantic IDs come first (:meth:`Tiger.build_ids`): item texts -> sentence embeddings
(:func:`recprune.llm.text_encoder.item_embeddings`) -> RQ-VAE codes + a disambiguation token
(:func:`~recprune.backends.tiger.rqvae.semantic_ids`), computed once and cached, or kept from a
loaded model. They fix the token vocabulary, and with it a fresh T5, seeded with ``seed``.

``fit`` (:mod:`~recprune.backends.tiger.training`) trains the T5 the backend holds: the fresh
initialisation for a new backend, the loaded / previously fitted weights otherwise (a second
``fit`` continues fine-tuning). Its examples are the selected users' training sequences; its
validation examples are the selected users that have validation items (history = all their
training items, capped; target = their first validation item).

``rank`` is a beam search with ``max(beams, k)`` beams over valid IDs
(:mod:`~recprune.backends.tiger.beam_search`), the users' history items masked at the last ID
level (``exclude_history_in_beam``) so that no beam is spent on items the evaluation drops
anyway, then :func:`~recprune.backends.base.exclude_and_pad`.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recprune.backends.base import (BACKENDS, FitResult, Recommender, check_period, check_rows,
                                    exclude_and_pad, history_for, resumed_fit_seconds,
                                    training_rows)
from recprune.backends.tiger.beam_search import constrained_beam_search
from recprune.backends.tiger.config import RUNTIME_ONLY, TigerConfig
from recprune.backends.tiger.examples import encoder_inputs, history_examples, train_examples
from recprune.backends.tiger.rqvae import semantic_ids
from recprune.backends.tiger.training import CHECKPOINT, Trainer, fit_spec
from recprune.backends.tiger.vocab import EOS, PAD, Vocab
from recprune.data.dataset import InteractionDataset
from recprune.errors import ConfigError, DataError
from recprune.llm.text_encoder import item_embeddings, item_texts, texts_digest
from recprune.store import atomic_dir, save_npy, write_json
from recprune.utils.progress import progress as progress_bar

# T5 attention implementation: with T5's relative position bias (an additive float mask),
# "sdpa" takes its math path plus extra mask copies, so "eager" is faster on CPU
_ATTN = "eager"


@BACKENDS.register("tiger")
class Tiger(Recommender):
    """TIGER: generative retrieval with semantic IDs (Rajput et al., NeurIPS 2023).

    ``Tiger(**options)`` takes :class:`TigerConfig` fields; bad values raise
    :class:`ConfigError`. See the module docstring.
    """

    def __init__(self, **options: Any) -> None:
        try:
            self.config = TigerConfig(**options)
        except TypeError as e:
            known = ", ".join(f.name for f in fields(TigerConfig))
            raise ConfigError(f"tiger: bad options ({e}); known options: {known}") from None
        self.codes: np.ndarray | None = None  # (n_items + 1, n_levels + 1)
        self.sid_stats: dict[str, Any] = {}
        self.vocab: Vocab | None = None
        self.model = None  # transformers.T5ForConditionalGeneration
        self.fitted = False
        self.fit_summary: dict[str, Any] | None = None

    # --------------------------------------------------------------- semantic IDs + model

    def build_ids(self, ds: InteractionDataset, embeddings: np.ndarray | None = None, *,
                  progress: bool = True) -> dict[str, Any]:
        """Compute the semantic IDs of ``ds``'s items (and a fresh seeded T5 for them).

        ``embeddings`` ((n_items + 1, dim), row 0 ignored) replaces the sentence encoder, e.g.
        in tests or with precomputed embeddings. Returns the semantic-ID stats.
        """
        cfg = self.config
        if embeddings is None:
            # the sentence encoder runs on the backend's device; the small RQ-VAE on the CPU
            # (deterministic, and its result is cached anyway)
            embeddings = item_embeddings(ds, encoder=cfg.encoder, cache_dir=cfg.embedding_cache,
                                         use_cache=cfg.use_cache, progress=progress,
                                         device=str(cfg.torch_device()))
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != ds.n_items + 1:
            raise DataError(f"tiger: embeddings must have shape (n_items + 1, dim) = "
                            f"({ds.n_items + 1}, dim), got {emb.shape}")
        t0 = time.perf_counter()
        sid = semantic_ids(emb, cfg.rqvae(), cache_dir=cfg.embedding_cache,
                           use_cache=cfg.use_cache, progress=progress)
        stats = {**sid.stats, "texts_sha": texts_digest(item_texts(ds)),
                 "semantic_id_seconds": time.perf_counter() - t0}
        self._install(sid.codes, stats, model=None)
        return stats

    def _install(self, codes: np.ndarray, stats: dict, model) -> None:
        self.codes = np.asarray(codes, dtype=np.int64)
        self.sid_stats = dict(stats)
        self.vocab = Vocab.build(self.codes, self.config.codebook_size)
        self.sid_stats["vocab_size"] = self.vocab.vocab_size
        self.model = model if model is not None else self._new_model()
        self.fitted = model is not None and self.fitted

    def _new_model(self):
        """A randomly initialised T5, seeded with ``config.seed`` (global RNG left untouched)."""
        from transformers import T5Config, T5ForConditionalGeneration

        c = self.config
        t5 = T5Config(vocab_size=self.vocab.vocab_size, d_model=c.d_model, d_kv=c.d_kv,
                      d_ff=c.d_ff, num_layers=c.num_layers,
                      num_decoder_layers=c.num_decoder_layers, num_heads=c.num_heads,
                      dropout_rate=c.dropout, feed_forward_proj="relu", pad_token_id=PAD,
                      eos_token_id=EOS, decoder_start_token_id=PAD, attn_implementation=_ATTN)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            model = T5ForConditionalGeneration(t5)
        return model.eval()

    def _check_dataset(self, ds: InteractionDataset, progress: bool) -> None:
        """Make sure semantic IDs for ``ds`` exist (computing them on first use)."""
        if self.codes is None:
            self.build_ids(ds, progress=progress)
            return
        if len(self.codes) != ds.n_items + 1:
            raise DataError(f"tiger: the semantic IDs are for {len(self.codes) - 1} items, the "
                            f"dataset has {ds.n_items}", path=ds.source or None)
        want = self.sid_stats.get("texts_sha")
        if want and want != texts_digest(item_texts(ds)):
            raise DataError("tiger: the semantic IDs were built from other item titles than "
                            "this dataset's", path=ds.source or None, field="titles")

    def config_dict(self) -> dict:
        """The options that define the model (runtime-only options such as
        ``checkpoint_minutes`` are left out, so they never invalidate a cached result)."""
        return {k: v for k, v in super().config_dict().items() if k not in RUNTIME_ONLY}

    # --------------------------------------------------------------- fit

    def fit(self, ds: InteractionDataset, rows: np.ndarray, *, out_dir: str | Path | None = None,
            progress: bool = True) -> FitResult:
        """Train the T5 on the selected users (``out_dir``: where the resumable checkpoint
        ``tiger_fit.pt`` lives, see :mod:`~recprune.backends.tiger.training`)."""
        t_start = time.perf_counter()
        cfg = self.config
        selected = check_rows(ds, rows, "selection")
        train_rows = training_rows(ds, selected)
        self._check_dataset(ds, progress)
        device = cfg.torch_device()
        ex = train_examples(ds.train, train_rows, cfg.max_history, cfg.samples)
        vrows = selected[ds.valid.lengths[selected] > 0]
        vex = history_examples(ds.train, vrows, cfg.max_history,
                               ds.valid.items[ds.valid.indptr[vrows]])
        checkpoint = spec = None
        if out_dir is not None:
            checkpoint = Path(out_dir) / CHECKPOINT
            spec = fit_spec(cfg, train_rows, self.codes, self.model)
        trainer = Trainer(self.model, cfg, self.vocab.item_tokens, device, checkpoint, spec)
        flushed = trainer.run(ex, vex, progress)
        self.model = trainer.model
        self.fitted = True
        state = trainer.state
        stats = {"n_examples": int(len(ex)), "n_train_users": int(len(train_rows)),
                 "n_valid_users": int(len(vrows)),
                 "examples_per_s": state["train_examples"] / max(state["train_seconds"], 1e-9),
                 "samples": cfg.samples, "device": str(device), "flush_denormals": flushed,
                 "n_params": int(sum(p.numel() for p in self.model.parameters())),
                 "resumed_from_epoch": trainer.resumed_from,
                 "seconds_this_process": time.perf_counter() - t_start,
                 "semantic_ids": {k: v for k, v in self.sid_stats.items() if k != "texts_sha"}}
        seconds = resumed_fit_seconds(stats["seconds_this_process"], state["history"],
                                      trainer.resumed_from, trainer.partial_seconds)
        res = FitResult(history=copy.deepcopy(state["history"]), best_epoch=state["best_epoch"],
                        seconds=seconds, stats=stats)
        self.fit_summary = {"best_epoch": res.best_epoch, "history": res.history,
                            "n_examples": stats["n_examples"]}
        return res

    # --------------------------------------------------------------- rank

    def rank(self, ds: InteractionDataset, rows: np.ndarray, k: int, *, period: str = "test",
             progress: bool = True) -> np.ndarray:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        check_period(period)
        rows = check_rows(ds, rows)
        self._check_dataset(ds, progress)
        cfg = self.config
        device = cfg.torch_device()
        model = self.model.to(device).eval()
        hist = history_for(ds, period)
        n_beams = max(cfg.beams, int(k))
        out = np.full((len(rows), int(k)), -1, dtype=np.int64)
        width = ds.n_items + 1
        with progress_bar(progress) as prog:
            task = prog.add_task("TIGER rank", total=len(rows), info=f"{n_beams} beams")
            for s in range(0, len(rows), cfg.eval_batch_size):
                r = rows[s:s + cfg.eval_batch_size]
                ex = history_examples(hist, r, cfg.max_history)
                ids, mask = encoder_inputs(ex, np.arange(len(r)), self.vocab.item_tokens)
                banned = None
                if cfg.exclude_history_in_beam:
                    sub = hist.subset(r)
                    keys = np.unique(sub.row_ids() * width + sub.items.astype(np.int64))
                    banned = (torch.from_numpy(keys).to(device), width)
                items, _ = constrained_beam_search(
                    model, self.vocab, torch.from_numpy(ids).to(device),
                    torch.from_numpy(mask).to(device), n_beams, banned)
                out[s:s + len(r)] = exclude_and_pad(items.cpu().numpy(), hist, r, int(k))
                prog.advance(task, len(r))
        return out

    # --------------------------------------------------------------- save / load

    def save(self, path: str | Path) -> None:
        if self.codes is None or self.model is None:
            raise ConfigError("tiger: nothing to save yet (no semantic IDs): fit or rank first")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_npy(path / "codes.npy", self.codes)
        write_json(path / "semantic_ids.json", {"stats": self.sid_stats, "fitted": self.fitted,
                                                "fit": self.fit_summary})
        with atomic_dir(path / "t5") as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
        self._write_manifest(path)

    @classmethod
    def _load(cls, path: Path, *, device: str = "auto") -> Tiger:
        from transformers import T5ForConditionalGeneration

        manifest = json.loads((path / "backend.json").read_text())
        options = dict(manifest.get("config", {}))
        options["device"] = device
        obj = cls(**options)
        for name in ("codes.npy", "semantic_ids.json", "t5/config.json"):
            if not (path / name).is_file():
                raise DataError(f"tiger: incomplete saved model (missing {name})", path=path)
        try:
            codes = np.load(path / "codes.npy")
            meta = json.loads((path / "semantic_ids.json").read_text())
            model = T5ForConditionalGeneration.from_pretrained(str(path / "t5"),
                                                               attn_implementation=_ATTN)
        except (OSError, ValueError) as e:
            raise DataError(f"tiger: cannot read the saved model ({e})", path=path) from None
        obj.fitted = bool(meta.get("fitted", False))
        obj.fit_summary = meta.get("fit")
        obj._install(codes, meta.get("stats", {}), model=model.eval())
        if obj.vocab.vocab_size != model.config.vocab_size:
            raise DataError(f"tiger: the saved T5 has {model.config.vocab_size} tokens, the "
                            f"semantic IDs need {obj.vocab.vocab_size}", path=path)
        return obj
