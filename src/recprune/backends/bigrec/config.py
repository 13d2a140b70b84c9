"""The options of the BIGRec backend (:class:`BigRecConfig`), validated when it is made."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from recprune.errors import ConfigError
from recprune.llm.prompts import PromptTemplate

EMBED_TEXT_MODES = ("plain", "quoted")
#: options that change neither the trained adapter nor the ranking (kept out of cache keys)
RUNTIME_ONLY = ("checkpoint_minutes",)
#: options that change the ranking but not the trained adapter (``model`` is checked through
#: the base model's fingerprint instead)
_NOT_TRAINING = ("model", "device", "patience", "num_beams", "max_new_tokens",
                 "eval_batch_size", "embed_batch_size", "embed_text", "embedding_cache_dir")


@dataclass
class BigRecConfig:
    """Options of the BIGRec backend (``BigRec(**options)``; see :mod:`recprune.backends.bigrec`).

    Attributes
    ----------
    model:
        ``None`` / ``"smollm2"`` (SmolLM2-135M-Instruct), a local Hugging Face model directory or
        a ``.gguf`` file (:func:`recprune.llm.load_causal_lm`).
    device:
        ``"auto"`` (CUDA if available) or a torch device.
    r, alpha, dropout, target_modules:
        LoRA (reference: 8, 16, 0.05, q_proj + v_proj).
    lr, weight_decay, warmup_steps, max_grad_norm:
        AdamW on the LoRA parameters; linear warm-up over ``warmup_steps`` optimizer steps (at
        most a tenth of all steps), then linear decay to 0 at the end of ``epochs``;
        gradient-norm clipping (``None``: off).
    epochs, batch_size, micro_batch_size, max_micro_tokens:
        At most ``epochs`` passes; ``batch_size`` samples per optimizer step, run in micro-batches
        of at most ``micro_batch_size`` samples and ``max_micro_tokens`` (padded) tokens.
    patience:
        Stop after this many epochs without a lower validation loss (``None``: never stop
        early; the best epoch is kept either way). Without validation samples the last epoch is
        kept.
    cutoff_len:
        Token limit of a prompt (+ response + eos when training); the oldest history titles
        are dropped until it fits.
    train_on_inputs:
        Loss on every token (reference) instead of the response only (default).
    num_beams, max_new_tokens:
        Beam search width (1 = greedy) and length limit of the generated title.
    eval_batch_size, embed_batch_size:
        Prompts per generation batch; texts per embedding batch (speed only).
    embed_text:
        ``"plain"`` (reference): embed the title / the generated text without quotes;
        ``"quoted"``: with the quotes the response carries.
    share_prefix:
        Compute the prompt prefix shared by all samples once per batch (training, validation
        and generation); ``False`` runs every full prompt (same results, slower; for checks).
    embedding_cache_dir:
        Directory of the item-embedding cache (``None``: ``<recprune cache>/embeddings``, i.e.
        ``$RECPRUNE_CACHE/embeddings`` or ``~/.cache/recprune/embeddings``; ``"off"``: no disk
        cache).
    seed:
        LoRA initialisation, batch order and dropout.
    template:
        A :class:`~recprune.llm.prompts.PromptTemplate` (or its fields as a dict); ``None``:
        :func:`~recprune.llm.prompts.template_for` the data set name.
    checkpoint_minutes:
        With ``out_dir``, also checkpoint inside an epoch at this interval (adapter, optimiser,
        scheduler, RNG, steps done; 0 = only after each epoch). Runtime only: not part of the
        model's configuration or of any cache key.
    """

    model: str | None = None
    device: str = "auto"
    r: int = 8
    alpha: float = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 8
    max_grad_norm: float | None = 1.0
    epochs: int = 3
    batch_size: int = 16
    micro_batch_size: int = 8
    max_micro_tokens: int = 2048
    patience: int | None = 1
    cutoff_len: int = 512
    train_on_inputs: bool = False
    num_beams: int = 4
    max_new_tokens: int = 64
    eval_batch_size: int = 8
    embed_batch_size: int = 32
    embed_text: str = "plain"
    share_prefix: bool = True
    embedding_cache_dir: str | None = None
    seed: int = 0
    template: PromptTemplate | None = None
    checkpoint_minutes: float = 10.0

    def __post_init__(self) -> None:
        if self.model is not None:
            self.model = str(self.model)
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        try:
            self.target_modules = tuple(str(m) for m in self.target_modules)
        except TypeError:
            raise ConfigError("bigrec: target_modules must be a list of module names") from None
        if not self.target_modules:
            raise ConfigError("bigrec: target_modules is empty")
        if isinstance(self.template, dict):
            try:
                self.template = PromptTemplate(**self.template)
            except TypeError as e:
                raise ConfigError(f"bigrec: bad template fields: {e}") from None
        elif self.template is not None and not isinstance(self.template, PromptTemplate):
            raise ConfigError("bigrec: template must be a PromptTemplate, a dict of its fields "
                              "or None")

        def integer(name: str, lo: int, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ConfigError(f"bigrec: {name} must be an integer >= {lo}, got {v!r}")
            setattr(self, name, int(v))

        def number(name: str, lo: float, lo_open: bool, hi: float | None = None,
                   allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            ok = ok and math.isfinite(float(v)) and (v > lo if lo_open else v >= lo)
            ok = ok and (hi is None or v < hi)
            if not ok:
                rng = f"{'>' if lo_open else '>='} {lo}" + (f" and < {hi}" if hi else "")
                raise ConfigError(f"bigrec: {name} must be a finite number {rng}, got {v!r}")
            setattr(self, name, float(v))

        integer("r", 1)
        number("alpha", 0.0, True)
        number("dropout", 0.0, False, 1.0)
        number("lr", 0.0, True)
        number("weight_decay", 0.0, False)
        integer("warmup_steps", 0)
        number("max_grad_norm", 0.0, True, allow_none=True)
        integer("epochs", 1)
        integer("batch_size", 1)
        integer("micro_batch_size", 1)
        integer("max_micro_tokens", 1)
        integer("patience", 1, allow_none=True)
        integer("cutoff_len", 16)
        integer("num_beams", 1)
        integer("max_new_tokens", 1)
        integer("eval_batch_size", 1)
        integer("embed_batch_size", 1)
        integer("seed", 0)
        number("checkpoint_minutes", 0.0, False)
        if self.embed_text not in EMBED_TEXT_MODES:
            raise ConfigError(f"bigrec: embed_text must be one of {EMBED_TEXT_MODES}, got "
                              f"{self.embed_text!r}")
        for name in ("train_on_inputs", "share_prefix"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ConfigError(f"bigrec: {name} must be true or false, got "
                                  f"{getattr(self, name)!r}")
            setattr(self, name, bool(getattr(self, name)))
        if not isinstance(self.device, str):
            self.device = str(self.device)

    @property
    def loss_on(self) -> str:
        return "all" if self.train_on_inputs else "response"


    def training_options(self) -> dict[str, Any]:
        """The options a trained adapter depends on (what a fit checkpoint must agree on)."""
        return {k: v for k, v in asdict(self).items()
                if k not in _NOT_TRAINING and k not in RUNTIME_ONLY}
