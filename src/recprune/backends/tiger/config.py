"""TIGER's options (:class:`TigerConfig`) and the device they name."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from recprune.backends.tiger.rqvae import RQVAEConfig
from recprune.errors import ConfigError

# options that do not change what fit computes (left out of the fit checkpoint's spec)
EVAL_ONLY = ("beams", "eval_batch_size", "exclude_history_in_beam", "device")
# options that change neither the trained model nor the ranking (left out of every cache key)
RUNTIME_ONLY = ("checkpoint_minutes",)


@dataclass
class TigerConfig:
    """TIGER options (``BACKENDS.create("tiger", **options)``).

    Semantic IDs: ``encoder`` (None = packaged all-MiniLM-L6-v2, else a local Hugging Face model
    directory), ``embedding_cache`` (directory for the embedding / semantic-ID caches; None =
    ``<recprune cache>/embeddings``), ``use_cache``, and the RQ-VAE's ``codebook_size``,
    ``n_levels``, ``code_dim``, ``rqvae_hidden``, ``rqvae_epochs``, ``rqvae_batch_size``,
    ``rqvae_lr``, ``rqvae_beta``.

    Model: the TIGER paper's small T5 (d_model 128, 4 + 4 layers, 6 heads of 64, d_ff 1024,
    dropout 0.1); ``max_history`` items of history.

    Training: ``samples`` ("all" next-item positions or "last"), ``epochs`` (max), ``batch_size``,
    ``lr`` (AdamW), ``weight_decay``, ``warmup_steps`` (linear warm-up, then constant),
    ``grad_clip`` (max gradient norm, 0 = off), ``checkpoint_minutes`` (mid-epoch checkpoint
    interval with ``out_dir``; 0 = only after each epoch; not part of any cache key),
    ``patience`` (epochs without a better validation loss before stopping), ``seed``,
    ``device`` ("auto" = cuda if available else cpu).

    Ranking: ``beams`` (at least ``k`` are used), ``eval_batch_size`` (users per beam search),
    ``exclude_history_in_beam``.
    """

    encoder: str | None = None
    embedding_cache: str | None = None
    use_cache: bool = True
    codebook_size: int = 256
    n_levels: int = 3
    code_dim: int = 32
    rqvae_hidden: tuple[int, ...] = (256, 128)
    rqvae_epochs: int = 50
    rqvae_batch_size: int = 1024
    rqvae_lr: float = 3e-3
    rqvae_beta: float = 0.25
    max_history: int = 20
    d_model: int = 128
    num_layers: int = 4
    num_decoder_layers: int = 4
    num_heads: int = 6
    d_kv: int = 64
    d_ff: int = 1024
    dropout: float = 0.1
    samples: str = "all"
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    patience: int = 3
    seed: int = 0
    device: str = "auto"
    checkpoint_minutes: float = 10.0
    beams: int = 50
    eval_batch_size: int = 64
    exclude_history_in_beam: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.rqvae_hidden, (list, tuple)):
            self.rqvae_hidden = tuple(self.rqvae_hidden)
        self.validate()

    def validate(self) -> None:
        positive = ("codebook_size", "n_levels", "code_dim", "rqvae_epochs", "rqvae_batch_size",
                    "max_history", "d_model", "num_layers", "num_decoder_layers", "num_heads",
                    "d_kv", "d_ff", "epochs", "batch_size", "patience", "beams",
                    "eval_batch_size")
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"tiger: {name} must be a positive integer, got {v!r}")
        for name in ("warmup_steps", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ConfigError(f"tiger: {name} must be a non-negative integer, got {v!r}")
        for name, lo_open in (("lr", True), ("rqvae_lr", True), ("weight_decay", False),
                              ("rqvae_beta", False), ("grad_clip", False),
                              ("checkpoint_minutes", False)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0 or (lo_open and v == 0):
                raise ConfigError(f"tiger: {name} must be {'> 0' if lo_open else '>= 0'}, "
                                  f"got {v!r}")
        if self.codebook_size < 2:
            raise ConfigError(f"tiger: codebook_size must be >= 2, got {self.codebook_size}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"tiger: dropout must be in [0, 1), got {self.dropout!r}")
        if self.samples not in ("all", "last"):
            raise ConfigError(f"tiger: samples must be 'all' or 'last', got {self.samples!r}")
        if not isinstance(self.rqvae_hidden, tuple) or not all(
                isinstance(h, (int, np.integer)) and not isinstance(h, bool) and h >= 1
                for h in self.rqvae_hidden):
            raise ConfigError(f"tiger: rqvae_hidden must be a list of positive integers, got "
                              f"{self.rqvae_hidden!r}")
        if not isinstance(self.device, str):
            raise ConfigError(f"tiger: device must be a string, got {self.device!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ConfigError(f"tiger: invalid device {self.device!r}") from None
        for name in ("encoder", "embedding_cache"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, (str, os.PathLike)):
                raise ConfigError(f"tiger: {name} must be a path string or None, got {v!r}")
        for name in ("use_cache", "exclude_history_in_beam"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"tiger: {name} must be true or false")

    def rqvae(self) -> RQVAEConfig:
        return RQVAEConfig(codebook_size=self.codebook_size, n_levels=self.n_levels,
                           code_dim=self.code_dim, hidden=self.rqvae_hidden,
                           epochs=self.rqvae_epochs, batch_size=self.rqvae_batch_size,
                           lr=self.rqvae_lr, beta=self.rqvae_beta, seed=self.seed)

    def torch_device(self) -> torch.device:
        """The device to run on (``"auto"``: cuda when available, else cpu)."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(self.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"tiger: device {self.device!r} requested but CUDA is not available")
        return dev
