"""Options of the effort score (:class:`EffortConfig`), validated when it is made."""

from __future__ import annotations

import math
from dataclasses import dataclass

from recprune.errors import ConfigError
from recprune.llm.prompts import PromptTemplate

PREFIX_MODES = ("exact", "fixed", "none")


@dataclass(frozen=True)
class EffortConfig:
    """Options of the effort score.

    Attributes
    ----------
    lora_layers:
        ``"all"`` (paper, default), ``"last"`` (authors' release) or a sequence of layer indices
        (negative indices count from the end).
    lora_r, lora_alpha, target_modules:
        LoRA shape (paper / BIGRec: r=8, alpha=16, q_proj and v_proj). Dropout is always 0.
    seed:
        Seed of the LoRA initialisation.
    init_lora_b_std:
        0 (default): ``lora_B`` zero as peft initialises it; > 0: normal(0, std) ``lora_B``.
    loss_on:
        ``"response"`` (default: the target title + eos) or ``"all"`` (every token).
    prefix:
        How the prompt prefix shared by all samples is treated (see
        :mod:`recprune.scoring.effort`):
        ``"exact"`` (default): only what does not depend on the scored LoRA parameters is
        computed once (the prefix below the lowest scored layer), the scores are the exact
        full-prompt ones; ``"fixed"``: the whole prefix is computed once and is constant
        context (fastest, an approximation: the LoRA gradient at prefix positions is dropped);
        ``"none"``: no sharing, every sample runs its full prompt (exact, slowest).
    share_prefix:
        Deprecated alias of ``prefix``: ``None`` (default) uses ``prefix``;
        ``True`` keeps ``prefix`` ("exact" or "fixed"; "none" is a conflict); ``False`` means
        ``prefix="none"`` ("fixed" is a conflict). It is normalised to ``None``.
    cutoff_len, add_eos, template:
        Prompt construction (``template=None``: chosen from the data set name, Games wording
        by default).
    max_batch_tokens:
        Token budget of a batch (tokens incl. padding and, with ``prefix="exact"``, the
        per-sample prefix copies averaged over the layers they run in); ``None``: 1024 on CPU,
        8192 on CUDA.
        Affects speed only, not the scores (beyond float rounding).
    packing:
        Pack a batch's samples into one row without any padding (attention computed per sample
        against the shared prefix + its own tokens) instead of right-padding them to a
        rectangle; ``None``: packing on CPU (no wasted tokens), padding on CUDA (one fused
        attention call per layer). Speed only.
    chunk_size:
        Samples per on-disk cache chunk.
    """

    lora_layers: str | tuple[int, ...] = "all"
    lora_r: int = 8
    lora_alpha: float = 16
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    seed: int = 0
    init_lora_b_std: float = 0.0
    loss_on: str = "response"
    prefix: str = "exact"
    share_prefix: bool | None = None
    cutoff_len: int = 512
    add_eos: bool = True
    template: PromptTemplate | None = None
    max_batch_tokens: int | None = None
    packing: bool | None = None
    chunk_size: int = 1024

    def __post_init__(self) -> None:
        ll = self.lora_layers
        if isinstance(ll, str):
            if ll not in ("all", "last"):
                raise ConfigError(f"lora_layers must be 'all', 'last' or a list of layer indices, "
                                  f"got {ll!r}")
        else:
            try:
                ll = tuple(int(i) for i in ll)
            except (TypeError, ValueError):
                raise ConfigError(f"lora_layers must be 'all', 'last' or a list of layer "
                                  f"indices, got {self.lora_layers!r}") from None
            if not ll:
                raise ConfigError("lora_layers is an empty list")
            object.__setattr__(self, "lora_layers", ll)
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.loss_on not in ("response", "all"):
            raise ConfigError(f"loss_on must be 'response' or 'all', got {self.loss_on!r}")
        if self.prefix not in PREFIX_MODES:
            raise ConfigError(f"prefix must be one of {', '.join(map(repr, PREFIX_MODES))}, "
                              f"got {self.prefix!r}")
        if self.share_prefix is not None:  # deprecated alias
            mode = self.prefix
            if not self.share_prefix:
                if mode == "fixed":
                    raise ConfigError("share_prefix=False conflicts with prefix='fixed'")
                mode = "none"
            elif mode == "none":
                raise ConfigError("share_prefix=True conflicts with prefix='none'")
            object.__setattr__(self, "prefix", mode)
            object.__setattr__(self, "share_prefix", None)
        if self.lora_r < 1 or self.lora_alpha <= 0:
            raise ConfigError("lora_r must be >= 1 and lora_alpha > 0")
        if not (self.init_lora_b_std >= 0 and math.isfinite(self.init_lora_b_std)):
            raise ConfigError("init_lora_b_std must be a finite number >= 0")
        if self.cutoff_len < 8:
            raise ConfigError(f"cutoff_len must be >= 8, got {self.cutoff_len}")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise ConfigError("max_batch_tokens must be positive")
        if self.chunk_size < 1:
            raise ConfigError("chunk_size must be positive")
