"""TIGER: generative retrieval with semantic IDs (Rajput et al., NeurIPS 2023).

Items are represented by short tuples of discrete codes (*semantic IDs*, see
:mod:`recprune.backends.semantic_ids`): ``n_levels`` RQ-VAE codes of the item's title embedding
plus one disambiguation token. A small T5 encoder-decoder, trained from scratch, reads a user's
history as ID tokens and generates the next item's ID token by token; ranking is the order of a
beam search restricted to valid IDs.

Tokens
------
``0`` = pad (also T5's decoder start token), ``1`` = eos, then one distinct token per (level,
code): level ``l`` code ``c`` is token ``offsets[l] + c`` with ``offsets[0] = 2`` and level sizes
``codebook_size`` for the RQ-VAE levels and ``max_collisions`` for the disambiguation level. A
history is the last ``max_history`` items (oldest first) as their ID tokens, followed by eos (so
an empty history is still a non-empty input); right-padded per batch. The target is the next
item's ``n_levels + 1`` tokens + eos (always the same length: no label padding).

Training (:meth:`Tiger.fit`)
---------------------------
Semantic IDs come first (from item text only; computed once and cached, or kept from a loaded
model). Examples come from the selected users' *training* sequences: by default (``samples=
"all"``) every next-item position, i.e. for train items ``i_1..i_n`` the examples
``(i_1..i_{t-1}) -> i_t`` for ``t = 2..n`` with the history capped to the last ``max_history``
items, which is how TIGER is trained; ``samples="last"`` keeps only the DEALRec / BIGRec sample
``items[:-1] -> items[-1]``. The example arrays are built with numpy from the CSR sequences (no
per-example Python); batches group examples of similar history length (sorted inside shuffled
chunks of 50 batches) and are padded to their own longest history. Full fine-tuning of the whole
T5 with AdamW, linear warm-up then a constant learning rate, gradient clipping. Validation: the
selected users that have validation items (history = all their training items, capped; target =
their first validation item); the teacher-forced validation loss is computed after each epoch,
training stops after ``patience`` epochs without improvement and the best epoch's weights are
restored (without validation users, every epoch runs and the last is kept).

``fit`` trains the T5 the backend holds: a fresh, seeded random initialisation for a new backend;
the loaded / previously fitted weights otherwise (i.e. a second ``fit`` continues fine-tuning).

Resuming: with ``out_dir``, a checkpoint ``out_dir/tiger_fit.pt`` (model, optimiser, scheduler,
best weights, RNG states, history) is written atomically after every epoch, and within an epoch
every ``checkpoint_minutes`` (with the epoch's starting RNG state and the number of batches
done, so a long full-data epoch loses at most that much work). A later ``fit`` with the same
``out_dir``, training options, selection, semantic IDs and starting weights (a fresh backend with
the same seed starts from the same weights) resumes after the last checkpoint, bit-for-bit as if
uninterrupted on CPU (and returns at once when that run had finished); a
checkpoint of a *different* fit is refused with a :class:`ConfigError` (remove it or choose
another directory). The checkpoint is left in place after a finished fit.

Ranking (:meth:`Tiger.rank`)
----------------------------
Beam search with ``max(beams, k)`` beams, constrained to valid IDs by a dense prefix trie: one
table per level mapping (prefix id, code) to the child prefix id (or, at the last level, to the
item id; ``-1`` = no such ID). The allowed-token lookup is therefore a single tensor gather for
all users and beams at once, and the decoder can never emit an ID that is not an item. History
items are masked at the last level (``exclude_history_in_beam``) so that no beam is spent on
items the evaluation would drop anyway; the ranking is the beam order (sequence
log-probability), then :func:`~recprune.backends.base.exclude_and_pad`.

The decoder steps run on the T5's own modules with a custom cache: cross-attention keys/values
are computed once per *user* (not per beam) and all beams of a user attend to them as extra query
rows, self-attention keys/values are cached and reordered by beam parent. This is ~50x less
cross-attention work than expanding the encoder output per beam (what ``generate`` does); a test
checks that the step logits equal the plain T5 forward.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recprune.backends.base import (BACKENDS, FitResult, Recommender, check_period, check_rows,
                                    exclude_and_pad, history_for, resumed_fit_seconds,
                                    training_rows)
from recprune.backends.semantic_ids import (RQVAEConfig, item_embeddings, item_texts,
                                            semantic_ids, texts_digest)
from recprune.data.dataset import InteractionDataset, Sequences
from recprune.errors import ConfigError, DataError, RecpruneError, ScoringError
from recprune.utils.cpu import flush_denormals
from recprune.store import atomic_path, save_npy, write_json
from recprune.utils.progress import progress as progress_bar
from recprune.utils.seed import seed_everything

log = logging.getLogger(__name__)

PAD, EOS = 0, 1
FIRST_CODE_TOKEN = 2
CHECKPOINT = "tiger_fit.pt"
_CKPT_FORMAT = 1
# options that do not change what fit computes (excluded from the resume fingerprint)
_EVAL_ONLY = ("beams", "eval_batch_size", "exclude_history_in_beam", "device")
# options that change neither the trained model nor the ranking (not part of any cache key)
_RUNTIME_ONLY = ("checkpoint_minutes",)
# T5 attention implementation: with T5's relative position bias (an additive float mask) "sdpa"
# takes its math path plus extra mask copies; "eager" trained 10-40% faster on CPU (paired runs).
_ATTN = "eager"


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
    interval with ``out_dir``; 0 = only after each epoch; not part of any cache key), ``patience``
    (epochs without a better validation
    loss before stopping), ``seed``, ``device`` ("auto" = cuda if available else cpu).

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


# ----------------------------------------------------------------------------- ID vocabulary

@dataclass
class _Vocab:
    """Token layout of the semantic IDs and the constrained-decoding trie."""

    sizes: tuple[int, ...]  # tokens per ID level (RQ-VAE levels, then the disambiguation level)
    offsets: tuple[int, ...]  # first token of each level
    vocab_size: int
    item_tokens: np.ndarray  # (n_items + 1, n_pos) int64 tokens of each item; row 0 = PAD
    children: list[torch.Tensor]  # per level: (n_prefixes, size) -> child prefix / item, -1 none
    _on_device: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_pos(self) -> int:
        return len(self.sizes)

    def children_on(self, device: torch.device) -> list[torch.Tensor]:
        """The trie tables on ``device`` (copied once per device)."""
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = [c.to(device) for c in self.children]
        return self._on_device[key]

    @classmethod
    def build(cls, codes: np.ndarray, codebook_size: int) -> _Vocab:
        codes = np.asarray(codes, dtype=np.int64)
        n_items, n_pos = len(codes) - 1, codes.shape[1]
        c = codes[1:]
        sizes = tuple([int(codebook_size)] * (n_pos - 1) + [int(c[:, -1].max()) + 1])
        if (c[:, :-1] >= codebook_size).any() or (c < 0).any():
            raise DataError("semantic ID codes out of range of the codebook")
        offsets = tuple(int(x) for x in FIRST_CODE_TOKEN + np.concatenate(
            ([0], np.cumsum(sizes)[:-1])))
        item_tokens = np.zeros((n_items + 1, n_pos), dtype=np.int64)
        item_tokens[1:] = c + np.asarray(offsets)[None, :]
        # dense trie, built level by level with np.unique over integer prefix keys
        children: list[torch.Tensor] = []
        pid = np.zeros(n_items, dtype=np.int64)
        n_prefix = 1
        for lvl in range(n_pos):
            table = np.full((n_prefix, sizes[lvl]), -1, dtype=np.int64)
            if lvl < n_pos - 1:
                uniq, new_pid = np.unique(pid * sizes[lvl] + c[:, lvl], return_inverse=True)
                table[pid, c[:, lvl]] = new_pid
                pid, n_prefix = new_pid.reshape(-1), len(uniq)
            else:
                if len(np.unique(pid * sizes[lvl] + c[:, lvl])) != n_items:
                    raise DataError("semantic IDs are not unique")
                table[pid, c[:, lvl]] = np.arange(1, n_items + 1)
            dtype = torch.int32 if table.max(initial=0) < 2**31 - 1 else torch.int64
            children.append(torch.from_numpy(table).to(dtype))
        return cls(sizes, offsets, FIRST_CODE_TOKEN + int(sum(sizes)), item_tokens, children)


# ----------------------------------------------------------------------------- examples

@dataclass
class _Examples:
    """Histories as slices ``items[end - hist_len:end]`` of a flat item array, plus targets."""

    items: np.ndarray
    end: np.ndarray
    hist_len: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return len(self.end)


def _train_examples(train: Sequences, rows: np.ndarray, max_history: int,
                    samples: str) -> _Examples:
    """Next-item examples of the rows' sequences, vectorised over all positions."""
    sub = train.subset(rows)
    lengths = sub.lengths
    if samples == "all":
        cnt = np.clip(lengths - 1, 0, None)
        n = int(cnt.sum())
        first = np.repeat(np.cumsum(cnt) - cnt, cnt)
        t = np.arange(n, dtype=np.int64) - first + 1  # target position inside its sequence
        tgt = np.repeat(sub.indptr[:-1], cnt) + t
    else:
        ok = lengths >= 2
        tgt = sub.indptr[1:][ok] - 1
        t = lengths[ok] - 1
    items = sub.items.astype(np.int64)
    return _Examples(items, tgt, np.minimum(t, max_history), items[tgt])


