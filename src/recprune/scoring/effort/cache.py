"""The on-disk cache of effort scores, resumable chunk by chunk.

Scores are stored per chunk of ``chunk_size`` samples (in length order) as a run-store
:class:`~recprune.store.ChunkedArray` under ``<cache_dir>/chunks/``: ``chunk_00012.npy`` files
beside a manifest holding the spec they were computed from (:func:`cache_spec`: the scorer's
configuration, the model / adapter / sample fingerprints of :func:`scores_fingerprint` and the
scored rows). A rerun loads the chunks present and computes only the missing ones; a
directory made with another spec is refused with a :class:`~recprune.errors.ConfigError`
naming what differs.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from recprune.errors import ConfigError
from recprune.llm.causal_lm import CausalLMParts
from recprune.llm.lora import LoraModule, base_parameters
from recprune.llm.prompts import TokenizedSamples
from recprune.scoring.effort.config import EffortConfig
from recprune.store import ChunkedArray, RunStore, canonical, digest, rows_key

log = logging.getLogger(__name__)

#: the chunk directory's name inside a cache directory
CHUNKS = "chunks"
#: part of every spec: raise it when the scores change for an unchanged configuration
SPEC_VERSION = 2


def scores_fingerprint(config: EffortConfig, lm: CausalLMParts, scored: list[LoraModule],
                       n_layers: int, ts: TokenizedSamples) -> dict:
    """What the effort scores of ``ts`` depend on: the configuration (less its speed-only
    options), the model (architecture, dtype, a sample of its weights), the scored adapter's
    initialisation and the tokenised samples."""
    cfg = dataclasses.asdict(config)
    for k in ("max_batch_tokens", "packing"):  # speed only
        cfg.pop(k)
    cfg["template"] = None  # covered by the samples' token ids
    base = base_parameters(lm.model)
    pick = [base[0], base[len(base) // 2], base[-1]]
    wsha = digest(*[p.detach().flatten()[:4096].float().cpu().numpy() for p in pick])
    lsha = digest(*[torch.cat([m.A.weight.detach().flatten()[:2048],
                               m.B.weight.detach().flatten()[:2048]]).float().cpu().numpy()
                    for m in scored])
    mc = lm.config
    model = {"model_type": getattr(mc, "model_type", None), "n_layers": n_layers,
             "hidden_size": getattr(mc, "hidden_size", None),
             "vocab_size": getattr(mc, "vocab_size", None), "dtype": str(lm.dtype),
             "weights_sha256": wsha[:16], "lora_init_sha256": lsha[:16]}
    samples = {"n": ts.n, "tokens_sha256": digest(ts.prefix_ids, ts.indptr, ts.ids,
                                                  ts.target, ts.n_targets)[:16]}
    return {"config": canonical(cfg), "model": model, "samples": samples}


def cache_spec(fingerprint: dict, rows: np.ndarray) -> dict:
    """What a cache of the scores of ``rows`` depends on (``fingerprint``: the scorer's)."""
    return {"kind": "recprune.effort", "version": SPEC_VERSION, **fingerprint,
            "rows": {"n": len(rows), "key": rows_key(rows)}}


def open_cache(cache_dir: str | Path, spec: dict, n_chunks: int) -> ChunkedArray:
    """The score chunks in ``cache_dir`` made from ``spec`` (an empty store when new)."""
    return RunStore(cache_dir, what="effort cache").chunks(CHUNKS, spec, n_chunks)


def open_finished(cache_dir: str | Path, spec: dict, n_chunks: int) -> ChunkedArray:
    """Like :func:`open_cache`, for reading only: refuses a directory that is no effort cache
    or holds the scores of another spec (e.g. of other rows)."""
    cdir = Path(cache_dir)
    if not (cdir / CHUNKS).is_dir():
        raise ConfigError(f"{cdir}: no {CHUNKS}/ directory, so not an effort cache")
    try:
        return open_cache(cdir, spec, n_chunks)
    except ConfigError as e:
        raise ConfigError(f"effort cache {cdir} does not hold every user's score for this "
                          f"configuration and dataset: {e}") from None


def load_chunks(store: ChunkedArray, chunks: list[np.ndarray], scores: np.ndarray, *,
                warn: bool) -> list[int]:
    """Copy every usable stored chunk ``c`` into ``scores[chunks[c]]``; return the chunks that
    are missing or unusable (unreadable, of the wrong shape, not finite), with a warning for
    the unusable ones when ``warn``."""
    absent = set(store.missing())
    todo = []
    for c, idx in enumerate(chunks):
        arr = None if c in absent else store.get(c, (len(idx),))
        if arr is None:
            if warn and c not in absent:
                log.warning("effort cache chunk %d is unreadable or of the wrong shape: "
                            "recomputing it", c)
            todo.append(c)
        else:
            scores[idx] = arr
    return todo
