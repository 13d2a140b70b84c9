"""BIGRec backend: an instruction LLM with LoRA writes the next item's title; the text is grounded
to real items by embedding distance (Bao et al., "A Bi-Step Grounding Paradigm for Large Language
Models in Recommendation Systems", the LLM recommender DEALRec fine-tunes).

What it does
------------
* **Fine-tuning** (:meth:`BigRec.fit`): one Alpaca sample per selected user with >= 2 training
  items (:func:`recprune.llm.prompts.build_records`: history = training items but the last,
  response = ``"<title of the last training item>"`` + eos, oldest titles dropped until the
  sample fits ``cutoff_len`` tokens). A fresh, seeded peft LoRA adapter (``r``, ``alpha``,
  ``dropout``, ``target_modules``) is trained with AdamW (linear warm-up, then linear decay to 0
  over ``epochs``, gradient clipping at ``max_grad_norm``, as the HF ``Trainer`` the reference
  uses). Validation (early stopping): the selected users that have validation items, history =
  all their training items, target = their first validation item (:func:`build_prompt_records`).
  The loss of an optimizer batch is the mean NLL over all its loss tokens (independent of how the
  batch is split into micro-batches). ``train_on_inputs=False`` (default) takes the loss on the
  response (title + eos) only; ``True`` on every token, as the reference does.
* **Ranking** (:meth:`BigRec.rank`): the test prompt lists the titles of ``history_for(ds,
  period)`` (train + valid for ``"test"``), oldest dropped to fit ``cutoff_len``, and ends with
  ``### Response:\\n``. Deterministic beam search (``num_beams``) writes a title; generation of a
  beam is ended right after the closing quote of the title (a logits processor forces eos then),
  or after ``max_new_tokens``. The text between the quotes is kept (:func:`clean_generation`;
  available as :attr:`BigRec.last_generations`).
* **Grounding**: the generated text and every item title are embedded by the LLM (the final,
  normed hidden state of the last token, as BIGRec's ``hidden_states[-1][:, -1]``) and every item
  is ranked by the L2 distance between the two (smaller = better). As in the reference release
  (``data/embedding.ipynb`` and ``data/game/evaluate.py`` of BIGRec, checked), both embeddings
  come from the **base** model (here: the LoRA adapter disabled), and both texts are the plain
  title without its quotes (``embed_text="plain"``; ``"quoted"`` embeds ``"<title>"`` as the
  response is written instead). Hence the item embeddings depend only on the base model and the
  titles: they are computed once and cached on disk (``<cache>/embeddings/``, see
  :attr:`BigRecConfig.embedding_cache_dir`), keyed by a fingerprint of the base weights and the
  SHA-256 of the token ids of the texts. Items that share a title are embedded once and stay
  distinct items with equal distances: ties are broken by item id, so they are adjacent in the
  ranking (the reference maps titles to ids with a dict and silently merges them). Items without
  a title cannot be grounded: they are ranked after every titled item (by id). History items are
  never returned.

CPU engineering (what makes few-shot fine-tuning affordable on a small CPU)
---------------------------------------------------------------------------
* Tokenised once per fit, not per epoch. Batches group samples of similar length: per epoch a
  seeded random permutation is stably sorted by length, cut into optimizer batches of
  ``batch_size`` and the batch order is shuffled; a batch is cut into micro-batches of at most
  ``micro_batch_size`` samples and ``max_micro_tokens`` padded tokens (gradient accumulation).
  Padding is then ~1 % of the tokens (random batches with sorted micro-batches: 10-50 % on Games).
* **Shared prompt prefix** (``share_prefix=True``): the Alpaca header, the instruction and the
  fixed lead-in of the input (77 SmolLM2 tokens for Games, about half of an average sample) are
  identical for every prompt. Once per optimizer batch the prefix is run through the model with
  batch size 1 *with* the LoRA adapter and autograd; its per-layer key/value cache is detached
  into leaf tensors, expanded over each micro-batch and the sample-specific tokens run on top of
  it (positions continue after the prefix); each micro-batch's backward accumulates the LoRA
  gradients of its own tokens and the gradients w.r.t. the prefix keys/values; after the last
  micro-batch one backward through the prefix graph adds the LoRA gradients at the prefix
  positions. Loss and gradients equal those of the plain full-sequence forward (tested to
  1e-5 relative); with ``train_on_inputs`` the prefix tokens' own NLL and the first sample token
  (predicted from the last prefix position) are included. With LoRA dropout active, the prefix
  positions of the samples of one batch share a dropout mask (the plain computation would draw
  one per sample): a different but equally valid stochastic regulariser. The validation loss
  and generation reuse the prefix cache too (no gradient).
* Generation: per batch of prompts of similar length the prompt is laid out as
  ``[prefix | padding | own tokens]`` (attention mask 0 on the padding, positions from the mask
  as HF does for left padding), the prefix's cache is computed once, the own tokens but the last
  are pre-filled **once per prompt** with it, and only then is the cache copied over the beams
  and handed to ``generate`` (which would otherwise pre-fill every prompt ``num_beams`` times).
  The beam search result equals plain left-padded ``generate`` (tested).
* Measured with SmolLM2-135M on 1 thread of the 2-core project CPU, random Games users:
  training 222-226 prompt tokens/s with the shared prefix vs 141-144 without (1.57x, 64 users,
  alternating runs; the loss agreed to 1e-6); beam-4 generation 0.24-0.28 prompts/s vs 0.11
  with plain ``generate`` (2.3x); the embeddings of the 16,845 distinct Games title texts
  ~30 titles/s (9-13 minutes, once per base model: then cached).

Defaults (why)
--------------
The reference trains LLaMA-7B with lr 1e-4, batch 128, up to 50 epochs, early stopping with
patience 5. A 1,024-sample few-shot set then makes only 8 optimizer steps per epoch and needs
tens of epochs; on a 2-core CPU an epoch of SmolLM2-135M costs many minutes, so we make more,
smaller steps instead: ``batch_size=16`` (64 steps per epoch, in micro-batches of 8),
``lr=3e-4`` (alpaca-lora's default for LoRA r=8, a small model tolerates it), ``epochs=3``
with ``patience=1`` (validation loss after every epoch; the best epoch's adapter is kept),
``warmup_steps=8``. ``max_new_tokens=64`` covers 99.9 % of the quoted Games titles (p99 52
SmolLM2 tokens).

Resuming an interrupted fit
---------------------------
With ``out_dir``, every finished epoch writes ``out_dir/epoch_NNN/`` (the adapter,
``adapter/``, and the optimizer + scheduler state, ``optim.pt``), then ``fit_state.json`` (the
commit point: history, best epoch, a fingerprint of the configuration, the base model and the
tokenised samples). Calling :meth:`BigRec.fit` again with the same data, rows, options and
``out_dir`` continues after the last finished epoch (a fit that had already finished just
restores its best adapter); a different configuration is refused with a
:class:`~recprune.errors.ConfigError`. Only the last and the best epoch directories are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from recprune.backends.base import (BACKENDS, FitResult, Recommender, check_period, check_rows,
                                    history_for, resumed_fit_seconds, training_rows)
from recprune.data.dataset import InteractionDataset, Sequences
from recprune.errors import ConfigError, DataError, RecpruneError, ScoringError
from recprune.llm.loading import cache_kv
from recprune.llm.prompts import (PromptTemplate, TokenizedSamples, build_records, template_for,
                                  tokenize_records)
from recprune.store import digest, atomic_path, save_npy, write_json
from recprune.utils.progress import progress as progress_bar

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
STATE_FILE = "bigrec_state.json"
FIT_STATE = "fit_state.json"
_FIT_VERSION = 1
_EMB_VERSION = 1
EMBED_TEXT_MODES = ("plain", "quoted")


# ----------------------------------------------------------------------------- configuration

# options that change neither the trained adapter nor the ranking (kept out of cache keys)
_RUNTIME_ONLY = ("checkpoint_minutes",)


@dataclass
class BigRecConfig:
    """Options of the BIGRec backend (``BigRec(**options)``; see the module docstring).

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


