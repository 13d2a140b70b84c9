"""Grounding: every item is ranked by the L2 distance of its title's embedding to the generated
text's (smaller = better).

Texts are embedded by the LLM (:func:`embed`): the final, normed hidden state of the last
token, as BIGRec's ``hidden_states[-1][:, -1]``. As in the reference release
(``data/embedding.ipynb`` and ``data/game/evaluate.py`` of BIGRec), both embeddings come from
the **base** model (the LoRA adapter disabled), and both texts are the plain title without its
quotes (``embed_text="plain"``; ``"quoted"`` embeds ``"<title>"`` as the response is written
instead).

Hence the item embeddings depend only on the base model and the titles: :class:`ItemEmbeddings`
computes them once and keeps them in memory and in a :class:`~recprune.store.RunStore`
(``<recprune cache>/embeddings``, see :attr:`BigRecConfig.embedding_cache_dir
<recprune.backends.bigrec.BigRecConfig>`) as the array ``bigrec-items-<key>``, whose spec is the
base-model fingerprint, the digest of the texts' token ids and ``embed_text``.

Items that share a title are embedded once and stay distinct items with equal distances: ties
are broken by item id, so they are adjacent in the ranking (the reference maps titles to ids
with a dict and silently merges them). Items without a title cannot be grounded: they are
ranked after every titled item (by id). History items are never returned (:func:`ground`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recprune.backends.bigrec.config import BigRecConfig
from recprune.backends.bigrec.model import LoraLM
from recprune.data.dataset import InteractionDataset, Sequences
from recprune.errors import ConfigError, DataError
from recprune.llm.loading import default_cache_root
from recprune.llm.prompts import PromptTemplate
from recprune.store import RunStore, digest, fingerprint
from recprune.utils.progress import progress as progress_bar

log = logging.getLogger(__name__)

_ROWS_PER_CHUNK = 256  # users whose distances to every item are computed together


def embedding_texts(texts: list[str], mode: str) -> list[str]:
    """The texts as they are embedded (``mode``: ``embed_text``)."""
    return [f'"{t}"' for t in texts] if mode == "quoted" else list(texts)


@torch.no_grad()
def embed(lm: LoraLM, texts: list[str], *, batch_size: int, progress: bool = True,
          desc: str = "bigrec embed") -> torch.Tensor:
    """Base-model (adapter disabled) embedding of each text: the final normed hidden state
    of its last token, (n, hidden) float32 on the model's device. Texts are tokenised with
    the tokenizer's default special tokens (as the reference does); an empty text is
    embedded as the eos token. Batches of similar length, right padded (causal attention:
    padding after the last token cannot change it), no attention mask needed."""
    dev, tok = lm.device, lm.tokenizer
    ids = tok(list(texts), return_attention_mask=False)["input_ids"] if texts else []
    eos = int(tok.eos_token_id)
    ids = [x if len(x) else [eos] for x in ids]
    lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(lens, kind="stable")
    out = torch.empty(len(ids), lm.base.config.hidden_size, dtype=torch.float32, device=dev)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    was_training = lm.peft.training
    lm.peft.eval()
    try:
        with lm.peft.disable_adapter(), progress_bar(progress) as pb:
            task = pb.add_task(desc, total=len(ids), info="")
            for s in range(0, len(ids), batch_size):
                idx = order[s:s + batch_size]
                batch = np.full((len(idx), int(lens[idx].max())), pad, dtype=np.int64)
                for j, i in enumerate(idx):
                    batch[j, :lens[i]] = ids[i]
                h = lm.decoder(input_ids=torch.as_tensor(batch, device=dev),
                               use_cache=False).last_hidden_state
                last = torch.as_tensor(lens[idx] - 1, device=dev)
                out[torch.as_tensor(idx, device=dev)] = \
                    h[torch.arange(len(idx), device=dev), last].float()
                pb.update(task, advance=len(idx))
    finally:
        if was_training:
            lm.peft.train()
    return out


def title_texts(ds: InteractionDataset, template: PromptTemplate) -> tuple[list[str], np.ndarray]:
    """The distinct title texts of the items (sorted) and, per item id, the index of its text
    (``-1``: no title; item 0 included, so the array has ``n_items + 1`` entries)."""
    titled = np.zeros(ds.n_items + 1, dtype=bool)
    texts_all = np.empty(ds.n_items + 1, dtype=object)
    for i in range(1, ds.n_items + 1):
        t = ds.titles[i]
        if t is not None and str(t).strip():
            texts_all[i] = template.title_text(i, t)
            titled[i] = True
    if not titled.any():
        raise DataError("bigrec: no item has a title; titles are needed to ground the "
                        "generated text", path=getattr(ds, "source", None) or None)
    uniq, pos = np.unique(texts_all[titled].astype(str), return_inverse=True)
    inv = np.full(ds.n_items + 1, -1, dtype=np.int64)
    inv[titled] = pos
    return list(uniq), inv


class ItemEmbeddings:
    """The item-title embeddings of the base model, cached (see the module docstring).

    ``last_stats``: seconds, whether they were computed and where they are stored, of the last
    call that did not find them in memory."""

    def __init__(self, config: BigRecConfig) -> None:
        self.config = config
        self.last_stats: dict[str, Any] = {}
        self._memo: tuple[str, torch.Tensor] | None = None

    def store(self) -> RunStore | None:
        """The run store of the cache (``None``: ``embedding_cache_dir="off"``)."""
        c = self.config.embedding_cache_dir
        if c is not None and str(c).lower() in ("off", "none", ""):
            return None
        if c is None:
            return RunStore(default_cache_root().parent / "embeddings", what="embedding cache")
        return RunStore(Path(c).expanduser(), what="embedding cache")

    def get(self, lm: LoraLM, ds: InteractionDataset, template: PromptTemplate, *,
            progress: bool = True) -> tuple[torch.Tensor, np.ndarray]:
        """``(emb (u, hidden), inv (n_items + 1,))``: the embeddings of the distinct title
        texts and, per item id, its row in ``emb`` (-1: no title)."""
        uniq, inv = title_texts(ds, template)
        texts = embedding_texts(uniq, self.config.embed_text)
        ids = lm.tokenizer(texts, return_attention_mask=False)["input_ids"]
        lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter((t for x in ids for t in x), dtype=np.int64, count=int(lens.sum()))
        spec = {"base_model": lm.base_fingerprint(), "token_ids": digest(lens, flat)[:16],
                "embed_text": self.config.embed_text}
        name = f"bigrec-items-{fingerprint(spec)}"
        if self._memo is not None and self._memo[0] == name:
            return self._memo[1], inv
        store = self.store()
        t0 = time.perf_counter()
        emb = self._load(store, name, spec, (len(texts), lm.base.config.hidden_size), lm.device)
        computed = emb is None
        if emb is None:
            emb = embed(lm, texts, batch_size=self.config.embed_batch_size, progress=progress,
                        desc="bigrec item embeddings")
            if store is not None:
                try:
                    store.save_array(name, emb.cpu().numpy(), spec,
                                     dataset=getattr(ds, "name", ""), n_items=int(ds.n_items),
                                     model_source=lm.source,
                                     seconds=time.perf_counter() - t0)
                except (OSError, ConfigError) as e:
                    log.warning("bigrec: cannot write the item-embedding cache %s: %s",
                                store.path(name), e)
        self.last_stats = {"seconds": time.perf_counter() - t0, "computed": computed,
                           "n_texts": len(texts),
                           "path": str(store.path(f"{name}.npy")) if store else None}
        self._memo = (name, emb)
        return emb, inv

    @staticmethod
    def _load(store: RunStore | None, name: str, spec: dict, shape: tuple[int, int],
              device: torch.device) -> torch.Tensor | None:
        arr = store.load_array(name, spec) if store is not None else None
        if arr is None:
            return None
        if arr.shape != shape or not np.isfinite(arr).all():
            log.warning("bigrec: item-embedding cache %s has a wrong shape or non-finite "
                        "values; recomputing", store.path(name))
            return None
        return torch.from_numpy(arr).to(device)


@torch.no_grad()
def ground(lm: LoraLM, config: BigRecConfig, generations: list[str], emb: torch.Tensor,
           inv: np.ndarray, history: Sequences, rows: np.ndarray, k: int) -> np.ndarray:
    """(len(rows), k) item ids, best first: all items by the L2 distance of their title
    embedding (``emb`` rows, ``inv`` per item id) to the embedding of the row's generated
    text; ``history`` items excluded, untitled items after all titled ones, -1 padded."""
    from recprune.evaluation.metrics import topk_items

    dev = lm.device
    uniq, ginv = np.unique(np.asarray(embedding_texts(generations, config.embed_text),
                                      dtype=object).astype(str), return_inverse=True)
    gemb = embed(lm, list(uniq), batch_size=config.embed_batch_size, progress=False)
    n_cols = len(inv)
    kk = min(k, n_cols)
    out = np.full((len(rows), k), -1, dtype=np.int64)
    titled = torch.as_tensor(np.flatnonzero(inv >= 0), device=dev)
    untitled = torch.as_tensor(np.flatnonzero(inv < 0)[1:], device=dev)
    col = torch.as_tensor(inv[inv >= 0], device=dev)
    e2 = emb.pow(2).sum(1)
    for s in range(0, len(rows), _ROWS_PER_CHUNK):
        g = gemb[torch.as_tensor(ginv[s:s + _ROWS_PER_CHUNK], device=dev)]
        d2 = g.pow(2).sum(1, keepdim=True) + e2[None] - 2.0 * (g @ emb.T)
        dist = d2.clamp_min_(0).sqrt_()
        scores = torch.full((len(g), n_cols), -torch.inf, device=dev)
        scores[:, titled] = -dist[:, col]
        if len(untitled):
            scores[:, untitled] = scores[:, titled].min(1, keepdim=True).values - 1.0
        scores = scores.cpu()
        top = topk_items(scores, kk, exclude=history, rows=rows[s:s + _ROWS_PER_CHUNK])
        vals = torch.gather(scores, 1, top)
        top[~torch.isfinite(vals)] = -1
        out[s:s + len(g), :kk] = top.numpy()
    return out
