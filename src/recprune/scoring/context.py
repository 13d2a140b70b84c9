"""What score computations of one selection share: the data, the candidate pool, the (lazily
trained or loaded) surrogate, the LLM, the training records, early-training surrogates, and
the run store their results are kept in."""

from __future__ import annotations

import logging
import time
from functools import cached_property
from typing import Any, Protocol

import numpy as np

from recprune.data import InteractionDataset
from recprune.errors import DataError
from recprune.scoring.difficulty import EL2NConfig, GrandConfig
from recprune.scoring.influence import InfluenceConfig
from recprune.scoring.registry import SCORES
from recprune.scoring.representations import EmbedConfig
from recprune.store import RunStore, digest, fingerprint
from recprune.surrogate import (SurrogateTrainConfig, build_samples, load_surrogate, save_surrogate,
                                train_surrogate)

log = logging.getLogger(__name__)


class ScoringSettings(Protocol):
    """The options scores read (a :class:`recprune.pipeline.SelectConfig` provides them)."""

    seed: int
    surrogate: SurrogateTrainConfig
    surrogate_checkpoint: str | None
    influence: InfluenceConfig
    effort: Any
    effort_cache: str | None
    llm: str | None
    device: str
    grand: GrandConfig
    el2n: EL2NConfig
    embed: EmbedConfig

    @property
    def cutoff_len(self) -> int | None: ...


def surrogate_key(sur) -> dict:
    """What identifies a trained surrogate in score keys: its configuration, the epoch of its
    kept weights and a checksum of those weights. Wall-clock fields of its history are left
    out, so a deterministic retrain reuses the score caches, and any change of the weights
    invalidates them."""
    weights = [t.detach().cpu().numpy() for _, t in sorted(sur.model.state_dict().items())]
    return {"config": sur.config, "best_epoch": sur.best_epoch,
            "weights": digest(*weights)[:16]}


class ScoringContext:
    """Lazily computed, shared inputs of the scores of one pool (see the module docstring)."""

    def __init__(self, cfg: ScoringSettings, ds: InteractionDataset, store: RunStore,
                 rows: np.ndarray, show: bool, timings: dict[str, float]) -> None:
        self.cfg, self.ds, self.store, self.rows, self.show = cfg, ds, store, rows, show
        self.run = store.root
        self.timings = timings
        self.values: dict[str, np.ndarray] = {}
        self.early_models: dict = {}
        self._tokenizer = None

    # -- the surrogate ---------------------------------------------------------------------------

    def _train_or_load_surrogate(self):
        if self.cfg.surrogate_checkpoint:
            return load_surrogate(self.cfg.surrogate_checkpoint, self.ds), False
        path = self.run / "surrogate.pt"
        want = fingerprint({"surrogate": self.cfg.surrogate, "data": self.data_key()})
        if path.exists():
            try:
                res = load_surrogate(path, self.ds)
                if fingerprint({"surrogate": res.config, "data": self.data_key()}) == want:
                    log.info("surrogate: reusing %s", path)
                    return res, False
            except DataError:
                pass
        res = train_surrogate(self.ds, self.cfg.surrogate, show_progress=self.show)
        save_surrogate(path, res, self.ds)
        return res, True

    @cached_property
    def surrogate(self):
        t = time.perf_counter()
        sur, trained = self._train_or_load_surrogate()
        self.timings["surrogate_train" if trained else "surrogate_load"] = time.perf_counter() - t
        return sur

    @cached_property
    def surrogate_key(self) -> dict:
        return surrogate_key(self.surrogate)

    @cached_property
    def surrogate_config(self) -> SurrogateTrainConfig:
        """Architecture / optimiser of the surrogate (of the checkpoint when one is given): the
        early-training surrogates of GraNd / EL2N use it, without training the full one."""
        if self.cfg.surrogate_checkpoint:
            return self.surrogate.config
        return self.cfg.surrogate

    @cached_property
    def samples(self):
        sur = self.surrogate
        return build_samples(self.ds, sur.model.cfg.max_len, include_last=sur.config.include_last)

    # -- the LLM ---------------------------------------------------------------------------------

    @cached_property
    def llm(self):
        from recprune.llm.loading import load_causal_lm

        t = time.perf_counter()
        model, tok = load_causal_lm(self.cfg.llm, device=self.cfg.device)
        self.timings["llm_load"] = time.perf_counter() - t
        self._tokenizer = tok
        return model, tok

    @property
    def tokenizer(self):
        """The LLM tokenizer (only the tokenizer is loaded when the model is not needed)."""
        if self._tokenizer is None:
            from recprune.llm.loading import load_tokenizer

            self._tokenizer = load_tokenizer(self.cfg.llm)
        return self._tokenizer

    @property
    def cutoff(self) -> int | None:
        return self.cfg.cutoff_len

    @cached_property
    def train_records(self) -> list[dict]:
        """The pool's training samples exactly as ``train.jsonl`` writes them."""
        from recprune.llm.prompts import build_records, template_for

        tok = self.tokenizer if self.cutoff is not None else None
        return build_records(self.ds, self.rows, template_for(self.ds.name), tokenizer=tok,
                             cutoff_len=self.cutoff)

    def data_key(self) -> dict:
        return self.ds.fingerprint()

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        from recprune.scoring.text_embed import embed_texts

        e = self.cfg.embed
        return embed_texts(texts, encoder=e.encoder, max_length=e.max_length,
                           batch_size=e.batch_size, truncation_side=e.truncation_side,
                           device=e.device, cache_dir=e.cache_dir, progress=self.show)

    # -- values ----------------------------------------------------------------------------------

    def value(self, name: str) -> np.ndarray:
        """The pool-aligned value of score ``name`` (kept in the run store when it has a key)."""
        if name in self.values:
            return self.values[name]
        spec = SCORES.discover()[name]
        arr = None
        key = spec.key(self) if spec.key is not None else None
        artifact = f"scores/{name}"
        if key is not None:
            arr = self.store.load_array(artifact, key)
            if arr is not None:
                log.info("%s: reusing %s", name, self.store.path(artifact))
        if arr is None:
            t = time.perf_counter()
            arr, meta = spec.compute(self)
            seconds = time.perf_counter() - t
            if key is not None:
                self.store.save_array(artifact, arr, key, seconds=seconds, **meta)
            self.timings[name] = seconds
        if spec.all_users:
            arr = arr[self.rows]
        self.values[name] = arr
        return arr
