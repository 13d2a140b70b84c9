"""DEALRec effort score (paper Eq. 12): the L2 norm of the gradient of a sample's LLM loss w.r.t.
the LoRA parameters.

    effort(s) = || grad_phi L_LLM(s) ||_2

``phi`` are the parameters of a freshly initialised peft LoRA adapter (``q_proj`` and ``v_proj``,
r=8, alpha=16, dropout off, seeded), ``L_LLM(s)`` is the mean token negative log-likelihood of
sample ``s`` (the user's BIGRec prompt, see :mod:`recprune.llm.prompts`) over its response
tokens (``loss_on="response"``, default) or over all its tokens (``loss_on="all"``).

Which LoRA parameters (``lora_layers``)
---------------------------------------
``"all"`` (default): the adapters of every decoder layer, as the paper's Eq. 12 writes it (phi =
the learnable parameters of the LLM). ``"last"``: only the last decoder layer's, as the authors'
released ``effort_score.py`` does (all other LoRA parameters frozen). A list of layer indices
selects any other set. The adapter is injected into every layer in all cases (identical
initialisation), only the gradient is restricted.

While ``lora_B`` is zero (the standard fresh initialisation) the adapter does not change the
model's outputs and the ``lora_A`` gradients are exactly zero, so the score is the norm of the
``lora_B`` gradients. ``init_lora_b_std > 0`` draws ``lora_B`` at random instead (for tests, or
to score against a non-trivial adapter).

How it is computed
------------------
* Per-sample gradient norms in batches, without a backward pass per sample: forward hooks keep
  every scored LoRA layer's input ``x`` and ``u = A x``; one ``autograd.grad`` call gives the
  gradient ``g`` of the batch loss (the sum of the per-sample mean losses, so every sample keeps
  its own normalisation) w.r.t. every scored ``lora_B`` output; then per sample
  ``grad_B = g^T u`` and ``grad_A = (g B)^T x`` (batched matrix products), and the squared norms
  are summed over layers. Samples in a batch do not interact, so the result equals one backward
  per sample (checked against that in the tests to < 1e-4 relative error).
* Fewer tokens: samples are sorted by length and batched under a token budget. On CPU a batch
  is packed into one row with no padding at all (each sample attends only to the prefix and
  its own tokens: a per-sample attention, batched over runs of equal length); on CUDA samples
  are right-padded to a rectangle (causal masking means the padding, which carries no loss,
  contributes exactly nothing). The LM head is applied only at the positions whose logits the
  loss needs; nothing below the lowest scored LoRA layer is recorded for backward (for
  ``"last"`` the lower layers run without a graph).
* Shared prompt prefix (``prefix``): every prompt starts with the same text (Alpaca header,
  instruction and the fixed lead-in of the input: ~77 tokens for Games, about half of a
  typical sample; 32 random Games users have 5355 full-prompt tokens, 2891 without the
  prefix). While the adapter is fixed (``lora_B = 0``, or any fixed ``B``) the forward values
  at the prefix positions are the same for every sample, but from the lowest scored LoRA layer
  ``l0`` up they depend on the scored parameters: the LoRA branches at prefix positions (e.g.
  the value vectors of prefix tokens that later tokens attend to) are part of every sample's
  gradient, and differently for each sample. Three modes:

  - ``"exact"`` (default): only what does not depend on the scored parameters is computed
    once: the prefix through the layers below ``l0`` (their key/value cache, which the
    sample's own tokens attend to there, and the prefix's hidden state at the input of layer
    ``l0``). From layer ``l0`` up every sample runs [prefix, its own tokens], the prefix part
    taken from that cache (a forward pre-hook on layer ``l0`` prepends it; packed rows become
    [prefix, sample 1, prefix, sample 2, ...], padded rows [prefix, sample, padding]), so the
    prefix positions are inside each sample's autograd graph and covered by the per-sample
    gradient hooks. The scores are the exact full-prompt gradient norms of Eq. 12 (tested to
    < 1e-4 relative error against one full-prompt backward per sample for ``"last"``,
    ``"all"`` and ``(10, 20, 29)``). For ``"last"`` (``l0`` = 29 of 30 layers) this costs
    about 5 % more than ``"fixed"``; for ``"all"`` (``l0 = 0``) nothing can be shared and it
    is the ``"none"`` computation.
  - ``"fixed"``: the whole prefix is run once with the adapter in place and its key/value
    cache is constant context for every sample (fastest: with ``"all"`` about 0.57x the time
    of ``"exact"``). An approximation: the score is the gradient w.r.t. the LoRA parameters
    *acting on the sample-specific tokens* (the history titles, the response and the template
    text between them); the contributions of the LoRA branches at prefix positions are
    dropped (with ``"all"`` roughly 40 % of the gradient norm on Games samples). The loss
    itself is unchanged (same tokens, same normalisation; for ``loss_on="all"`` the prefix
    tokens' NLL enters as a constant). Spearman rank correlation with the exact scores on
    random Games users: 0.954 / 0.952 (``"all"`` / ``"last"``, 32 users; 0.905 / 0.905 on 8).
  - ``"none"``: no sharing, every sample runs its full prompt (exact, the same scores as
    ``"exact"``; with ``"last"`` about 1.6x its time).

  Timings: 1 CPU thread, on a 2-core machine busy with another job, 8-32 random Games users
  (``benchmarks/bench_effort.py``). The deprecated ``share_prefix`` option maps ``True`` to
  sharing (``"exact"`` unless ``"fixed"`` is asked for) and ``False`` to ``"none"``.

Scores are cached on disk in chunks (see :meth:`EffortScorer.score`), so a killed run resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from recprune.errors import ConfigError, ScoringError
from recprune.store import digest, save_npy, write_json
from recprune.llm.loading import cache_kv
from recprune.llm.prompts import (PromptTemplate, TokenizedSamples, build_records, template_for,
                                  tokenize_records)

log = logging.getLogger(__name__)

MANIFEST_NAME = "effort_manifest.json"
CHUNK_PATTERN = "effort_chunk_{:05d}.npy"
_CACHE_VERSION = 2  # 2: `prefix` mode ("exact" default) replaced share_prefix
PREFIX_MODES = ("exact", "fixed", "none")
_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


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
        How the prompt prefix shared by all samples is treated (see the module docstring):
        ``"exact"`` (default): only what does not depend on the scored LoRA parameters is
        computed once (the prefix below the lowest scored layer), the scores are the exact
        full-prompt ones; ``"fixed"``: the whole prefix is computed once and is constant
        context (fastest, an approximation: the LoRA gradient at prefix positions is dropped);
        ``"none"``: no sharing, every sample runs its full prompt (exact, slowest).
    share_prefix:
        Deprecated alias kept for old call sites: ``None`` (default) uses ``prefix``;
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


# ----------------------------------------------------------------------------- helpers

@dataclass
class _Prefix:
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (1, KVH, P, D), constants
    length: int
    const_all: torch.Tensor  # summed NLL of the prefix's own targets (loss_on='all')
    first_logp: torch.Tensor  # (V,) log-probs of the token after the prefix
    # prefix "exact"/"none": the prefix enters every sample's sequence at decoder layer `ins`
    # (None: "fixed", the whole prefix is constant context); the constant input of that layer
    # at the prefix positions (hidden states and the decoder's per-layer position arguments)
    ins: int | None = None
    h: torch.Tensor | None = None  # (1, P, d)
    pe: tuple[torch.Tensor, ...] | None = None  # position_embeddings, e.g. (cos, sin) (1, P, hd)
    pos: torch.Tensor | None = None  # position_ids (1, P)


@dataclass
class _Layout:
    ids: np.ndarray  # (rows, L) token ids
    positions: np.ndarray | None  # (1, L) position ids (packed, or prefix inserted)
    flat: np.ndarray  # flat index (into the output hidden states) predicting each loss target
    labels: np.ndarray  # target token ids
    bi: np.ndarray  # sample (in the batch) of each loss target
    w: np.ndarray  # 1 / number of loss targets, per sample
    first_tgt: np.ndarray  # per sample: its first token is a target (predicted by the prefix)
    first_ids: np.ndarray  # per sample: its first token
    B: int
    T: int  # longest sample (incl. the prefix when it is inserted)
    dst: np.ndarray | None  # packed position (of the output) -> b * T + t
    segments: list | None  # packed: [(start, n_samples, length)] runs of equal length
    # prefix inserted at a decoder layer (exact/none modes): from that layer on, every sample's
    # sequence is [prefix, own tokens]
    inserted: bool = False
    gather: np.ndarray | None = None  # packed: row index into cat([prefix, row]) per position
    segments_high: list | None = None  # packed: the segments of the extended row


def _segments(starts: np.ndarray, lens: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of consecutive equal-length samples in a packed row: (start, count, length)."""
    out = []
    i = 0
    while i < len(lens):
        j = i
        while j + 1 < len(lens) and lens[j + 1] == lens[i]:
            j += 1
        out.append((int(starts[i]), j - i + 1, int(lens[i])))
        i = j + 1
    return out