# ----------------------------------------------------------------------------- prompts

def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]


def build_prompt_records(template: PromptTemplate, titles: np.ndarray, history: Sequences,
                         targets: np.ndarray | None, *, tokenizer, cutoff_len: int | None = 512,
                         add_eos: bool = True) -> list[dict]:
    """Alpaca records for arbitrary (history, target) pairs: the generalisation of
    :func:`~recprune.llm.prompts.build_records` that validation and test prompts need.

    Parameters
    ----------
    template:
        Prompt wording.
    titles:
        ``ds.titles`` (index = item id, ``None`` = no title).
    history:
        One row per record: the history items, oldest first (all of them are listed, most
        recent ``template.max_history`` if set, then cut to ``cutoff_len``).
    targets:
        Target item per record (the response is its quoted title), or ``None`` for prompts
        with an empty response (generation).
    cutoff_len:
        The oldest history titles are dropped until ``tokenize(prompt + response) (+ eos)``
        fits; ``None`` keeps every title. With the same arguments as ``build_records`` (history
        = training items but the last, target = the last) the records are identical.
    """
    n = history.n_users
    if targets is not None:
        targets = np.asarray(targets, dtype=np.int64)
        if targets.shape != (n,):
            raise ConfigError(f"targets must have one item per history row ({n})")
    starts = history.indptr[:-1].copy()
    ends = history.indptr[1:]
    h_start = starts.copy()
    if template.max_history is not None:
        h_start = np.maximum(starts, ends - template.max_history)
    needed = np.unique(np.concatenate([history.items.astype(np.int64),
                                       targets if targets is not None else
                                       np.zeros(0, np.int64)]))
    text = {int(i): template.title_text(int(i), titles[int(i)]) for i in needed}
    q = '"' if template.quote_history else ""

    def make(i: int, first: int) -> dict:
        hist = [text[int(x)] for x in history.items[first:ends[i]]]
        out = template.output_text(text[int(targets[i])]) if targets is not None else ""
        return {"instruction": template.instruction, "input": template.input_text(hist),
                "output": out}

    first = h_start.copy()
    records = [make(i, first[i]) for i in range(n)]
    if cutoff_len is None or not n:
        return records
    prefix_text = template.shared_prefix()

    def lengths(idx: np.ndarray) -> np.ndarray:
        ts = tokenize_records([records[i] for i in idx], tokenizer, prefix_text=prefix_text,
                              cutoff_len=None, add_eos=add_eos)
        return len(ts.prefix_ids) + ts.lengths

    total = lengths(np.arange(n))
    over = np.flatnonzero(total > cutoff_len)
    if not len(over):
        return records
    # estimate the number of titles to drop from per-title token counts, then make it exact
    piece_ids = np.array(sorted(text), dtype=np.int64)
    pieces = _encode(tokenizer, [f"{template.history_sep}{q}{text[int(i)]}{q}" for i in piece_ids])
    piece_len = np.zeros(int(piece_ids.max()) + 1, dtype=np.int64)
    piece_len[piece_ids] = [len(p) for p in pieces]
    for i in over:
        hist = history.items[first[i]:ends[i]]
        drop = int(np.searchsorted(np.cumsum(piece_len[hist]), total[i] - cutoff_len))
        first[i] += min(drop, len(hist))
        records[i] = make(i, first[i])
    todo = over
    while len(todo):  # drop one more while too long
        tl = lengths(todo)
        todo = todo[(tl > cutoff_len) & (first[todo] < ends[todo])]
        for i in todo:
            first[i] += 1
            records[i] = make(i, first[i])
    todo = over[first[over] > h_start[over]]
    while len(todo):  # give back a title while the estimate dropped too many
        first[todo] -= 1
        for i in todo:
            records[i] = make(i, first[i])
        bad = lengths(todo) > cutoff_len
        for i in todo[bad]:
            first[i] += 1
            records[i] = make(i, first[i])
        todo = todo[~bad & (first[todo] > h_start[todo])]
    return records


def clean_generation(text: str) -> str:
    """The title in a generated response: the text between the first pair of double quotes (to
    the end when the closing one is missing); a response that does not start with a quote is
    cut at its first line break. Whitespace is collapsed as in the prompt's titles."""
    t = text.strip()
    if t.startswith('"'):
        end = t.find('"', 1)
        t = t[1:end] if end >= 0 else t[1:]
    else:
        t = t.split("\n", 1)[0]
    return " ".join(t.split())


# ----------------------------------------------------------------------------- small helpers

def _make_cache(kv: list[tuple[torch.Tensor, torch.Tensor]], config):
    from transformers import DynamicCache

    try:
        return DynamicCache(ddp_cache_data=kv, config=config)
    except TypeError:  # older transformers
        return DynamicCache.from_legacy_cache(tuple(kv))


