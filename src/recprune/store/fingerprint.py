"""Fingerprints: what identifies a computed artifact.

Every cache key and content digest of recprune is made here, so that equal inputs always give
equal keys: :func:`fingerprint` of any configuration-like object (dataclasses, dicts, lists,
numpy arrays, paths) and :func:`digest` of arrays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def digest(*arrays: Any) -> str:
    """Hex sha256 of arrays' dtypes, shapes and bytes (tensors are moved to numpy first)."""
    h = hashlib.sha256()
    for a in arrays:
        if hasattr(a, "detach"):  # a torch tensor
            a = a.detach().cpu().numpy()
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def digest_text(*parts: str) -> str:
    """Hex sha256 of text parts joined by NUL (no separator ambiguity for NUL-free parts)."""
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


def text_digests(texts: Iterable[str]) -> np.ndarray:
    """16-byte sha256 digest of each text (an ``S16`` array): content keys of text caches."""
    return np.array([hashlib.sha256(t.encode("utf-8")).digest()[:16] for t in texts],
                    dtype="S16")


class Hasher:
    """An incremental digest over arrays and text (for weights fed in piece by piece)."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, *items: Any) -> Hasher:
        for x in items:
            self._h.update(x.encode() if isinstance(x, str) else bytes.fromhex(digest(x)))
        return self

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def canonical(obj: Any) -> Any:
    """A JSON-able form of ``obj`` with a stable order: dataclasses become dicts, tuples lists,
    numpy scalars numbers, arrays their digest, paths strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, np.ndarray) or hasattr(obj, "detach"):
        return {"digest": digest(obj)[:16]}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def fingerprint(obj: Any, length: int = 16) -> str:
    """Short hex key of ``obj`` (see :func:`canonical`): equal configurations, equal keys."""
    text = json.dumps(canonical(obj), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def rows_key(rows: Sequence[int] | np.ndarray) -> str:
    """Key of a set of dataset rows in their order."""
    return digest(np.asarray(rows, dtype=np.int64))[:16]