@dataclass
class _AttnState:
    """Layout of one forward for :func:`_batch_attention`.

    Decoder layers with index < ``split`` see ``low``, the others ``high``; a layout is a list
    of packed segments (one row) or ``None`` (right-padded rows). ``prefix_kv`` (constant
    per-layer keys/values of the shared prefix) is attended to by the low layers only.
    """

    split: int
    low: list | None
    high: list | None
    prefix_kv: list | None
    masks: dict = dataclasses.field(default_factory=dict)


_PACK = threading.local()
_PACKED_NAME = "recprune_packed"
_registered = False


def _register_packed_attention() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(_PACKED_NAME, _batch_attention)
        _registered = True


@contextlib.contextmanager
def _attention_context(configs, state: _AttnState):
    """Make the model's attention layers use :func:`_batch_attention` for one forward."""
    _register_packed_attention()
    saved = [c._attn_implementation for c in configs]
    _PACK.state = state
    try:
        for c in configs:
            c._attn_implementation = _PACKED_NAME
        yield
    finally:
        for c, a in zip(configs, saved):
            c._attn_implementation = a
        _PACK.state = None


def _repeat_kv(k: torch.Tensor, n_rep: int) -> torch.Tensor:
    n, kvh, s, d = k.shape
    return k[:, :, None].expand(n, kvh, n_rep, s, d).reshape(n, kvh * n_rep, s, d)


def _sdpa(q, k, v, mask, scaling, n_rep):
    causal = mask is None
    # Fused GQA: on CPU always; on accelerators only without a mask (CUDA's fused kernels
    # do not take a mask together with GQA and would fall back to the math kernel).
    gqa = n_rep > 1 and (mask is None or q.device.type == "cpu")
    if n_rep > 1 and not gqa:
        k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    try:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling,
                                              is_causal=causal, enable_gqa=gqa)
    except TypeError:  # torch < 2.5: no enable_gqa
        if gqa:
            k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling,
                                              is_causal=causal)


def _prefix_mask(masks: dict, P: int, ln: int, device) -> torch.Tensor:
    """(ln, P + ln) bool: a query sees the whole prefix and causally its own tokens."""
    mask = masks.get((P, ln))
    if mask is None:
        mask = masks[(P, ln)] = (torch.arange(P + ln, device=device)[None, :] <=
                                 torch.arange(ln, device=device)[:, None] + P)
    return mask


def _batch_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                     scaling: float | None = None, **kwargs):
    """Per-sample causal attention for one batch (layout from the thread's :class:`_AttnState`).

    Packed (one row): each sample attends causally to its own tokens only, never to the
    other samples of the row; consecutive samples of equal length are one batched SDPA call.
    Padded rows: plain causal attention per row (right padding comes after the real tokens).
    In the layers below ``split``, every sample also attends to the shared prefix (constant
    keys/values from the prefix cache, placed before its tokens).

    ``query``: (rows, H, L, D); ``key``/``value``: (rows, KVH, L, D). The transformers
    ``attention_mask`` is not used.
    """
    state = getattr(_PACK, "state", None)
    if state is None:  # not inside one of our forwards: plain SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    n_rep = getattr(module, "num_key_value_groups", 1)
    low = module.layer_idx < state.split
    segments = state.low if low else state.high
    kp = vp = None
    P = 0
    if low and state.prefix_kv is not None:
        kp, vp = state.prefix_kv[module.layer_idx]
        P = kp.shape[2]
    if segments is None:  # right-padded rows
        rows, T = query.shape[0], query.shape[2]
        mask = None
        if P:
            key = torch.cat([kp.expand(rows, -1, -1, -1), key], dim=2)
            value = torch.cat([vp.expand(rows, -1, -1, -1), value], dim=2)
            mask = _prefix_mask(state.masks, P, T, query.device)
        o = _sdpa(query, key, value, mask, scaling, n_rep)  # (rows, H, T, D)
        return o.transpose(1, 2).contiguous(), None
    H, D = query.shape[1], query.shape[-1]
    KVH = key.shape[1]
    sizes = [n * ln for _, n, ln in segments]
    # One split per tensor (its backward is one concatenation), not one slice per sample.
    qs = torch.split(query.squeeze(0), sizes, dim=1)
    ks = torch.split(key.squeeze(0), sizes, dim=1)
    vs = torch.split(value.squeeze(0), sizes, dim=1)
    outs = []
    for (_, n, ln), q, k, v in zip(segments, qs, ks, vs):
        q = q.reshape(H, n, ln, D).transpose(0, 1)
        k = k.reshape(KVH, n, ln, D).transpose(0, 1)
        v = v.reshape(KVH, n, ln, D).transpose(0, 1)
        mask = None
        if P:
            k = torch.cat([kp.expand(n, -1, -1, -1), k], dim=2)
            v = torch.cat([vp.expand(n, -1, -1, -1), v], dim=2)
            mask = _prefix_mask(state.masks, P, ln, query.device)
        o = _sdpa(q, k, v, mask, scaling, n_rep)
        outs.append(o.transpose(0, 1).reshape(H, n * ln, D))  # (H, n*ln, D)
    out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
    return out.transpose(0, 1).unsqueeze(0).contiguous(), None  # (1, L, H, D)