def _history_examples(hist: Sequences, rows: np.ndarray, max_history: int,
                      target: np.ndarray | None = None) -> _Examples:
    """One example per row: its whole (capped) history; ``target`` optional."""
    sub = hist.subset(rows)
    items = sub.items.astype(np.int64)
    tgt = np.zeros(len(rows), np.int64) if target is None else np.asarray(target, np.int64)
    return _Examples(items, sub.indptr[1:].copy(), np.minimum(sub.lengths, max_history), tgt)


def _encoder_inputs(ex: _Examples, idx: np.ndarray,
                    item_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask)`` of examples ``idx``, padded to the batch's longest."""
    n_pos = item_tokens.shape[1]
    hl = ex.hist_len[idx]
    m = int(hl.max(initial=0))
    col = np.arange(m)
    valid = col[None, :] < hl[:, None]
    pos = ex.end[idx, None] - hl[:, None] + col[None, :]
    it = np.where(valid, ex.items[np.where(valid, pos, 0)] if len(ex.items) else 0, 0)
    width = m * n_pos + 1
    ids = np.zeros((len(idx), width), dtype=np.int64)
    ids[:, :m * n_pos] = item_tokens[it].reshape(len(idx), m * n_pos)
    ids[np.arange(len(idx)), hl * n_pos] = EOS
    mask = np.arange(width)[None, :] <= (hl * n_pos)[:, None]
    return ids, mask