def _replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` onto ``dst`` (replacing it) as atomically as the OS allows."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.rename(dst, old)
        os.rename(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(src, dst)


def _save_adapter(peft_model, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        peft_model.save_pretrained(str(tmp))
        _replace_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _quote_counts(tokenizer, vocab_size: int) -> torch.Tensor:
    """Number of double-quote characters in every token (byte-level BPE and sentencepiece
    vocabularies both spell '"' literally)."""
    toks = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))
    counts = np.zeros(vocab_size, dtype=np.int64)
    counts[:len(toks)] = [t.count('"') if isinstance(t, str) else 0 for t in toks]
    return torch.from_numpy(counts)


def _stop_after_quote_processor(quote_counts: torch.Tensor, start: int, eos_id: int):
    """A logits processor that forces eos once a beam's generated text holds two double quotes
    (the closing quote of the title): the response ends there, as the training targets do."""
    from transformers import LogitsProcessor

    class _StopAfterClosingQuote(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            gen = input_ids[:, start:]
            if gen.shape[1] == 0:
                return scores
            q = quote_counts.to(gen.device)
            done = q[gen.clamp(max=len(q) - 1)].sum(1) >= 2
            if bool(done.any()):
                scores = scores.clone()
                scores[done] = -torch.inf
                scores[done, eos_id] = 0.0
            return scores

    return _StopAfterClosingQuote()


@dataclass
class _Group:
    """One micro-batch: sample indices (into a TokenizedSamples) and its padded shape."""
    idx: np.ndarray
    T: int


# ----------------------------------------------------------------------------- the backend

@BACKENDS.register("bigrec")
class BigRec(Recommender):
    """BIGRec: LoRA fine-tuning of a causal LLM on title prompts, beam-search generation of the
    next title, L2 grounding in the LLM's embedding space (see the module docstring).

    Attributes
    ----------
    last_generations:
        The titles generated by the last :meth:`rank` call (aligned with its rows).
    last_rank_stats:
        Timings / counts of the last :meth:`rank` call.
    fit_result:
        The :class:`~recprune.backends.base.FitResult` of the last :meth:`fit` (or of the saved
        model's fit).
    """

    name = "bigrec"

    def config_dict(self) -> dict:
        """The options that define the model (runtime-only ``checkpoint_minutes`` left out, so
        it never invalidates a cached result)."""
        return {k: v for k, v in super().config_dict().items() if k not in _RUNTIME_ONLY}

    def __init__(self, **options: Any) -> None:
        try:
            self.config = BigRecConfig(**options)
        except TypeError as e:
            known = ", ".join(f.name for f in fields(BigRecConfig))
            raise ConfigError(f"bigrec: {e} (options: {known})") from None
        from recprune.llm.loading import resolve_model_source

        resolve_model_source(self.config.model)  # a missing path fails here, clearly
        self.fitted = False
        self.fit_result: FitResult | None = None
        self.last_generations: list[str] | None = None
        self.last_raw_generations: list[str] | None = None
        self.last_item_embedding_stats: dict[str, Any] = {}
        self.last_rank_stats: dict[str, Any] = {}
        self._pm = None  # the peft model
        self.tokenizer = None
        self._item_cache: dict[str, tuple[torch.Tensor, np.ndarray]] = {}
        self._quotes: torch.Tensor | None = None
        self._base_fp: str | None = None

    # -- model -----------------------------------------------------------------------------------

    def _ensure_model(self) -> None:
        if self._pm is not None:
            return
        from recprune.llm.loading import load_causal_lm

        cfg = self.config
        model, tok = load_causal_lm(cfg.model, device=cfg.device)
        self._attach(self._wrap(model), tok)

    def _wrap(self, model):
        from peft import LoraConfig, get_peft_model

        cfg = self.config
        lc = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=list(cfg.target_modules), bias="none",
                        task_type="CAUSAL_LM")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            try:
                pm = get_peft_model(model, lc)
            except ValueError as e:
                raise ConfigError(f"bigrec: cannot attach LoRA to {list(cfg.target_modules)}: "
                                  f"{e}") from None
        return pm

    def _attach(self, pm, tokenizer) -> None:
        self._pm = pm
        self.tokenizer = tokenizer
        base = pm.get_base_model()
        self._lm = base
        self._decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
        self._head = base.get_output_embeddings()
        self._softcap = getattr(base.config, "final_logit_softcapping", None)
        self.device = next(base.parameters()).device
        self._lora_params = [p for n, p in pm.named_parameters() if "lora_" in n]
        if not self._lora_params:
            raise ConfigError(f"bigrec: no LoRA module was created for "
                              f"{list(self.config.target_modules)}")
        for p in self._lora_params:
            p.requires_grad_(True)
        pm.eval()
        self._quotes = None

    def _reset_adapter(self) -> None:
        """A fresh adapter (seeded; lora_B = 0: the model equals the base model)."""
        from peft.tuners.lora import LoraLayer

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            for mod in self._pm.modules():
                if isinstance(mod, LoraLayer):
                    for name in list(mod.lora_A.keys()):
                        mod.reset_lora_parameters(name, True)
        self.fitted = False

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        logits = self._head(h)
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits.float()

    def base_fingerprint(self) -> str:
        """Fingerprint of the base model (architecture, dtype and a sample of every 8th weight
        tensor, LoRA excluded): keys the item-embedding cache and checks saved adapters."""
        if self._base_fp is None:
            self._ensure_model()
            mc = self._lm.config
            arch = {k: getattr(mc, k, None) for k in ("model_type", "hidden_size", "vocab_size",
                                                      "num_hidden_layers",
                                                      "num_attention_heads",
                                                      "num_key_value_heads", "rope_theta")}
            params = [p for n, p in self._pm.named_parameters() if "lora_" not in n]
            sample = [p.detach().flatten()[:4096].float().cpu().numpy() for p in params[::8]]
            sample.append(params[-1].detach().flatten()[-4096:].float().cpu().numpy())
            h = hashlib.sha256(json.dumps(arch, sort_keys=True, default=str).encode())
            h.update(str(next(self._lm.parameters()).dtype).encode())
            h.update(str(sum(p.numel() for p in params)).encode())
            h.update(digest(*sample).encode())
            self._base_fp = h.hexdigest()[:16]
        return self._base_fp

    def _template(self, ds: InteractionDataset) -> PromptTemplate:
        return self.config.template or template_for(getattr(ds, "name", ""))

    # -- batching ----------------------------------------------------------------------------------

    def _groups(self, ts: TokenizedSamples, idx: np.ndarray, max_n: int) -> list[_Group]:
        """Length-sorted micro-batches of ``idx``: at most ``max_n`` samples and
        ``max_micro_tokens`` padded tokens each (always at least one sample)."""
        lens = ts.lengths[idx]
        order = idx[np.argsort(lens, kind="stable")]
        lens = ts.lengths[order]
        budget = self.config.max_micro_tokens
        out, s = [], 0
        while s < len(order):
            e = s + 1
            while e < len(order) and e - s < max_n and (e - s + 1) * lens[e] <= budget:
                e += 1
            out.append(_Group(order[s:e], int(lens[e - 1])))
            s = e
        return out

    def _epoch_batches(self, ts: TokenizedSamples, epoch: int) -> list[np.ndarray]:
        """Optimizer batches of one epoch: samples of similar length together, seeded order."""
        rng = np.random.default_rng([self.config.seed, epoch])
        perm = rng.permutation(ts.n)
        order = perm[np.argsort(ts.lengths[perm], kind="stable")]
        bs = self.config.batch_size
        batches = [order[s:s + bs] for s in range(0, ts.n, bs)]
        return [batches[i] for i in rng.permutation(len(batches))]

    # -- loss ------------------------------------------------------------------------------------

    def _group_tensors(self, ts: TokenizedSamples, g: _Group, with_prefix: bool):
        """Right-padded ids (B, T[+P]) and the (row, position) of every loss target."""
        lens = ts.lengths[g.idx]
        B, T = len(g.idx), g.T
        cols = np.arange(T)
        valid = cols[None, :] < lens[:, None]
        src = np.minimum(ts.indptr[g.idx][:, None] + cols[None, :], max(len(ts.ids) - 1, 0))
        pad = self.tokenizer.pad_token_id
        ids = np.where(valid, ts.ids[src], pad if pad is not None else 0)
        tgt = valid & ts.target[src]
        if with_prefix:  # the full sequence [prefix, sample]
            P = len(ts.prefix_ids)
            ptgt = np.zeros((B, P), dtype=bool)
            if self.config.loss_on == "all" and P:
                ptgt[:, 1:] = True
            ids = np.concatenate([np.broadcast_to(ts.prefix_ids, (B, P)), ids], axis=1)
            tgt = np.concatenate([ptgt, tgt], axis=1)
            tgt[:, 0] = False
        return ids, tgt

    def _loss_pass(self, ts: TokenizedSamples, groups: list[_Group], *, grad: bool,
                   denom: float, where: str = "") -> tuple[float, int]:
        """Summed NLL of the loss tokens of ``groups`` (one optimizer batch, or the whole
        validation set); with ``grad``, backpropagates ``sum / denom`` into the LoRA parameters
        (accumulating into ``.grad``). Returns (summed NLL, tokens run through the model)."""
        dev = self.device
        P = len(ts.prefix_ids)
        share = self.config.share_prefix and P > 0
        total = 0.0
        run = 0
        n_samples = int(sum(len(g.idx) for g in groups))
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx:
            if share:
                pre_ids = torch.as_tensor(ts.prefix_ids, device=dev)[None]
                out = self._decoder(input_ids=pre_ids, use_cache=True)
                kv = cache_kv(out.past_key_values)
                h_pre = out.last_hidden_state[0]  # (P, d)
                run += P
                if grad:
                    # leaves where the prefix graph can take a gradient (e.g. layer 0's keys
                    # do not depend on q/v LoRA parameters)
                    kv_leaf = [tuple(t.detach().requires_grad_(t.requires_grad) for t in kvl)
                               for kvl in kv]
                    h_last = h_pre[-1].detach().requires_grad_(h_pre.requires_grad)
                else:
                    kv_leaf, h_last = kv, h_pre[-1]
                pre_loss = None
                if self.config.loss_on == "all" and P > 1:
                    lg = self._logits(h_pre[:-1])
                    pre_nll = F.cross_entropy(lg, pre_ids[0, 1:], reduction="sum")
                    pre_loss = pre_nll * n_samples
                    total += float(pre_loss.detach())
            for g in groups:
                B = len(g.idx)
                ids_np, tgt_np = self._group_tensors(ts, g, with_prefix=not share)
                ids = torch.as_tensor(ids_np, device=dev)
                T = ids.shape[1]
                if share:
                    cache = _make_cache([(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1))
                                         for k, v in kv_leaf], self._lm.config)
                    pos = torch.arange(P, P + T, device=dev)[None].expand(B, T)
                    h = self._decoder(input_ids=ids, position_ids=pos, past_key_values=cache,
                                      use_cache=True).last_hidden_state
                    run += B * T
                else:
                    h = self._decoder(input_ids=ids, use_cache=False).last_hidden_state
                    run += B * T
                bi, tj = np.nonzero(tgt_np)
                first = tj == 0  # only with a shared prefix: predicted by its last position
                nll = torch.zeros((), device=dev)
                if (~first).any():
                    b_t = torch.as_tensor(bi[~first], device=dev)
                    t_t = torch.as_tensor(tj[~first] - 1, device=dev)
                    labels = torch.as_tensor(ids_np[bi[~first], tj[~first]], device=dev)
                    nll = nll + F.cross_entropy(self._logits(h[b_t, t_t]), labels,
                                                reduction="sum")
                if first.any():
                    lp = self._logits(h_last[None]).log_softmax(-1)[0]
                    labels = torch.as_tensor(ids_np[bi[first], 0], device=dev)
                    nll = nll - lp[labels].sum()
                val = float(nll.detach())
                if not math.isfinite(val):
                    raise ScoringError(f"bigrec: non-finite loss ({val}) {where}; check the "
                                       "learning rate, the model weights and its dtype")
                total += val
                if grad and nll.requires_grad:
                    (nll / denom).backward()
                del h, nll
            if grad and share:
                roots, grads = [], []
                for (k, v), (kl, vl) in zip(kv, kv_leaf):
                    for t, leaf in ((k, kl), (v, vl)):
                        if leaf.grad is not None:
                            roots.append(t)
                            grads.append(leaf.grad)
                if h_last.grad is not None:
                    roots.append(h_pre[-1])
                    grads.append(h_last.grad)
                if pre_loss is not None:
                    roots.append(pre_loss / denom)
                    grads.append(torch.ones((), device=dev))
                if roots:
                    torch.autograd.backward(roots, grads)
        if not math.isfinite(total):  # e.g. the prefix's own NLL (train_on_inputs)
            raise ScoringError(f"bigrec: non-finite loss ({total}) {where}; check the learning "
                               "rate, the model weights and its dtype")
        return total, run

    # -- fit -------------------------------------------------------------------------------------

    def _tokenize(self, records: list[dict], tpl: PromptTemplate, *, add_eos: bool = True,
                  loss_on: str | None = None) -> TokenizedSamples:
        return tokenize_records(records, self.tokenizer, prefix_text=tpl.shared_prefix(),
                                cutoff_len=self.config.cutoff_len, add_eos=add_eos,
                                loss_on=loss_on or self.config.loss_on)

    def _fit_fingerprint(self, ts: TokenizedSamples, vts: TokenizedSamples | None,
                         rows: np.ndarray) -> dict:
        cfg = asdict(self.config)
        for k in ("device", "eval_batch_size", "embed_batch_size", "num_beams",
                  "max_new_tokens", "embed_text", "embedding_cache_dir", "patience", "model",
                  *_RUNTIME_ONLY):
            cfg.pop(k)
        samples = digest(ts.prefix_ids, ts.indptr, ts.ids, ts.target)[:16]
        valid = digest(vts.indptr, vts.ids, vts.target)[:16] if vts is not None else None
        return {"config": json.loads(json.dumps(cfg, default=str)),
                "base_model": self.base_fingerprint(), "rows": digest(rows)[:16],
                "train_samples": samples, "valid_samples": valid}

    def fit(self, ds: InteractionDataset, rows: np.ndarray, *, out_dir: str | Path | None = None,
            progress: bool = True) -> FitResult:
        """Fine-tune a fresh LoRA adapter on the training samples of the selected users.

        Returns a :class:`~recprune.backends.base.FitResult`: per epoch ``train_loss`` (mean
        NLL per loss token), ``valid_loss`` (same on the validation samples; ``None`` when no
        selected user has validation items), ``seconds`` and ``tokens`` (prompt tokens of the
        epoch's samples, prefix included); ``stats`` holds throughput figures
        (``train_tokens_per_s``: those prompt tokens per second of training) and counts.
        ``out_dir``: resumable per-epoch checkpoints (see the module docstring).
        """
        t_start = time.perf_counter()
        cfg = self.config
        sel = check_rows(ds, rows, "selection")
        rows_tr = training_rows(ds, sel)
        self._ensure_model()
        tpl = self._template(ds)
        self._reset_adapter()
        records = build_records(ds, rows_tr, tpl, tokenizer=self.tokenizer,
                                cutoff_len=cfg.cutoff_len, add_eos=True)
        ts = self._tokenize(records, tpl)
        vrows = sel[ds.valid.lengths[sel] > 0]
        vts = None
        if len(vrows):
            vrec = build_prompt_records(tpl, ds.titles, ds.train.subset(vrows),
                                        ds.valid.items[ds.valid.indptr[vrows]],
                                        tokenizer=self.tokenizer, cutoff_len=cfg.cutoff_len,
                                        add_eos=True)
            vts = self._tokenize(vrec, tpl)
        P = len(ts.prefix_ids)
        n_targets = ts.n_targets.astype(np.float64)
        epoch_tokens = int(ts.lengths.sum() + P * ts.n)

        params = self._lora_params
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = math.ceil(ts.n / cfg.batch_size)
        total_steps = steps_per_epoch * cfg.epochs
        warm = min(cfg.warmup_steps, total_steps // 10)  # short fits: no step wasted warming

        def lr_lambda(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            return max(0.0, (total_steps - step) / max(1, total_steps - warm))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)

        history: list[dict] = []
        best_epoch: int | None = None
        best_valid = math.inf
        best_state: dict[str, torch.Tensor] | None = None
        bad_epochs = 0
        start_epoch = 0
        stopped = False
        odir = Path(out_dir) if out_dir is not None else None
        fp = self._fit_fingerprint(ts, vts, rows_tr) if odir is not None else None
        if odir is not None:
            resumed = self._resume(odir, fp, opt, sched)
            if resumed is not None:
                (history, best_epoch, best_valid, bad_epochs, stopped, best_state) = resumed
                start_epoch = len(history)
                log.info("bigrec: resuming from %s after epoch %d", odir, start_epoch)

        train_seconds = 0.0
        train_tokens_run = 0
        padded = 0
        rng_devices = [self.device] if self.device.type == "cuda" else []
        # the caller's global RNG state is left alone (dropout is seeded per epoch below)
        with progress_bar(progress) as pb, torch.random.fork_rng(devices=rng_devices):
            task = pb.add_task("bigrec fit", total=(cfg.epochs - start_epoch) * ts.n,
                               info="")
            partial = (self._resume_partial(odir, fp, start_epoch, opt, sched)
                       if odir is not None and not stopped else None)
            partial_s = float(partial["seconds"]) if partial is not None else 0.0
            for epoch in range(start_epoch, cfg.epochs):
                if stopped:
                    break
                t0 = time.perf_counter()
                torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # LoRA dropout
                self._pm.train()
                loss_sum, tgt_sum, run, skip, before = 0.0, 0.0, 0, 0, 0.0
                padded_epoch = 0
                if partial is not None:  # continue the interrupted epoch after its last step
                    skip, before = partial["steps"], partial["seconds"]
                    loss_sum, tgt_sum, run = partial["loss_sum"], partial["tgt_sum"], partial["run"]
                    padded += partial["padded"]
                    padded_epoch = partial["padded"]
                    torch.set_rng_state(partial["torch_rng"])
                    pb.update(task, advance=partial["samples"])
                    partial = None
                t0 -= before
                last_save = time.perf_counter()
                done_samples = 0
                for step, batch in enumerate(self._epoch_batches(ts, epoch)):
                    if step < skip:
                        done_samples += len(batch)
                        continue
                    if (odir is not None and cfg.checkpoint_minutes > 0 and step > skip
                            and time.perf_counter() - last_save > 60 * cfg.checkpoint_minutes):
                        self._checkpoint_partial(odir, fp, epoch, step, done_samples, loss_sum,
                                                 tgt_sum, run, padded_epoch,
                                                 time.perf_counter() - t0, opt, sched)
                        last_save = time.perf_counter()
                    done_samples += len(batch)
                    groups = self._groups(ts, batch, cfg.micro_batch_size)
                    denom = float(n_targets[batch].sum())
                    where = f"at epoch {epoch + 1}, step {step + 1}"
                    s, r = self._loss_pass(ts, groups, grad=True, denom=max(denom, 1.0),
                                           where=where)
                    pad = sum(len(g.idx) * g.T for g in groups) - int(ts.lengths[batch].sum())
                    padded += pad
                    padded_epoch += pad
                    if cfg.max_grad_norm is not None:
                        gn = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                        if not torch.isfinite(gn):
                            raise ScoringError(f"bigrec: non-finite gradient {where}")
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                    loss_sum += s
                    tgt_sum += denom
                    run += r
                    dt = time.perf_counter() - t0
                    pb.update(task, advance=len(batch),
                              info=f"epoch {epoch + 1}/{cfg.epochs} loss "
                                   f"{loss_sum / max(tgt_sum, 1):.4f} "
                                   f"{epoch_tokens * (step + 1) / steps_per_epoch / dt:.0f} tok/s")
                train_time = time.perf_counter() - t0
                train_seconds += train_time
                train_tokens_run += run
                self._pm.eval()
                valid_loss = None
                tv = time.perf_counter()
                if vts is not None:
                    valid_loss = self._valid_loss(vts)
                rec = {"epoch": epoch + 1, "train_loss": loss_sum / max(tgt_sum, 1.0),
                       "valid_loss": valid_loss, "seconds": time.perf_counter() - t0,
                       "train_seconds": train_time, "valid_seconds": time.perf_counter() - tv,
                       "tokens": epoch_tokens, "tokens_run": run,
                       "lr_end": float(sched.get_last_lr()[0])}
                history.append(rec)
                improved = valid_loss is None or valid_loss < best_valid
                if improved:
                    best_epoch, bad_epochs = epoch + 1, 0
                    if valid_loss is not None:
                        best_valid = valid_loss
                    best_state = self._adapter_state()
                else:
                    bad_epochs += 1
                    if cfg.patience is not None and bad_epochs >= cfg.patience:
                        stopped = True
                if odir is not None:
                    self._checkpoint(odir, fp, epoch + 1, history, best_epoch, best_valid,
                                     bad_epochs, stopped, opt, sched)
                    shutil.rmtree(odir / "partial", ignore_errors=True)
                pb.update(task, info=f"epoch {epoch + 1}: train {rec['train_loss']:.4f}"
                          + (f" valid {valid_loss:.4f}" if valid_loss is not None else ""))
        if best_state is not None:
            self._load_adapter_state(best_state)
        self._pm.eval()
        self.fitted = True
        this_process = time.perf_counter() - t_start
        seconds = resumed_fit_seconds(this_process, history, start_epoch, partial_s)
        n_done = len(history) - start_epoch
        stats = {
            "n_train": int(ts.n), "n_valid": int(vts.n if vts is not None else 0),
            "n_selected": int(len(sel)), "prefix_tokens": P,
            "mean_sample_tokens": float(P + ts.lengths.mean()),
            "train_tokens_per_s": (epoch_tokens * n_done / train_seconds
                                   if train_seconds > 0 else None),
            "tokens_run_per_s": train_tokens_run / train_seconds if train_seconds > 0 else None,
            "padding_fraction": (padded / max(1, epoch_tokens * n_done)) if n_done else None,
            "share_prefix": bool(cfg.share_prefix), "steps_per_epoch": steps_per_epoch,
            "resumed_after_epoch": start_epoch or None, "stopped_early": stopped,
            "seconds_this_process": this_process,
            "n_truncated": int(ts.n_truncated),
        }
        self.fit_result = FitResult(history=history, best_epoch=best_epoch, seconds=seconds,
                                    stats=stats)
        return self.fit_result

    def _valid_loss(self, vts: TokenizedSamples) -> float:
        """Mean NLL per loss token over the validation samples (no gradient, prefix once)."""
        groups = self._groups(vts, np.arange(vts.n), max(self.config.eval_batch_size,
                                                         self.config.micro_batch_size))
        denom = float(vts.n_targets.sum())
        s, _ = self._loss_pass(vts, groups, grad=False, denom=denom, where="(validation)")
        return s / max(denom, 1.0)

    def _adapter_state(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self._pm).items()}

    def _load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        res = set_peft_model_state_dict(self._pm, state)
        bad = [k for k in getattr(res, "unexpected_keys", []) if "lora_" in k]
        if bad:
            raise DataError(f"bigrec: adapter weights do not fit the model ({bad[:3]})")

    def _checkpoint(self, odir: Path, fp: dict, epoch: int, history: list[dict],
                    best_epoch: int | None, best_valid: float, bad_epochs: int, stopped: bool,
                    opt, sched) -> None:
        edir = odir / f"epoch_{epoch:03d}"
        _save_adapter(self._pm, edir / ADAPTER_DIR)
        with atomic_path(edir / "optim.pt") as tmp:
            torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp)
        write_json(odir / FIT_STATE, {
            "kind": "recprune.bigrec.fit", "version": _FIT_VERSION, "fingerprint": fp,
            "history": history, "best_epoch": best_epoch,
            "best_valid": best_valid if math.isfinite(best_valid) else None,
            "bad_epochs": bad_epochs, "stopped": stopped, "epochs_done": epoch})
        keep = {f"epoch_{epoch:03d}", f"epoch_{best_epoch or 0:03d}"}
        for d in odir.glob("epoch_*"):
            if d.is_dir() and d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)

    def _checkpoint_partial(self, odir: Path, fp: dict, epoch: int, steps: int, samples: int,
                            loss_sum: float, tgt_sum: float, run: int, padded: int,
                            seconds: float, opt, sched) -> None:
        """Mid-epoch checkpoint: ``steps`` optimizer steps of (0-based) ``epoch`` done."""
        pdir = odir / "partial"
        tmp = odir / "partial.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        _save_adapter(self._pm, tmp / ADAPTER_DIR)
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "torch_rng": torch.get_rng_state()}, tmp / "optim.pt")
        write_json(tmp / "partial.json", {
            "fingerprint": fp, "epoch": epoch, "steps": steps, "samples": samples,
            "loss_sum": loss_sum, "tgt_sum": tgt_sum, "run": run, "padded": padded,
            "seconds": seconds})
        shutil.rmtree(pdir, ignore_errors=True)
        tmp.rename(pdir)  # the directory appears complete or not at all

    def _resume_partial(self, odir: Path, fp: dict, epoch: int, opt, sched) -> dict | None:
        """Load a mid-epoch checkpoint of (0-based) ``epoch`` of this fit, if there is one."""
        pdir = odir / "partial"
        try:
            meta = json.loads((pdir / "partial.json").read_text())
        except (OSError, ValueError):
            return None
        if meta.get("fingerprint") != fp or meta.get("epoch") != epoch:
            return None
        from safetensors.torch import load_file

        self._load_adapter_state(load_file(
            str(pdir / ADAPTER_DIR / "adapter_model.safetensors"), device=str(self.device)))
        st = torch.load(pdir / "optim.pt", map_location=self.device, weights_only=True)
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        meta["torch_rng"] = st["torch_rng"]
        log.info("bigrec: resuming epoch %d after step %d", epoch + 1, meta["steps"])
        return meta

    def _resume(self, odir: Path, fp: dict, opt, sched):
        spath = odir / FIT_STATE
        if not spath.is_file():
            return None
        try:
            state = json.loads(spath.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{spath}: unreadable fit state ({e}); delete {odir} to start "
                              "over") from None
        if state.get("kind") != "recprune.bigrec.fit" or state.get("version") != _FIT_VERSION:
            raise ConfigError(f"{spath}: not a recprune BIGRec fit state of this version; "
                              f"delete {odir} to start over")
        if state.get("fingerprint") != fp:
            have, want = state.get("fingerprint") or {}, fp
            diff = [k for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
            raise ConfigError(f"bigrec: {odir} holds checkpoints of a different fit (differs in: "
                              f"{', '.join(diff)}); use another out_dir or delete it")
        epoch = int(state["epochs_done"])
        from safetensors.torch import load_file

        def load(e: int) -> dict[str, torch.Tensor]:
            f = odir / f"epoch_{e:03d}" / ADAPTER_DIR / "adapter_model.safetensors"
            if not f.is_file():
                raise ConfigError(f"bigrec: checkpoint {f} is missing; delete {odir} to start "
                                  "over")
            return load_file(str(f), device=str(self.device))

        self._load_adapter_state(load(epoch))
        best_state = None
        if state.get("best_epoch"):
            best_state = load(int(state["best_epoch"]))
            best_state = {k: v.clone() for k, v in best_state.items()}
        opt_state = torch.load(odir / f"epoch_{epoch:03d}" / "optim.pt",
                               map_location=self.device, weights_only=True)
        opt.load_state_dict(opt_state["optimizer"])
        sched.load_state_dict(opt_state["scheduler"])
        bv = state.get("best_valid")
        return (state["history"], state.get("best_epoch"),
                math.inf if bv is None else float(bv), int(state.get("bad_epochs", 0)),
                bool(state.get("stopped")), best_state)

    # -- generation ------------------------------------------------------------------------------

    def _prefix_kv(self, prefix_ids: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
        ids = torch.as_tensor(prefix_ids, device=self.device)[None]
        out = self._decoder(input_ids=ids, use_cache=True)
        return [(k.detach(), v.detach()) for k, v in cache_kv(out.past_key_values)]

    def _generation_config(self):
        from transformers import GenerationConfig

        tok = self.tokenizer
        return GenerationConfig(num_beams=self.config.num_beams, do_sample=False,
                                num_return_sequences=1, max_new_tokens=self.config.max_new_tokens,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                bos_token_id=tok.bos_token_id)

    @torch.no_grad()
    def _generate_batch(self, ts: TokenizedSamples, idx: np.ndarray,
                        prefix_kv: list | None) -> list[str]:
        """Generated responses (decoded, special tokens dropped) for prompts ``idx``."""
        from transformers import LogitsProcessorList

        dev = self.device
        nb = self.config.num_beams
        P = len(ts.prefix_ids)
        lens = ts.lengths[idx]
        B, L = len(idx), int(lens.max())
        pad = self.tokenizer.pad_token_id
        rest = np.full((B, L), pad, dtype=np.int64)
        mrest = np.zeros((B, L), dtype=np.int64)
        for j, i in enumerate(idx):  # left padding of the sample-specific tokens
            s, e = ts.indptr[i], ts.indptr[i + 1]
            rest[j, L - (e - s):] = ts.ids[s:e]
            mrest[j, L - (e - s):] = 1
        full = np.concatenate([np.broadcast_to(ts.prefix_ids, (B, P)), rest], axis=1)
        mask = np.concatenate([np.ones((B, P), dtype=np.int64), mrest], axis=1)
        ids_t = torch.as_tensor(full, device=dev)
        mask_t = torch.as_tensor(mask, device=dev)
        if self._quotes is None:
            self._quotes = _quote_counts(self.tokenizer, self._lm.config.vocab_size)
        procs = LogitsProcessorList([_stop_after_quote_processor(
            self._quotes, full.shape[1], int(self.tokenizer.eos_token_id))])
        kwargs = {}
        if prefix_kv is not None and P:
            cache = _make_cache([(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1))
                                 for k, v in prefix_kv], self._lm.config)
            if L > 1:  # pre-fill the own tokens but the last, once per prompt
                pos = np.where(mrest > 0, P + np.cumsum(mrest, 1) - 1, 0)
                self._decoder(input_ids=ids_t[:, P:P + L - 1],
                              attention_mask=mask_t[:, :P + L - 1],
                              position_ids=torch.as_tensor(pos[:, :-1], device=dev),
                              past_key_values=cache, use_cache=True)
            kv = cache_kv(cache)
            if nb > 1:
                kv = [(k.repeat_interleave(nb, 0), v.repeat_interleave(nb, 0)) for k, v in kv]
            else:
                kv = [(k.contiguous(), v.contiguous()) for k, v in kv]
            kwargs["past_key_values"] = _make_cache(kv, self._lm.config)
        out = self._lm.generate(input_ids=ids_t, attention_mask=mask_t,
                                generation_config=self._generation_config(),
                                logits_processor=procs, **kwargs)
        new = out[:, full.shape[1]:]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def generate(self, ds: InteractionDataset, rows: np.ndarray, *, period: str = "test",
                 progress: bool = True) -> list[str]:
        """Generated titles (cleaned, :func:`clean_generation`) for the test prompts of ``rows``."""
        self._ensure_model()
        rows = check_rows(ds, rows)
        hist = history_for(ds, period).subset(rows)
        tpl = self._template(ds)
        recs = build_prompt_records(tpl, ds.titles, hist, None, tokenizer=self.tokenizer,
                                    cutoff_len=self.config.cutoff_len, add_eos=False)
        ts = tokenize_records(recs, self.tokenizer, prefix_text=tpl.shared_prefix(),
                              cutoff_len=None, add_eos=False)
        self._pm.eval()
        order = np.argsort(ts.lengths, kind="stable")
        raw: list[str | None] = [None] * ts.n
        bs = self.config.eval_batch_size
        with torch.no_grad():
            prefix_kv = self._prefix_kv(ts.prefix_ids) if self.config.share_prefix and \
                len(ts.prefix_ids) else None
        with progress_bar(progress) as pb:
            task = pb.add_task("bigrec generate", total=ts.n, info="")
            t0 = time.perf_counter()
            for s in range(0, ts.n, bs):
                idx = order[s:s + bs]
                for i, text in zip(idx, self._generate_batch(ts, idx, prefix_kv)):
                    raw[i] = text
                done = min(s + bs, ts.n)
                pb.update(task, advance=len(idx),
                          info=f"{done / (time.perf_counter() - t0):.2f} prompts/s")
        self.last_raw_generations = raw
        return [clean_generation(t) for t in raw]

    # -- embeddings / grounding ------------------------------------------------------------------

    def _embed_texts(self, texts: list[str]) -> list[str]:
        if self.config.embed_text == "quoted":
            return [f'"{t}"' for t in texts]
        return list(texts)

    @torch.no_grad()
    def embed(self, texts: list[str], *, progress: bool = True,
              desc: str = "bigrec embed") -> torch.Tensor:
        """Base-model (adapter disabled) embedding of each text: the final normed hidden state
        of its last token, (n, hidden) float32 on the model's device. Texts are tokenised with
        the tokenizer's default special tokens (as the reference does); an empty text is
        embedded as the eos token. Batches of similar length, right padded (causal attention:
        padding after the last token cannot change it), no attention mask needed."""
        self._ensure_model()
        dev = self.device
        tok = self.tokenizer
        ids = tok(list(texts), return_attention_mask=False)["input_ids"] if texts else []
        eos = int(tok.eos_token_id)
        ids = [x if len(x) else [eos] for x in ids]
        lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(lens, kind="stable")
        d = self._lm.config.hidden_size
        out = torch.empty(len(ids), d, dtype=torch.float32, device=dev)
        bs = self.config.embed_batch_size
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        was_training = self._pm.training
        self._pm.eval()
        try:
            with self._pm.disable_adapter(), progress_bar(progress) as pb:
                task = pb.add_task(desc, total=len(ids), info="")
                for s in range(0, len(ids), bs):
                    idx = order[s:s + bs]
                    T = int(lens[idx].max())
                    batch = np.full((len(idx), T), pad, dtype=np.int64)
                    for j, i in enumerate(idx):
                        batch[j, :lens[i]] = ids[i]
                    h = self._decoder(input_ids=torch.as_tensor(batch, device=dev),
                                      use_cache=False).last_hidden_state
                    last = torch.as_tensor(lens[idx] - 1, device=dev)
                    out[torch.as_tensor(idx, device=dev)] = \
                        h[torch.arange(len(idx), device=dev), last].float()
                    pb.update(task, advance=len(idx))
        finally:
            if was_training:
                self._pm.train()
        return out

    def _item_key(self, texts: list[str]) -> str:
        ids = self.tokenizer(texts, return_attention_mask=False)["input_ids"] if texts else []
        lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter((t for x in ids for t in x), dtype=np.int64, count=int(lens.sum()))
        return f"{self.base_fingerprint()}-{digest(lens, flat)[:16]}"

    def _embedding_dir(self) -> Path | None:
        c = self.config.embedding_cache_dir
        if c is not None and str(c).lower() in ("off", "none", ""):
            return None
        if c is not None:
            return Path(c).expanduser()
        from recprune.llm.loading import default_cache_root

        return default_cache_root().parent / "embeddings"

    def item_embeddings(self, ds: InteractionDataset, *, progress: bool = True
                        ) -> tuple[torch.Tensor, np.ndarray]:
        """Embeddings of the distinct title texts and, per item id, its row (-1: no title).

        Returns ``(emb (u, hidden), inv (n_items + 1,))``. Cached in memory and on disk (see
        :attr:`BigRecConfig.embedding_cache_dir`), keyed by the base-model fingerprint and the
        token ids of the texts."""
        self._ensure_model()
        tpl = self._template(ds)
        titled = np.zeros(ds.n_items + 1, dtype=bool)
        texts_all = np.empty(ds.n_items + 1, dtype=object)
        for i in range(1, ds.n_items + 1):
            t = ds.titles[i]
            if t is not None and str(t).strip():
                texts_all[i] = tpl.title_text(i, t)
                titled[i] = True
        inv = np.full(ds.n_items + 1, -1, dtype=np.int64)
        if not titled.any():
            raise DataError("bigrec: no item has a title; titles are needed to ground the "
                            "generated text", path=getattr(ds, "source", None) or None)
        uniq, pos = np.unique(texts_all[titled].astype(str), return_inverse=True)
        inv[titled] = pos
        texts = self._embed_texts(list(uniq))
        key = self._item_key(texts) + f"-{self.config.embed_text}"
        if key in self._item_cache:
            return self._item_cache[key][0], inv
        emb = None
        cdir = self._embedding_dir()
        path = cdir / f"bigrec-items-{key}.npy" if cdir is not None else None
        t0 = time.perf_counter()
        if path is not None and path.is_file():
            try:
                arr = np.load(path, allow_pickle=False)
                if arr.shape == (len(texts), self._lm.config.hidden_size) and \
                        np.isfinite(arr).all():
                    emb = torch.from_numpy(arr).to(self.device)
                else:
                    log.warning("bigrec: item-embedding cache %s has a wrong shape; recomputing",
                                path)
            except (OSError, ValueError, EOFError) as e:
                log.warning("bigrec: item-embedding cache %s unreadable (%s); recomputing",
                            path, e)
        computed = emb is None
        if emb is None:
            emb = self.embed(texts, progress=progress, desc="bigrec item embeddings")
            if path is not None:
                try:
                    save_npy(path, emb.cpu().numpy())
                    write_json(path.with_suffix(".json"), {
                        "kind": "recprune.bigrec.item_embeddings", "version": _EMB_VERSION,
                        "dataset": getattr(ds, "name", ""), "n_texts": len(texts),
                        "n_items": int(ds.n_items), "embed_text": self.config.embed_text,
                        "base_model": self.base_fingerprint(),
                        "model_source": getattr(self._lm, "recprune_source", None),
                        "seconds": time.perf_counter() - t0})
                except OSError as e:
                    log.warning("bigrec: cannot write the item-embedding cache %s: %s", path, e)
        self.last_item_embedding_stats = {"seconds": time.perf_counter() - t0,
                                          "computed": computed, "n_texts": len(texts),
                                          "path": str(path) if path else None}
        self._item_cache = {key: (emb, inv)}
        return emb, inv

    # -- rank --------------------------------------------------------------------------------------

    def rank(self, ds: InteractionDataset, rows: np.ndarray, k: int, *, period: str = "test",
             progress: bool = True) -> np.ndarray:
        """(len(rows), k) item ids, best first: generate a title per user, rank all items by
        the L2 distance of their title embedding to the generated text's; history items
        excluded, untitled items after all titled ones, -1 padded (see the module docstring).
        """
        from recprune.evaluation.metrics import topk_items

        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"bigrec: k must be an integer >= 1, got {k!r}")
        k = int(k)
        check_period(period)
        rows = check_rows(ds, rows)
        self._ensure_model()
        t0 = time.perf_counter()
        emb, inv = self.item_embeddings(ds, progress=progress)
        t1 = time.perf_counter()
        gens = self.generate(ds, rows, period=period, progress=progress)
        t2 = time.perf_counter()
        self.last_generations = gens
        uniq, ginv = np.unique(np.asarray(self._embed_texts(gens), dtype=object).astype(str),
                               return_inverse=True)
        gemb = self.embed(list(uniq), progress=False)
        hist = history_for(ds, period)
        n_cols = ds.n_items + 1
        kk = min(k, n_cols)
        out = np.full((len(rows), k), -1, dtype=np.int64)
        titled = torch.as_tensor(np.flatnonzero(inv >= 0), device=self.device)
        untitled = torch.as_tensor(np.flatnonzero(inv < 0)[1:], device=self.device)
        col = torch.as_tensor(inv[inv >= 0], device=self.device)
        e2 = emb.pow(2).sum(1)
        chunk = 256
        for s in range(0, len(rows), chunk):
            g = gemb[torch.as_tensor(ginv[s:s + chunk], device=self.device)]
            d2 = g.pow(2).sum(1, keepdim=True) + e2[None] - 2.0 * (g @ emb.T)
            dist = d2.clamp_min_(0).sqrt_()
            scores = torch.full((len(g), n_cols), -torch.inf, device=self.device)
            scores[:, titled] = -dist[:, col]
            if len(untitled):
                scores[:, untitled] = scores[:, titled].min(1, keepdim=True).values - 1.0
            scores = scores.cpu()
            top = topk_items(scores, kk, exclude=hist, rows=rows[s:s + chunk])
            vals = torch.gather(scores, 1, top)
            top[~torch.isfinite(vals)] = -1
            out[s:s + len(g), :kk] = top.numpy()
        self.last_rank_stats = {"item_embedding_seconds": t1 - t0, "generation_seconds": t2 - t1,
                                "grounding_seconds": time.perf_counter() - t2,
                                "prompts_per_s": len(rows) / (t2 - t1) if t2 > t1 else None,
                                "n_prompts": int(len(rows)), "num_beams": self.config.num_beams,
                                "share_prefix": self.config.share_prefix}
        return out

    # -- persistence -----------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """``backend.json`` (config), ``bigrec_state.json`` (fitted flag, base-model fingerprint,
        fit summary) and, when fitted, the LoRA adapter (``adapter/``: a few MB; the base model
        is not copied, it is reloaded from ``config.model``)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {"fitted": self.fitted}
        if self.fitted:
            self._ensure_model()
            _save_adapter(self._pm, path / ADAPTER_DIR)
            state["base_model"] = self.base_fingerprint()
            state["model_source"] = getattr(self._lm, "recprune_source", None)
        elif (path / ADAPTER_DIR).exists():
            shutil.rmtree(path / ADAPTER_DIR)
        if self.fit_result is not None:
            state["fit"] = self.fit_result.to_dict()
        write_json(path / STATE_FILE, state)
        self._write_manifest(path)

    @classmethod
    def _load(cls, path: Path, *, device: str = "auto") -> BigRec:
        manifest = json.loads((path / "backend.json").read_text())
        config = dict(manifest.get("config") or {})
        if device != "auto":
            config["device"] = device
        try:
            m = cls(**config)
        except RecpruneError as e:
            raise DataError(f"bad BIGRec configuration: {e}", path=str(path / "backend.json")
                            ) from None
        try:
            state = json.loads((path / STATE_FILE).read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"unreadable BIGRec state ({e})", path=str(path / STATE_FILE)
                            ) from None
        if not state.get("fitted"):
            return m
        adir = path / ADAPTER_DIR
        if not (adir / "adapter_config.json").is_file():
            raise DataError("the saved BIGRec model has no LoRA adapter", path=str(adir))
        from peft import PeftModel

        from recprune.llm.loading import load_causal_lm

        base, tok = load_causal_lm(m.config.model, device=m.config.device)
        try:
            pm = PeftModel.from_pretrained(base, str(adir), is_trainable=True)
        except Exception as e:  # noqa: BLE001 - peft/safetensors raise many kinds
            raise DataError(f"cannot load the LoRA adapter: {e}", path=str(adir)) from None
        m._attach(pm, tok)
        want = state.get("base_model")
        if want is not None and m.base_fingerprint() != want:
            raise DataError(f"the adapter was trained on another base model (fingerprint {want}"
                            f", {state.get('model_source')}); config.model="
                            f"{m.config.model!r} loads {m.base_fingerprint()}",
                            path=str(path / STATE_FILE))
        m.fitted = True
        if state.get("fit"):
            m.fit_result = FitResult(**state["fit"])
        return m


__all__ = ["BigRec", "BigRecConfig", "build_prompt_records", "clean_generation"]