class _Insert:
    """Forward pre-hook state of the decoder layer where the prefix enters the samples
    (prefix modes "exact"/"none").

    ``mode="capture"`` (the prefix's own forward) records that layer's input at the prefix
    positions; ``mode="insert"`` (a batch) prepends those constant prefix states to every
    sample's sequence: the hidden states and the per-layer position arguments
    (``position_embeddings``, ``position_ids``) become those of [prefix, sample tokens]
    (packed: per sample inside the row, via ``gather``), so that from this layer on the
    prefix positions are inside each sample's autograd graph. The decoder passes the same
    position arguments to every layer, so :meth:`hook_above` (on the layers above) swaps in
    the extended ones too.
    """

    def __init__(self):
        self.mode: str | None = None
        self.prefix: _Prefix | None = None
        self.gather: torch.Tensor | None = None
        self.captured: dict = {}
        self.extended: dict = {}  # the extended position arguments of the current batch

    def reset(self) -> None:
        self.mode = None
        self.prefix = self.gather = None
        self.captured = {}
        self.extended = {}

    def _join(self, pre: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        pre = pre.to(cur.dtype)
        if self.gather is None:  # padded rows: [prefix, row] for every row
            if pre.shape[0] != cur.shape[0]:
                pre = pre.expand(cur.shape[0], *pre.shape[1:])
            return torch.cat([pre, cur], dim=1)
        return torch.cat([pre, cur], dim=1).index_select(1, self.gather)

    def hook(self, mod, args, kwargs):
        if self.mode is None:
            return None
        h = args[0] if args else kwargs["hidden_states"]
        pe = kwargs.get("position_embeddings")
        pos = kwargs.get("position_ids")
        if self.mode == "capture":
            self.captured = {"h": h.detach(),
                             "pe": tuple(t.detach() for t in pe) if pe is not None else None,
                             "pos": pos.detach() if pos is not None else None}
            return None
        p = self.prefix
        h = self._join(p.h, h)
        if args:
            args = (h, *args[1:])
        else:
            kwargs["hidden_states"] = h
        ext = self.extended = {}
        if pe is not None:
            ext["position_embeddings"] = tuple(self._join(a, b) for a, b in zip(p.pe, pe))
        if pos is not None:
            pre = p.pos if p.pos is not None else \
                torch.arange(p.length, device=pos.device)[None]
            ext["position_ids"] = self._join(pre, pos)
        if "attention_mask" in kwargs:  # masks are made by _batch_attention
            ext["attention_mask"] = None
        kwargs.update(ext)
        return args, kwargs

    def hook_above(self, mod, args, kwargs):
        if self.mode != "insert":
            return None
        kwargs.update({k: v for k, v in self.extended.items() if k in kwargs})
        return args, kwargs


class _Capture:
    """What the LoRA forward hooks record during a gradient batch."""

    def __init__(self, keep_x: bool):
        self.on = False
        self.keep_x = keep_x  # x is only needed for the lora_A gradient (lora_B != 0)
        self.xs: dict[int, torch.Tensor] = {}  # lora_A inputs
        self.us: dict[int, torch.Tensor] = {}  # lora_A outputs
        self.outs: dict[int, torch.Tensor] = {}  # lora_B outputs

    def clear(self) -> None:
        self.xs.clear()
        self.us.clear()
        self.outs.clear()

    def hook_a(self, k: int):
        def hook(mod, inp, out):
            if self.on:
                if self.keep_x:
                    self.xs[k] = inp[0]
                self.us[k] = out
        return hook

    def hook_b(self, k: int):
        def hook(mod, inp, out):
            if self.on:
                self.outs[k] = out
        return hook


@dataclass
class _Batch:
    idx: np.ndarray  # sample indices (into the TokenizedSamples)
    # tokens run through the model, averaged over the layers (incl. padding when not packed,
    # and the prefix copies in the layers from insert_layer up with prefix="exact")
    tokens: int


# ----------------------------------------------------------------------------- scorer

class EffortScorer:
    """Computes DEALRec effort scores (Eq. 12) with a causal LM and a fresh LoRA adapter.

    Parameters
    ----------
    model:
        A loaded transformers causal LM (then ``tokenizer`` is required), or anything
        :func:`recprune.llm.load_causal_lm` accepts (``None`` = SmolLM2-135M-Instruct).
    config:
        :class:`EffortConfig`.
    device:
        Used only when the model is loaded here; a given model is used on its own device.

    The model is wrapped with a peft LoRA adapter in place (``self.model``); its base weights
    are frozen. See the module docstring for what is computed and how the shared prompt prefix
    is treated.
    """

    def __init__(self, model=None, tokenizer=None, config: EffortConfig | None = None, *,
                 device: str | torch.device = "auto", model_cache_dir: str | Path | None = None):
        self.config = config = config or EffortConfig()
        if model is None or isinstance(model, (str, Path)):
            from recprune.llm.loading import load_causal_lm

            model, tokenizer = load_causal_lm(model, device=device, cache_dir=model_cache_dir)
        elif tokenizer is None:
            raise ConfigError("a tokenizer is required together with a loaded model")
        self.tokenizer = tokenizer
        self.model = self._wrap(model)
        self.last_run: dict = {}
        self._prefix_cache: dict[tuple, _Prefix] = {}
        # The hooks hold only this capture object (no reference cycle scorer <-> model).
        self._cap = cap = _Capture(keep_x=self._b_nonzero)
        for k, (_, mod) in enumerate(self._scored):
            mod.lora_A[self._adapter].register_forward_hook(cap.hook_a(k))
            mod.lora_B[self._adapter].register_forward_hook(cap.hook_b(k))
        self._ins = _Insert()
        if self.insert_layer is not None:
            for i in range(self.insert_layer, len(self._layers)):
                hook = self._ins.hook if i == self.insert_layer else self._ins.hook_above
                self._layers[i].register_forward_pre_hook(hook, with_kwargs=True)

    # -- setup ---------------------------------------------------------------------------------

    def _wrap(self, model):
        from peft import LoraConfig, get_peft_model
        from peft.tuners.lora import LoraLayer

        cfg = self.config
        for p in model.parameters():
            p.requires_grad_(False)
        lc = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                        target_modules=list(cfg.target_modules), bias="none",
                        task_type="CAUSAL_LM")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            try:
                pm = get_peft_model(model, lc)
            except ValueError as e:
                raise ConfigError(f"cannot attach LoRA to {cfg.target_modules}: {e}") from None
        pm.eval()
        self._adapter = "default"
        lora = []
        for name, mod in pm.named_modules():
            if isinstance(mod, LoraLayer) and self._adapter in getattr(mod, "lora_A", {}):
                m = _LAYER_RE.search(name)
                if m is None:
                    raise ConfigError(f"cannot tell the decoder layer of LoRA module {name}")
                lora.append((int(m.group(1)), name, mod))
        if not lora:
            raise ConfigError(f"no LoRA module was created for {cfg.target_modules}")
        self.n_layers = max(i for i, _, _ in lora) + 1
        if cfg.init_lora_b_std > 0:
            g = torch.Generator().manual_seed(cfg.seed + 1)
            for _, _, mod in lora:
                w = mod.lora_B[self._adapter].weight
                with torch.no_grad():
                    w.copy_(torch.randn(w.shape, generator=g, dtype=torch.float32) *
                            cfg.init_lora_b_std)
        if cfg.lora_layers == "all":
            layers = set(range(self.n_layers))
        elif cfg.lora_layers == "last":
            layers = {self.n_layers - 1}
        else:
            layers = set()
            for i in cfg.lora_layers:
                j = i + self.n_layers if i < 0 else i
                if not 0 <= j < self.n_layers:
                    raise ConfigError(f"lora_layers: no layer {i} (the model has "
                                      f"{self.n_layers})")
                layers.add(j)
        self.scored_layers = sorted(layers)
        #: lowest scored layer: nothing below it depends on the scored LoRA parameters
        self.l0 = self.scored_layers[0]
        #: decoder layer where the shared prefix enters every sample's sequence (None: the
        #: prefix is constant context, prefix="fixed")
        self.insert_layer = {"fixed": None, "exact": self.l0, "none": 0}[cfg.prefix]
        self._scored = [(n, mod) for i, n, mod in lora if i in layers]
        for p in pm.parameters():
            p.requires_grad_(False)
        for _, mod in self._scored:  # only lora_B needs to require grad to get its output grads
            mod.lora_B[self._adapter].weight.requires_grad_(True)
        with torch.no_grad():
            self._b_nonzero = bool(torch.stack([
                mod.lora_B[self._adapter].weight.abs().max() for _, mod in self._scored]).max() > 0)
        base = pm.get_base_model()
        self._base = base
        self._decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
        self._head = base.get_output_embeddings()
        self._layers = getattr(self._decoder, "layers", None)
        if self._layers is None and cfg.prefix != "fixed":
            raise ConfigError(f"prefix={cfg.prefix!r} needs the decoder's `layers` list, which "
                              f"{type(self._decoder).__name__} does not have; use "
                              "prefix='fixed'")
        self._softcap = getattr(base.config, "final_logit_softcapping", None)
        self._configs = list({id(m.config): m.config for m in base.modules()
                              if hasattr(m, "config") and hasattr(m.config,
                                                                  "_attn_implementation")}
                             .values())
        self.device = next(base.parameters()).device
        return pm

    # -- tokenisation ---------------------------------------------------------------------------

    def template_for(self, dataset) -> PromptTemplate:
        return self.config.template or template_for(getattr(dataset, "name", ""))

    def prepare(self, dataset, rows=None) -> TokenizedSamples:
        """Build and tokenise the prompts of ``rows`` (all users by default)."""
        cfg = self.config
        tpl = self.template_for(dataset)
        records = build_records(dataset, rows, tpl, tokenizer=self.tokenizer,
                                cutoff_len=cfg.cutoff_len, add_eos=cfg.add_eos)
        return tokenize_records(records, self.tokenizer,
                                prefix_text=tpl.shared_prefix() if self.shares_prefix else "",
                                cutoff_len=cfg.cutoff_len, add_eos=cfg.add_eos,
                                loss_on=cfg.loss_on)

    @property
    def shares_prefix(self) -> bool:
        """Whether the prompt prefix shared by all samples is computed once: "fixed", and
        "exact" unless the lowest scored layer is layer 0 (then there is nothing to share and
        "exact" is the same computation as "none")."""
        return self.config.prefix == "fixed" or (self.config.prefix == "exact" and self.l0 > 0)

    def _prefix_share(self, ts: TokenizedSamples) -> float:
        """Layer-averaged extra tokens each sample runs for the prefix (inserted modes): the
        prefix positions are per sample in the layers from ``insert_layer`` on."""
        if self.insert_layer is None or len(ts.prefix_ids) == 0:
            return 0.0
        return len(ts.prefix_ids) * (self.n_layers - self.insert_layer) / self.n_layers

    @property
    def max_batch_tokens(self) -> int:
        if self.config.max_batch_tokens is not None:
            return self.config.max_batch_tokens
        return 8192 if self.device.type == "cuda" else 1024

    @staticmethod
    def sorted_order(ts: TokenizedSamples) -> np.ndarray:
        """Samples by increasing length (ties by index): the processing and chunk order."""
        return np.argsort(ts.lengths, kind="stable")

    def batches(self, ts: TokenizedSamples, idx: np.ndarray) -> list[_Batch]:
        """Split length-sorted samples ``idx`` into batches of at most ``max_batch_tokens`` tokens
        (real tokens when packing, padded batch size x longest length otherwise; with the
        prefix inserted per sample ("exact"), its layer-averaged share counts too)."""
        budget = self.max_batch_tokens
        packing = self.packing
        extra = self._prefix_share(ts)
        lens = ts.lengths[idx].astype(np.float64) + extra
        out, start = [], 0
        while start < len(idx):
            end, longest, total = start + 1, lens[start], lens[start]
            while end < len(idx):
                nl = max(longest, lens[end])
                cost = total + lens[end] if packing else (end - start + 1) * nl
                if cost > budget:
                    break
                longest, total, end = nl, total + lens[end], end + 1
            tokens = total if packing else (end - start) * longest
            out.append(_Batch(idx[start:end], int(round(tokens))))
            start = end
        return out

    # -- model passes ---------------------------------------------------------------------------

    def _prefix(self, ts: TokenizedSamples) -> _Prefix | None:
        """The shared prefix run once (no graph): its key/value cache, its own NLL and the
        log-probs of the next token ("fixed"), and the input of ``insert_layer`` at its
        positions (inserted modes)."""
        if len(ts.prefix_ids) == 0:
            return None
        key = tuple(ts.prefix_ids.tolist())
        if key not in self._prefix_cache:
            ids = torch.as_tensor(ts.prefix_ids, device=self.device)[None]
            ins = self._ins
            ins.mode = "capture" if self.insert_layer is not None else None
            try:
                with torch.no_grad():
                    out = self._decoder(input_ids=ids, use_cache=True)
                    h = out.last_hidden_state[0]
                    logp = self._logits(h).float().log_softmax(-1)
                    const_all = -logp[torch.arange(len(key) - 1, device=self.device),
                                      ids[0, 1:]].sum()
                    kv = [(k.detach(), v.detach()) for k, v in cache_kv(out.past_key_values)]
                cap = ins.captured
            finally:
                ins.reset()
            pre = _Prefix(kv, len(key), const_all, logp[-1])
            if self.insert_layer is not None:
                if cap.get("h") is None:
                    raise ScoringError(f"decoder layer {self.insert_layer} was not run on the "
                                       "prompt prefix")
                pre.ins, pre.h, pre.pe, pre.pos = self.insert_layer, cap["h"], cap["pe"], \
                    cap["pos"]
            self._prefix_cache = {key: pre}
        return self._prefix_cache[key]

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        logits = self._head(h)
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def _expanded_cache(self, prefix: _Prefix, b: int):
        from transformers import DynamicCache

        data = [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in prefix.kv]
        try:
            return DynamicCache(ddp_cache_data=data, config=self._base.config)
        except TypeError:  # older transformers
            return DynamicCache.from_legacy_cache(tuple(data))

    @property
    def packing(self) -> bool:
        if self.config.packing is not None:
            return bool(self.config.packing)
        return self.device.type != "cuda"

    def _layout(self, ts: TokenizedSamples, idx: np.ndarray,
                prefix: _Prefix | None = None) -> _Layout:
        """Token layout of one batch: packed into one row, or right-padded to (B, T).

        With the prefix inserted at a decoder layer (``prefix.ins`` set), ``ids`` and
        ``positions`` are those of the samples' own tokens (the layers below), everything else
        refers to the extended sequences [prefix, own tokens] of the layers from there on.
        """
        lens = ts.lengths[idx]
        B, T = len(idx), int(lens.max())
        cols = np.arange(T)
        valid = cols[None, :] < lens[:, None]
        src = np.minimum(ts.indptr[idx][:, None] + cols[None, :], max(len(ts.ids) - 1, 0))
        tgt = valid & ts.target[src]
        ntg = ts.n_targets[idx].astype(np.float64)
        w = np.where(ntg > 0, 1.0 / np.maximum(ntg, 1.0), 0.0)
        first_ids = ts.ids[ts.indptr[idx]] if len(ts.ids) else np.zeros(B, dtype=np.int64)
        P = len(ts.prefix_ids)
        packing = self.packing
        starts = np.zeros(B, dtype=np.int64)
        np.cumsum(lens[:-1], out=starts[1:])
        if packing:
            ids = np.concatenate([ts.ids[ts.indptr[i]:ts.indptr[i + 1]] for i in idx])[None]
            within = np.arange(ids.shape[1]) - np.repeat(starts, lens)
            positions = (within + P)[None]
            segs = _segments(starts, lens)
        else:
            pad = self.tokenizer.pad_token_id
            ids = np.where(valid, ts.ids[src], pad if pad is not None else 0)
            positions, segs = None, None
        if prefix is not None and prefix.ins is not None:
            # The full sequences [prefix, sample]: every loss target, those in the prefix and
            # the first sample token included, is predicted by a position in the graph.
            Tf = P + T
            ptgt = np.zeros((B, P), dtype=bool)
            if P and self.config.loss_on == "all":
                ptgt[ts.n_targets[idx] > tgt.sum(1), 1:] = True
            ftgt = np.concatenate([ptgt, tgt], axis=1)
            ftgt[:, 0] = False
            fids = np.concatenate([np.broadcast_to(ts.prefix_ids, (B, P)), ts.ids[src]], axis=1)
            bi, tj = np.nonzero(ftgt)
            kw = dict(labels=fids[bi, tj], bi=bi, w=w, first_tgt=np.zeros(B, dtype=bool),
                      first_ids=first_ids, B=B, T=Tf, inserted=True)
            if packing:
                hl = lens + P
                sh = np.zeros(B, dtype=np.int64)
                np.cumsum(hl[:-1], out=sh[1:])
                kk = np.arange(int(hl.sum())) - np.repeat(sh, hl)  # position in [prefix, sample]
                # index into cat([prefix, low row]): prefix k -> k, sample token -> P + start + k-P
                gather = np.where(kk < P, kk, kk + np.repeat(starts, hl))
                return _Layout(ids=ids, positions=positions, flat=sh[bi] + tj - 1,
                               dst=np.repeat(np.arange(B), hl) * Tf + kk, segments=segs,
                               gather=gather, segments_high=_segments(sh, hl), **kw)
            return _Layout(ids=ids, positions=(P + cols)[None], flat=bi * Tf + tj - 1, dst=None,
                           segments=None, **kw)
        first_tgt = tgt[:, 0].copy()  # predicted from the (constant) last prefix position
        tgt[:, 0] = False
        bi, tj = np.nonzero(tgt)
        if packing:
            flat = starts[bi] + tj - 1  # position (in the row) whose logits predict the target
            dst = np.repeat(np.arange(B), lens) * T + within
        else:
            flat, dst = bi * T + tj - 1, None
        return _Layout(ids=ids, positions=positions, flat=flat, labels=ts.ids[src][bi, tj],
                       bi=bi, w=w, first_tgt=first_tgt, first_ids=first_ids, B=B, T=T, dst=dst,
                       segments=segs)

    def _run_batch(self, ts: TokenizedSamples, idx: np.ndarray, prefix: _Prefix | None,
                   grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (mean loss, squared gradient norm) of one batch, on the model's device."""
        dev = self.device
        lay = self._layout(ts, idx, prefix)
        B = lay.B
        ids = torch.as_tensor(lay.ids, device=dev)
        bi = torch.as_tensor(lay.bi, device=dev)
        flat = torch.as_tensor(lay.flat, device=dev)
        labels = torch.as_tensor(lay.labels, device=dev)
        w = torch.as_tensor(lay.w, device=dev, dtype=torch.float32)
        const = torch.zeros(B, device=dev, dtype=torch.float32)
        if prefix is not None and not lay.inserted:  # "fixed": the prefix's NLL is a constant
            if self.config.loss_on == "all":
                const = const + prefix.const_all
            if lay.first_tgt.any():
                first = torch.as_tensor(lay.first_tgt, device=dev)
                fl = prefix.first_logp[torch.as_tensor(lay.first_ids, device=dev)]
                const = const - torch.where(first, fl, 0.0)
        if prefix is not None and not lay.inserted and lay.segments is None:
            kwargs = {"past_key_values": self._expanded_cache(prefix, ids.shape[0]),
                      "use_cache": True}
        else:  # our attention takes the prefix keys/values directly
            kwargs = {"use_cache": False}
        if lay.positions is not None:
            kwargs["position_ids"] = torch.as_tensor(lay.positions, device=dev)
        sq = torch.zeros(B, device=dev, dtype=torch.float32)
        cap = self._cap
        cap.clear()
        cap.on = grad
        try:
            with torch.set_grad_enabled(grad), self._attention(lay, prefix), \
                    self._inserting(lay, prefix):
                h = self._decoder(input_ids=ids, **kwargs).last_hidden_state
            h = h.reshape(-1, h.shape[-1])
            with torch.set_grad_enabled(grad):
                logits = self._logits(h[flat]).float()
                nll = F.cross_entropy(logits, labels, reduction="none")
                del logits, h
                wn = nll * w[bi]
                loss = (const + torch.zeros_like(const).index_add(0, bi, nll.detach())) * w
                if grad and wn.requires_grad:
                    keys = sorted(cap.outs)
                    grads = torch.autograd.grad(wn.sum(), [cap.outs[k] for k in keys],
                                                allow_unused=True)
                    sq = self._sq_norms(keys, grads, lay)
        finally:
            cap.on = False
            cap.clear()
        return loss, sq

    def _attention(self, lay: _Layout, prefix: _Prefix | None):
        """Context: route attention through :func:`_batch_attention` for this batch (packed
        rows, or an inserted prefix); padded batches otherwise use the model's own attention
        (with the expanded prefix cache for "fixed")."""
        if lay.inserted:
            state = _AttnState(split=prefix.ins, low=lay.segments, high=lay.segments_high,
                               prefix_kv=prefix.kv)
        elif lay.segments is not None:
            state = _AttnState(split=self.n_layers, low=lay.segments, high=None,
                               prefix_kv=prefix.kv if prefix is not None else None)
        else:
            return contextlib.nullcontext()
        return _attention_context(self._configs, state)

    @contextlib.contextmanager
    def _inserting(self, lay: _Layout, prefix: _Prefix | None):
        """Context: the pre-hook of ``insert_layer`` prepends the prefix states per sample."""
        if not lay.inserted:
            yield
            return
        ins = self._ins
        ins.prefix = prefix
        ins.gather = None if lay.gather is None else \
            torch.as_tensor(lay.gather, device=self.device)
        ins.mode = "insert"
        try:
            yield
        finally:
            ins.reset()

    @torch.no_grad()
    def _sq_norms(self, keys, grads, lay: _Layout) -> torch.Tensor:
        """Sum over scored LoRA modules of the per-sample squared gradient norms."""
        B, T = lay.B, lay.T
        dst = None if lay.dst is None else torch.as_tensor(lay.dst, device=self.device)

        def padded(t: torch.Tensor) -> torch.Tensor:  # (rows, L, d) -> (B, T, d)
            t = t.float()
            if dst is None:
                return t
            out = t.new_zeros(B * T, t.shape[-1])
            out[dst] = t.reshape(-1, t.shape[-1])
            return out.view(B, T, -1)

        sq = torch.zeros(B, device=self.device, dtype=torch.float32)
        for k, g in zip(keys, grads):
            if g is None:
                continue
            g = padded(g)
            gb = torch.bmm(g.transpose(1, 2), padded(self._cap.us[k]))  # (B, d_out, r): grad lora_B
            sq = sq + gb.pow(2).sum((1, 2))
            if self._b_nonzero:
                bw = self._scored[k][1].lora_B[self._adapter].weight.float()
                v = g @ bw  # (B, T, r): grad w.r.t. u = A x
                ga = torch.bmm(v.transpose(1, 2), padded(self._cap.xs[k]))  # (B, r, d_in): lora_A
                sq = sq + ga.pow(2).sum((1, 2))
        return sq

    # -- fingerprints & disk cache --------------------------------------------------------------

    def fingerprint(self, ts: TokenizedSamples) -> dict:
        """What the scores depend on (config, model weights, adapter init, tokenised samples)."""
        cfg = dataclasses.asdict(self.config)
        for k in ("max_batch_tokens", "packing"):  # speed only
            cfg.pop(k)
        cfg["template"] = None  # covered by the samples' token ids
        base_params = [p for n, p in self._base.named_parameters() if "lora_" not in n]
        pick = [base_params[0], base_params[len(base_params) // 2], base_params[-1]]
        wsha = digest(*[p.detach().flatten()[:4096].float().cpu().numpy() for p in pick])
        lsha = digest(*[torch.cat([m.lora_A[self._adapter].weight.detach().flatten()[:2048],
                                 m.lora_B[self._adapter].weight.detach().flatten()[:2048]])
                      .float().cpu().numpy() for _, m in self._scored])
        mc = self._base.config
        model = {"model_type": getattr(mc, "model_type", None),
                 "n_layers": self.n_layers, "hidden_size": getattr(mc, "hidden_size", None),
                 "vocab_size": getattr(mc, "vocab_size", None),
                 "dtype": str(next(self._base.parameters()).dtype),
                 "weights_sha256": wsha[:16], "lora_init_sha256": lsha[:16]}
        samples = {"n": ts.n, "tokens_sha256": digest(ts.prefix_ids, ts.indptr, ts.ids,
                                                    ts.target, ts.n_targets)[:16]}
        return {"config": json.loads(json.dumps(cfg, default=str)), "model": model,
                "samples": samples}

    @staticmethod
    def _diff(a, b, path="") -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            out = []
            for k in sorted(set(a) | set(b)):
                out += EffortScorer._diff(a.get(k), b.get(k), f"{path}{k}.")
            return out
        return [] if a == b else [f"{path[:-1]}: {a!r} (cache) vs {b!r} (now)"]

    def _chunks(self, ts: TokenizedSamples) -> list[np.ndarray]:
        """Sample positions of each cache chunk (``chunk_size`` samples in length order)."""
        cs = self.config.chunk_size
        order = self.sorted_order(ts)
        return [order[s:s + cs] for s in range(0, ts.n, cs)]

    @staticmethod
    def _read_chunk(cdir: Path, c: int, n: int, warn: bool = False) -> np.ndarray | None:
        """Cached chunk ``c`` (``n`` finite scores), or None when absent or unusable."""
        f = cdir / CHUNK_PATTERN.format(c)
        if not f.exists():
            return None
        try:
            arr = np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            if warn:
                log.warning("effort cache chunk %d unreadable (%s): recomputing it", c, e)
            return None
        if arr.shape != (n,) or not np.isfinite(arr).all():
            if warn:
                log.warning("effort cache chunk %d has the wrong shape: recomputing it", c)
            return None
        return arr

    def _manifest(self, fp: dict, rows: np.ndarray, n_chunks: int) -> dict:
        return {"kind": "recprune.effort", "version": _CACHE_VERSION, **fp,
                "rows": {"n": int(len(rows)), "sha256": digest(rows.astype(np.int64))[:16]},
                "chunk_size": self.config.chunk_size, "n_chunks": n_chunks}

    def _open_cache(self, cache_dir: Path, fp: dict, rows: np.ndarray, n_chunks: int) -> None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for stale in cache_dir.glob(".effort_*.tmp-*"):  # left by a killed run
            stale.unlink(missing_ok=True)
        mpath = cache_dir / MANIFEST_NAME
        want = self._manifest(fp, rows, n_chunks)
        if mpath.exists():
            try:
                have = json.loads(mpath.read_text())
            except (OSError, ValueError) as e:
                raise ConfigError(f"{mpath}: unreadable effort-cache manifest ({e}); delete the "
                                  "cache directory to recompute") from None
            diffs = self._diff(have, want)
            if diffs:
                raise ConfigError(
                    f"effort cache {cache_dir} was computed with a different configuration or "
                    f"for different samples, refusing to reuse it: " + "; ".join(diffs[:6]) +
                    ". Use another cache_dir or delete this one.")
        else:
            if any(cache_dir.glob("effort_chunk_*.npy")):
                raise ConfigError(f"{cache_dir} holds effort chunks but no {MANIFEST_NAME}: "
                                  "their configuration is unknown; delete them or use another "
                                  "cache_dir")
            write_json(mpath, want)

    # -- public API -----------------------------------------------------------------------------

    def score(self, dataset, rows=None, *, cache_dir: str | Path | None = None,
              progress: bool = True) -> np.ndarray:
        """Effort score of each user row (float64, aligned with ``rows``; all users if None).

        With ``cache_dir``, scores are stored per chunk of ``chunk_size`` samples (in length
        order) as ``effort_chunk_00012.npy`` next to ``effort_manifest.json`` (configuration,
        model / adapter / sample fingerprints, rows), each file written atomically. A rerun
        loads the chunks present and computes only the missing ones; a cache made with a
        different configuration raises :class:`~recprune.errors.ConfigError`.
        NaN/inf losses or gradients raise :class:`~recprune.errors.ScoringError`.
        """
        rows = np.arange(dataset.n_users) if rows is None else np.asarray(rows, dtype=np.int64)
        user_ids = np.asarray(dataset.user_ids)[rows] if len(rows) else np.zeros(0, np.int64)
        ts = self.prepare(dataset, rows)
        return self.score_tokenized(ts, user_ids=user_ids, rows=rows, cache_dir=cache_dir,
                                    progress=progress)

    def load_all_users(self, dataset, cache_dir: str | Path) -> np.ndarray:
        """Every user's effort score from a *complete* cache that :meth:`score` wrote for all
        users of ``dataset`` (``rows=None``) with this scorer's configuration, model and
        adapter initialisation. An effort score depends only on its own sample, so a candidate
        pool (any subset of users) can take its scores from there instead of recomputing them.
        Raises :class:`~recprune.errors.ConfigError` (naming what differs or what is missing)
        when the cache was made otherwise or is unfinished.
        """
        cdir = Path(cache_dir)
        mpath = cdir / MANIFEST_NAME
        if not mpath.exists():
            raise ConfigError(f"{cdir}: no {MANIFEST_NAME}, so not an effort cache")
        try:
            have = json.loads(mpath.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{mpath}: unreadable effort-cache manifest ({e})") from None
        ts = self.prepare(dataset, None)
        chunks = self._chunks(ts)
        want = self._manifest(self.fingerprint(ts), np.arange(ts.n, dtype=np.int64), len(chunks))
        diffs = self._diff(have, want)
        if diffs:
            raise ConfigError(
                f"effort cache {cdir} does not hold every user's score for this configuration "
                f"and dataset: " + "; ".join(diffs[:6]))
        scores = np.full(ts.n, np.nan, dtype=np.float64)
        missing = []
        for c, idx in enumerate(chunks):
            arr = self._read_chunk(cdir, c, len(idx))
            if arr is None:
                missing.append(c)
            else:
                scores[idx] = arr
        if missing:
            raise ConfigError(
                f"effort cache {cdir} is unfinished: {len(missing)} of {len(chunks)} chunks are "
                f"missing or unreadable (first {missing[:5]}); finish it by scoring all users "
                "into it, or compute the pool's effort scores instead")
        return scores

    def score_tokenized(self, ts: TokenizedSamples, *, user_ids: np.ndarray | None = None,
                        rows: np.ndarray | None = None, cache_dir: str | Path | None = None,
                        progress: bool = True) -> np.ndarray:
        """:meth:`score` on already tokenised samples."""
        n = ts.n
        user_ids = np.arange(n) if user_ids is None else np.asarray(user_ids)
        rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        chunks = self._chunks(ts)
        scores = np.full(n, np.nan, dtype=np.float64)
        loaded, todo = [], []
        cdir = Path(cache_dir) if cache_dir is not None else None
        if cdir is not None:
            self._open_cache(cdir, self.fingerprint(ts), rows, len(chunks))
        for c, idx in enumerate(chunks):
            arr = self._read_chunk(cdir, c, len(idx), warn=True) if cdir is not None else None
            if arr is not None:
                scores[idx] = arr
                loaded.append(c)
            else:
                todo.append(c)
        prefix = self._prefix(ts) if todo else None
        t0 = time.perf_counter()
        n_done = sum(len(chunks[c]) for c in loaded)
        total_tokens = int(sum(ts.lengths[chunks[c]].sum() for c in todo))
        tokens_run = 0
        with _progress_bar(progress, total_tokens, n, n_done) as bar:
            for c in todo:
                idx = chunks[c]
                losses, sqs = [], []
                for b in self.batches(ts, idx):
                    loss, sq = self._run_batch(ts, b.idx, prefix, grad=True)
                    losses.append(loss)
                    sqs.append(sq)
                    tokens_run += b.tokens
                    bar.advance(int(ts.lengths[b.idx].sum()), len(b.idx))
                loss = torch.cat(losses).double().cpu().numpy()
                sq = torch.cat(sqs).double().cpu().numpy()
                bad = ~(np.isfinite(loss) & np.isfinite(sq))
                if bad.any():
                    who = user_ids[idx[bad]]
                    raise ScoringError(
                        f"non-finite LLM loss or gradient for {int(bad.sum())} sample(s), user "
                        f"id(s) {', '.join(map(str, who[:10].tolist()))}"
                        f"{' ...' if len(who) > 10 else ''} (loss {loss[bad][:3].tolist()}); "
                        "check the model weights, dtype and these users' prompts")
                vals = np.sqrt(sq)
                scores[idx] = vals
                if cdir is not None:
                    save_npy(cdir / CHUNK_PATTERN.format(c), vals)
        elapsed = time.perf_counter() - t0
        self.last_run = {"n": n, "chunks_loaded": loaded, "chunks_computed": todo,
                         "seconds": elapsed, "tokens_processed": tokens_run,
                         "tokens_real": total_tokens,
                         "prefix_tokens": len(ts.prefix_ids), "prefix": self.config.prefix,
                         "insert_layer": self.insert_layer}
        return scores

    def sample_losses(self, dataset_or_ts, rows=None, *, grad: bool = False) -> np.ndarray:
        """Per-sample mean loss; with ``grad=False`` a forward pass only (the same batches,
        layout, prefix handling and LM-head positions as :meth:`score`, used as its speed
        floor)."""
        ts = dataset_or_ts if isinstance(dataset_or_ts, TokenizedSamples) else \
            self.prepare(dataset_or_ts, rows)
        out = np.zeros(ts.n)
        order = self.sorted_order(ts)
        prefix = self._prefix(ts)
        for b in self.batches(ts, order):
            loss, _ = self._run_batch(ts, b.idx, prefix, grad=grad)
            out[b.idx] = loss.double().cpu().numpy()
        return out

    def reference_scores(self, dataset_or_ts, rows=None) -> np.ndarray:
        """Naive effort scores: one full forward + ``loss.backward()`` per sample through the
        standard peft model (LM head on every position), norm of the scored LoRA parameters'
        ``.grad`` (A and B). The full prompt (prefix included) is run for every sample, except
        with ``prefix="fixed"``, where the same fixed prefix cache as the batched scorer's is
        used. For verification and benchmarks: slow."""
        ts = dataset_or_ts if isinstance(dataset_or_ts, TokenizedSamples) else \
            self.prepare(dataset_or_ts, rows)
        params = []
        for _, mod in self._scored:
            params += [mod.lora_A[self._adapter].weight, mod.lora_B[self._adapter].weight]
        fixed = self.insert_layer is None
        prefix = self._prefix(ts) if fixed else None
        out = np.zeros(ts.n)
        try:
            for p in params:
                p.requires_grad_(True)
            for i in range(ts.n):
                ids_np, tgt_np = ts.sample(i) if fixed else ts.full(i)
                ids = torch.as_tensor(ids_np, device=self.device)[None]
                kw = {"past_key_values": self._expanded_cache(prefix, 1), "use_cache": True} \
                    if prefix is not None else {"use_cache": False}
                logits = self.model(input_ids=ids, **kw).logits[0].float()
                logp = logits.log_softmax(-1)
                j = torch.as_tensor(np.flatnonzero(tgt_np[1:]) + 1, device=self.device)
                nll = -logp[j - 1, ids[0, j]].sum()
                const = 0.0
                if prefix is not None:
                    if self.config.loss_on == "all":
                        const += float(prefix.const_all)
                    if tgt_np[0]:
                        const -= float(prefix.first_logp[int(ids_np[0])])
                loss = (nll + const) / max(int(ts.n_targets[i]), 1)
                for p in params:
                    p.grad = None
                loss.backward()
                grads = [p.grad for p in params if p.grad is not None]
                out[i] = float(torch.nn.utils.get_total_norm(grads, 2.0)) if grads else 0.0
        finally:
            for p in params:
                p.grad = None
                p.requires_grad_(False)
            for _, mod in self._scored:
                mod.lora_B[self._adapter].weight.requires_grad_(True)
        return out


class _progress_bar:
    """A rich progress bar over tokens (for an honest ETA) that shows samples and samples/s."""

    def __init__(self, enabled: bool, total_tokens: int, n: int, n_done: int):
        self.enabled = enabled
        self.n, self.done, self.done0 = n, n_done, n_done
        self.t0 = time.perf_counter()
        self._p = None
        if enabled:
            from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._p = Progress(TextColumn("effort score"), BarColumn(),
                               TextColumn("{task.fields[done]}/{task.fields[n]} samples"),
                               TextColumn("{task.fields[rate]} samples/s"),
                               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
            self._task = self._p.add_task("effort", total=max(total_tokens, 1), done=n_done,
                                          n=n, rate="-")

    def __enter__(self):
        if self._p is not None:
            self._p.start()
        return self

    def advance(self, tokens: int, samples: int) -> None:
        self.done += samples
        if self._p is not None:
            dt = time.perf_counter() - self.t0
            rate = f"{(self.done - self.done0) / dt:.2f}" if dt > 0 else "-"
            self._p.update(self._task, advance=tokens, done=self.done, rate=rate)

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.stop()
        return False


def effort_scores(dataset, rows=None, *, model=None, config: EffortConfig | None = None,
                  cache_dir: str | Path | None = None, progress: bool = True) -> np.ndarray:
    """Convenience wrapper: ``EffortScorer(model, config=config).score(dataset, rows, ...)``."""
    return EffortScorer(model, config=config).score(dataset, rows, cache_dir=cache_dir,
                                                    progress=progress)


__all__ = ["EffortConfig", "EffortScorer", "effort_scores", "MANIFEST_NAME", "CHUNK_PATTERN"]