def _labels(ex: _Examples, idx: np.ndarray, item_tokens: np.ndarray) -> np.ndarray:
    tok = item_tokens[ex.target[idx]]
    return np.concatenate([tok, np.full((len(idx), 1), EOS, dtype=np.int64)], 1)


def _bucketed_batches(hist_len: np.ndarray, batch_size: int,
                      rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar history length: shuffle, sort by length inside chunks of
    50 batches, cut, shuffle the batch order."""
    n = len(hist_len)
    perm = rng.permutation(n)
    chunk = np.arange(n) // (batch_size * 50)
    order = perm[np.lexsort((hist_len[perm], chunk))]
    batches = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    return [batches[j] for j in rng.permutation(len(batches))]


# ----------------------------------------------------------------------------- decoding

class _StepDecoder:
    """Incremental T5 decoding with beams as extra query rows (see the module docstring).

    ``step(tokens, parent)`` feeds the newest token of every beam (``tokens`` (B, R)) whose
    previous beam was ``parent`` (B, R) (``None`` at the first step) and returns the logits
    (B, R, vocab) of the next token.
    """

    def __init__(self, model, enc_hidden: torch.Tensor, enc_mask: torch.Tensor) -> None:
        self.model = model
        self.dec = model.decoder
        cfg = model.config
        self.h, self.dk = cfg.num_heads, cfg.d_kv
        b, n_enc, _ = enc_hidden.shape
        self.cross_k, self.cross_v = [], []
        for blk in self.dec.block:
            att = blk.layer[1].EncDecAttention
            self.cross_k.append(att.k(enc_hidden).view(b, n_enc, self.h, self.dk).transpose(1, 2))
            self.cross_v.append(att.v(enc_hidden).view(b, n_enc, self.h, self.dk).transpose(1, 2))
        neg = torch.finfo(enc_hidden.dtype).min
        self.cross_bias = torch.zeros(enc_mask.shape, dtype=enc_hidden.dtype,
                                      device=enc_hidden.device).masked_fill(~enc_mask.bool(),
                                                                            neg)[:, None, None, :]
        self.self_k: list[torch.Tensor | None] = [None] * len(self.dec.block)
        self.self_v: list[torch.Tensor | None] = [None] * len(self.dec.block)
        self.t = 0
        # T5ForConditionalGeneration rescales the decoder output before a tied lm_head
        # (transformers 5: config.scale_decoder_outputs; 4.x: config.tie_word_embeddings)
        scaled = getattr(cfg, "scale_decoder_outputs", getattr(cfg, "tie_word_embeddings", False))
        self.scale = cfg.d_model ** -0.5 if scaled else None

    def step(self, tokens: torch.Tensor, parent: torch.Tensor | None) -> torch.Tensor:
        b, r = tokens.shape
        h, dk = self.h, self.dk
        if parent is not None and self.t > 0:
            bi = torch.arange(b, device=tokens.device)[:, None]
            self.self_k = [k[bi, parent] for k in self.self_k]
            self.self_v = [v[bi, parent] for v in self.self_v]
        x = self.dec.embed_tokens(tokens)
        # decoder relative position bias of query position t over key positions 0..t
        att0 = self.dec.block[0].layer[0].SelfAttention
        rel = torch.arange(self.t + 1, device=x.device) - self.t
        bucket = att0._relative_position_bucket(
            rel, bidirectional=False, num_buckets=att0.relative_attention_num_buckets,
            max_distance=att0.relative_attention_max_distance)
        bias = att0.relative_attention_bias(bucket).T  # (H, t + 1)
        for i, blk in enumerate(self.dec.block):
            sa = blk.layer[0]
            y = sa.layer_norm(x)
            att = sa.SelfAttention
            q = att.q(y).view(b, r, h, dk)
            k = att.k(y).view(b, r, h, 1, dk)
            v = att.v(y).view(b, r, h, 1, dk)
            k = k if self.self_k[i] is None else torch.cat([self.self_k[i], k], 3)
            v = v if self.self_v[i] is None else torch.cat([self.self_v[i], v], 3)
            self.self_k[i], self.self_v[i] = k, v
            s = torch.einsum("brhd,brhtd->brht", q, k) + bias
            o = torch.einsum("brht,brhtd->brhd", s.softmax(-1), v).reshape(b, r, h * dk)
            x = x + att.o(o)
            ca = blk.layer[1]
            y = ca.layer_norm(x)
            att = ca.EncDecAttention
            q = att.q(y).view(b, r, h, dk).transpose(1, 2)  # (B, H, R, dk)
            s = q @ self.cross_k[i].transpose(-1, -2) + self.cross_bias
            o = (s.softmax(-1) @ self.cross_v[i]).transpose(1, 2).reshape(b, r, h * dk)
            x = x + att.o(o)
            x = blk.layer[2](x)
        x = self.dec.final_layer_norm(x)
        if self.scale is not None:
            x = x * self.scale
        self.t += 1
        return self.model.lm_head(x)


@torch.no_grad()
def constrained_beam_search(model, vocab: _Vocab, input_ids: torch.Tensor,
                            attention_mask: torch.Tensor, n_beams: int,
                            banned: tuple[torch.Tensor, int] | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``n_beams`` valid item IDs per input, best first: ``(items, log_probs)`` (B, n_beams).

    ``items`` holds item ids (``-1`` where fewer valid IDs exist); ``banned`` = (sorted keys
    ``row * width + item``, width) of items that may not be generated for a row.
    """
    device = input_ids.device
    enc = model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    dec = _StepDecoder(model, enc, attention_mask)
    b = input_ids.shape[0]
    tokens = torch.full((b, 1), PAD, dtype=torch.long, device=device)
    scores = torch.zeros((b, 1), device=device)
    pid = torch.zeros((b, 1), dtype=torch.long, device=device)
    parent = None
    rows = torch.arange(b, device=device)[:, None, None]
    children = vocab.children_on(device)
    for lvl in range(vocab.n_pos):
        logits = dec.step(tokens, parent)
        off, size = vocab.offsets[lvl], vocab.sizes[lvl]
        logp = torch.log_softmax(logits.float(), -1)[..., off:off + size]  # (B, R, S)
        child = children[lvl][pid.clamp(min=0)].long()  # (B, R, S)
        cand = (scores[..., None] + logp).masked_fill(child < 0, -math.inf)
        if lvl == vocab.n_pos - 1 and banned is not None and len(banned[0]):
            keys, width = banned
            q = rows * width + child.clamp(min=0)
            pos = torch.searchsorted(keys, q.reshape(-1)).clamp(max=len(keys) - 1)
            hit = (keys[pos] == q.reshape(-1)).view_as(q) & (child >= 0)
            cand = cand.masked_fill(hit, -math.inf)
        flat = cand.reshape(b, -1)
        nb = min(n_beams, flat.shape[1])
        scores, top = flat.topk(nb, dim=1)
        parent = torch.div(top, size, rounding_mode="floor")
        tokens = top % size + off
        pid = child.reshape(b, -1).gather(1, top)
    items = torch.where(torch.isfinite(scores), pid, torch.full_like(pid, -1))
    if items.shape[1] < n_beams:
        pad = n_beams - items.shape[1]
        items = torch.nn.functional.pad(items, (0, pad), value=-1)
        scores = torch.nn.functional.pad(scores, (0, pad), value=-math.inf)
    return items, scores


# ----------------------------------------------------------------------------- the backend

def _sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"tiger: device {device!r} requested but CUDA is not available")
    return dev


@BACKENDS.register("tiger")
class Tiger(Recommender):
    """TIGER backend (see the module docstring). ``Tiger(**options)`` takes
    :class:`TigerConfig` fields; bad values raise :class:`ConfigError`."""

    def __init__(self, **options: Any) -> None:
        try:
            self.config = TigerConfig(**options)
        except TypeError as e:
            known = ", ".join(f.name for f in fields(TigerConfig))
            raise ConfigError(f"tiger: bad options ({e}); known options: {known}") from None
        self.codes: np.ndarray | None = None  # (n_items + 1, n_levels + 1)
        self.sid_stats: dict[str, Any] = {}
        self.vocab: _Vocab | None = None
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
        texts = item_texts(ds)
        if embeddings is None:
            # the sentence encoder runs on the backend's device; the small RQ-VAE on the CPU
            # (deterministic, and its result is cached anyway)
            embeddings = item_embeddings(ds, encoder=cfg.encoder, cache_dir=cfg.embedding_cache,
                                         use_cache=cfg.use_cache, progress=progress,
                                         device=str(_resolve_device(cfg.device)))
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != ds.n_items + 1:
            raise DataError(f"tiger: embeddings must have shape (n_items + 1, dim) = "
                            f"({ds.n_items + 1}, dim), got {emb.shape}")
        t0 = time.perf_counter()
        sid = semantic_ids(emb, cfg.rqvae(), cache_dir=cfg.embedding_cache,
                           use_cache=cfg.use_cache, progress=progress)
        stats = {**sid.stats, "texts_sha": texts_digest(texts),
                 "semantic_id_seconds": time.perf_counter() - t0}
        self._install(sid.codes, stats, model=None)
        return stats

    def _install(self, codes: np.ndarray, stats: dict, model) -> None:
        self.codes = np.asarray(codes, dtype=np.int64)
        self.sid_stats = dict(stats)
        self.vocab = _Vocab.build(self.codes, self.config.codebook_size)
        self.sid_stats["vocab_size"] = self.vocab.vocab_size
        self.model = model if model is not None else self._new_model()
        self.fitted = model is not None and self.fitted

    def _t5_config(self):
        from transformers import T5Config

        c = self.config
        return T5Config(vocab_size=self.vocab.vocab_size, d_model=c.d_model, d_kv=c.d_kv,
                        d_ff=c.d_ff, num_layers=c.num_layers,
                        num_decoder_layers=c.num_decoder_layers, num_heads=c.num_heads,
                        dropout_rate=c.dropout, feed_forward_proj="relu", pad_token_id=PAD,
                        eos_token_id=EOS, decoder_start_token_id=PAD,
                        attn_implementation=_ATTN)

    def _new_model(self):
        """A randomly initialised T5, seeded with ``config.seed`` (global RNG left untouched)."""
        from transformers import T5ForConditionalGeneration

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            model = T5ForConditionalGeneration(self._t5_config())
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
        return {k: v for k, v in super().config_dict().items() if k not in _RUNTIME_ONLY}

    def _fingerprint(self, rows: np.ndarray) -> dict:
        """What a resumable fit depends on: the options that change training, the training
        rows, the semantic IDs and the weights the fit starts from."""
        skip = _EVAL_ONLY + _RUNTIME_ONLY + ("embedding_cache", "use_cache")
        cfg = {k: v for k, v in asdict(self.config).items() if k not in skip}
        cfg["rqvae_hidden"] = list(cfg["rqvae_hidden"])
        h = hashlib.sha256()
        for name, v in self.model.state_dict().items():
            h.update(name.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return {"format": _CKPT_FORMAT, "config": cfg, "rows": _sha(np.sort(rows)),
                "codes": _sha(self.codes), "init": h.hexdigest()}

    # --------------------------------------------------------------- fit

    def fit(self, ds: InteractionDataset, rows: np.ndarray, *, out_dir: str | Path | None = None,
            progress: bool = True) -> FitResult:
        t_start = time.perf_counter()
        cfg = self.config
        selected = check_rows(ds, rows, "selection")
        train_rows = training_rows(ds, selected)
        self._check_dataset(ds, progress)
        device = _resolve_device(cfg.device)
        vocab = self.vocab
        ex = _train_examples(ds.train, train_rows, cfg.max_history, cfg.samples)
        vrows = selected[ds.valid.lengths[selected] > 0]
        vex = _history_examples(ds.train, vrows, cfg.max_history,
                                ds.valid.items[ds.valid.indptr[vrows]])

        model = self.model.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        warm = max(cfg.warmup_steps, 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        seed_everything(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        state = {"epoch": 0, "history": [], "best_loss": math.inf, "best_epoch": None,
                 "best_state": None, "bad": 0, "done": False, "train_seconds": 0.0,
                 "train_examples": 0}
        ckpt = Path(out_dir) / CHECKPOINT if out_dir is not None else None
        fingerprint = self._fingerprint(train_rows) if ckpt is not None else {}
        resumed_from = 0
        if ckpt is not None and ckpt.is_file():
            state = self._resume(ckpt, fingerprint, model, opt, sched, rng, device)
            resumed_from = state["epoch"]
            log.info("tiger: resuming from %s after epoch %d", ckpt, resumed_from)

        item_tokens = vocab.item_tokens
        with flush_denormals(device) as flushed, progress_bar(progress) as prog:
            task = prog.add_task("TIGER fit", total=1, info="")
            epoch = state["epoch"]
            partial = state.pop("partial", None)  # a mid-epoch checkpoint to continue from
            partial_s = float(partial["seconds"]) if partial is not None else 0.0
            while not state["done"] and epoch < cfg.epochs:
                epoch += 1
                model.train()
                te = time.perf_counter()
                total, seen, skip, before = 0.0, 0, 0, 0.0
                epoch_rng = json.dumps(rng.bit_generator.state)
                if partial is not None:
                    # same batches as the interrupted epoch: its start RNG state, then skip
                    # the batches already trained (model / optimiser / torch RNG are restored)
                    epoch_rng = partial["epoch_rng"]
                    rng.bit_generator.state = json.loads(epoch_rng)
                    skip, total, seen = partial["batches"], partial["total"], partial["seen"]
                    before = partial["seconds"]
                    partial = None
                batches = _bucketed_batches(ex.hist_len, cfg.batch_size, rng)
                prog.update(task, description=f"TIGER epoch {epoch}/{cfg.epochs}",
                            total=len(batches), completed=skip)
                last_save = time.perf_counter()
                for b, idx in enumerate(batches):
                    if b < skip:
                        continue
                    if (ckpt is not None and cfg.checkpoint_minutes > 0 and b > skip
                            and time.perf_counter() - last_save > 60 * cfg.checkpoint_minutes):
                        state["partial"] = {"epoch_rng": epoch_rng, "batches": b,
                                            "total": total, "seen": seen,
                                            "seconds": before + time.perf_counter() - te}
                        self._save_checkpoint(ckpt, fingerprint, state, model, opt, sched, rng)
                        state.pop("partial")
                        last_save = time.perf_counter()
                    ids, mask = _encoder_inputs(ex, idx, item_tokens)
                    labels = _labels(ex, idx, item_tokens)
                    out = model(input_ids=torch.from_numpy(ids).to(device),
                                attention_mask=torch.from_numpy(mask).to(device),
                                labels=torch.from_numpy(labels).to(device), use_cache=False)
                    loss = out.loss
                    if not torch.isfinite(loss):
                        raise ScoringError(f"tiger: training loss became {loss.item()} at epoch "
                                           f"{epoch}; lower the learning rate (now {cfg.lr})")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * len(idx)
                    seen += len(idx)
                    prog.update(task, advance=1, info=f"loss {total / seen:.4f}")
                train_s = before + time.perf_counter() - te
                vloss = self._valid_loss(vex, device) if len(vex) else None
                rec = {"epoch": epoch, "train_loss": total / max(seen, 1), "valid_loss": vloss,
                       "seconds": before + time.perf_counter() - te, "examples": seen,
                       "examples_per_s": seen / max(train_s, 1e-9)}
                state["train_seconds"] += train_s
                state["train_examples"] += seen
                if vloss is None or vloss < state["best_loss"]:
                    state["best_loss"] = math.inf if vloss is None else vloss
                    state["best_epoch"] = epoch
                    state["best_state"] = {k: v.detach().to("cpu", copy=True)
                                           for k, v in model.state_dict().items()}
                    state["bad"] = 0
                else:
                    state["bad"] += 1
                state["history"].append(rec)
                state["epoch"] = epoch
                state["done"] = state["bad"] >= cfg.patience or epoch >= cfg.epochs
                if ckpt is not None:
                    self._save_checkpoint(ckpt, fingerprint, state, model, opt, sched, rng)
                vtxt = f" valid {vloss:.4f}" if vloss is not None else ""
                prog.update(task, info=f"train {rec['train_loss']:.4f}{vtxt}")
                log.info("tiger epoch %d: train loss %.4f%s (%.1fs, %.0f ex/s)", epoch,
                         rec["train_loss"], vtxt, rec["seconds"], rec["examples_per_s"])

        if state["best_state"] is not None:
            model.load_state_dict(state["best_state"])
        model.eval()
        self.model = model
        self.fitted = True
        stats = {"n_examples": int(len(ex)), "n_train_users": int(len(train_rows)),
                 "n_valid_users": int(len(vrows)),
                 "examples_per_s": state["train_examples"] / max(state["train_seconds"], 1e-9),
                 "samples": cfg.samples, "device": str(device), "flush_denormals": flushed,
                 "n_params": int(sum(p.numel() for p in model.parameters())),
                 "resumed_from_epoch": resumed_from,
                 "seconds_this_process": time.perf_counter() - t_start,
                 "semantic_ids": {k: v for k, v in self.sid_stats.items() if k != "texts_sha"}}
        seconds = resumed_fit_seconds(stats["seconds_this_process"], state["history"],
                                      resumed_from, partial_s)
        res = FitResult(history=copy.deepcopy(state["history"]), best_epoch=state["best_epoch"],
                        seconds=seconds, stats=stats)
        self.fit_summary = {"best_epoch": res.best_epoch, "history": res.history,
                            "n_examples": stats["n_examples"]}
        return res

    @torch.no_grad()
    def _valid_loss(self, vex: _Examples, device: torch.device) -> float:
        """Teacher-forced mean token loss on the validation examples (eval mode, no dropout)."""
        model = self.model
        was_training = model.training
        model.eval()
        order = np.argsort(vex.hist_len, kind="stable")
        total = 0.0
        for s in range(0, len(order), self.config.eval_batch_size * 4):
            idx = order[s:s + self.config.eval_batch_size * 4]
            ids, mask = _encoder_inputs(vex, idx, self.vocab.item_tokens)
            labels = _labels(vex, idx, self.vocab.item_tokens)
            out = model(input_ids=torch.from_numpy(ids).to(device),
                        attention_mask=torch.from_numpy(mask).to(device),
                        labels=torch.from_numpy(labels).to(device), use_cache=False)
            total += float(out.loss) * len(idx)
        model.train(was_training)
        return total / len(order)

    def _save_checkpoint(self, ckpt: Path, fingerprint: dict, state: dict, model, opt, sched,
                         rng: np.random.Generator) -> None:
        payload = {"fingerprint": json.dumps(fingerprint, sort_keys=True),
                   "state": {k: v for k, v in state.items() if k != "best_state"},
                   "best_state": state["best_state"],
                   "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                   "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                   "numpy_rng": json.dumps(rng.bit_generator.state),
                   "torch_rng": torch.get_rng_state(),
                   "cuda_rng": (torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                                else [])}
        with atomic_path(ckpt) as tmp:
            torch.save(payload, tmp)

    def _resume(self, ckpt: Path, fingerprint: dict, model, opt, sched,
                rng: np.random.Generator, device: torch.device) -> dict:
        try:
            payload = torch.load(ckpt, map_location="cpu", weights_only=True)
            stored = json.loads(payload["fingerprint"])
        except Exception as e:  # noqa: BLE001 - a torn / foreign file
            raise DataError(f"tiger: unreadable fit checkpoint ({e}); remove it to start over",
                            path=ckpt) from None
        if stored != json.loads(json.dumps(fingerprint, sort_keys=True)):
            diff = sorted(k for k in ("config", "rows", "codes", "init", "format")
                          if stored.get(k) != fingerprint.get(k))
            raise ConfigError(f"tiger: {ckpt} is the checkpoint of a different fit (differs in: "
                              f"{', '.join(diff)}); remove it or use another out_dir")
        model.load_state_dict(payload["model"])
        model.to(device)
        opt.load_state_dict(payload["optimizer"])
        sched.load_state_dict(payload["scheduler"])
        rng.bit_generator.state = json.loads(payload["numpy_rng"])
        torch.set_rng_state(payload["torch_rng"])
        if payload["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
        state = dict(payload["state"])
        state["best_state"] = payload["best_state"]
        return state

    # --------------------------------------------------------------- rank

    def rank(self, ds: InteractionDataset, rows: np.ndarray, k: int, *, period: str = "test",
             progress: bool = True) -> np.ndarray:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        check_period(period)
        rows = check_rows(ds, rows)
        self._check_dataset(ds, progress)
        cfg = self.config
        device = _resolve_device(cfg.device)
        model = self.model.to(device).eval()
        hist = history_for(ds, period)
        n_beams = max(cfg.beams, int(k))
        out = np.full((len(rows), int(k)), -1, dtype=np.int64)
        width = ds.n_items + 1
        with progress_bar(progress) as prog:
            task = prog.add_task("TIGER rank", total=len(rows), info=f"{n_beams} beams")
            for s in range(0, len(rows), cfg.eval_batch_size):
                r = rows[s:s + cfg.eval_batch_size]
                ex = _history_examples(hist, r, cfg.max_history)
                ids, mask = _encoder_inputs(ex, np.arange(len(r)), self.vocab.item_tokens)
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
        tmp = Path(tempfile.mkdtemp(prefix=".t5.tmp-", dir=path))
        try:
            self.model.save_pretrained(tmp, safe_serialization=True)
            final = path / "t5"
            if final.exists():
                old = path / f".t5.old-{os.getpid()}"
                os.rename(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
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
        except RecpruneError:
            raise
        obj.fitted = bool(meta.get("fitted", False))
        obj.fit_summary = meta.get("fit")
        obj._install(codes, meta.get("stats", {}), model=model.eval())
        if obj.vocab.vocab_size != model.config.vocab_size:
            raise DataError(f"tiger: the saved T5 has {model.config.vocab_size} tokens, the "
                            f"semantic IDs need {obj.vocab.vocab_size}", path=path)
        return obj
