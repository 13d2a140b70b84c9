"""The run store: every cache and resumable output of recprune lives in one.

A :class:`RunStore` is a directory of named artifacts. Each artifact is saved with a manifest
(``<name>.manifest.json``) holding the *spec* it was computed from (any configuration-like
object: the settings, the inputs' fingerprints) and that spec's :func:`fingerprint`. Reading an
artifact back names the spec again: it is returned only when the fingerprints match, and
:meth:`RunStore.changes` says what differs when they do not. Writes are atomic, so a killed job
leaves either the old artifact or the new one.

Long computations resume through :meth:`RunStore.chunks`: a :class:`ChunkedArray` stores one
file per finished chunk beside its manifest, so a rerun computes only the missing chunks.

    store = RunStore("runs/games/cache")
    scores = store.load_array("scores/influence", spec)
    if scores is None:
        scores = compute(...)
        store.save_array("scores/influence", scores, spec, seconds=12.5)
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from recprune.errors import ConfigError
from recprune.store.atomic import atomic_dir, make_dir, read_json, save_npy, write_json
from recprune.store.diff import describe, diff
from recprune.store.fingerprint import canonical, fingerprint

MANIFEST = ".manifest.json"


class RunStore:
    """Keyed artifacts under ``root`` (created on first write)."""

    def __init__(self, root: str | Path, *, what: str = "run directory") -> None:
        self.root = Path(root)
        self.what = what

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def path(self, name: str) -> Path:
        return self.root / name

    def sub(self, name: str) -> RunStore:
        """The store of a sub-directory (e.g. one benchmark cell)."""
        return RunStore(self.root / name, what=self.what)

    def ensure(self) -> Path:
        return make_dir(self.root, self.what)

    # -- manifests ------------------------------------------------------------------------------

    def manifest_path(self, name: str) -> Path:
        return self.root / f"{name}{MANIFEST}"

    def manifest(self, name: str) -> dict | None:
        """The stored manifest of ``name`` (``key``, ``spec`` and metadata), if readable."""
        m = read_json(self.manifest_path(name))
        return m if isinstance(m, dict) and "key" in m else None

    def matches(self, name: str, spec: Any) -> bool:
        m = self.manifest(name)
        return m is not None and m["key"] == fingerprint(spec)

    def changes(self, name: str, spec: Any) -> dict[str, tuple[Any, Any]]:
        """``{dotted.key: (stored, now)}``: how ``spec`` differs from the stored one (empty when
        they match or nothing is stored)."""
        m = self.manifest(name)
        if m is None or m["key"] == fingerprint(spec):
            return {}
        return diff(m.get("spec"), spec) or {"(spec)": (m["key"], fingerprint(spec))}

    def require_same(self, name: str, spec: Any, hint: str = "") -> None:
        """Raise a :class:`ConfigError` naming every change unless ``spec`` matches."""
        ch = self.changes(name, spec)
        if ch:
            raise ConfigError(f"{self.path(name)} was made with other settings: "
                              f"{describe(ch)}" + (f". {hint}" if hint else ""))

    def _write_manifest(self, name: str, spec: Any, meta: dict) -> None:
        write_json(self.manifest_path(name), {"key": fingerprint(spec), "spec": canonical(spec),
                                              **meta})

    def _invalidate(self, name: str, spec: Any) -> None:
        """Before ``name`` is rewritten: drop a manifest of another spec, so that data and
        manifest are never seen out of step; a manifest of the same spec stays (a kill during
        the rewrite then leaves the previous, still valid, artifact)."""
        if not self.matches(name, spec):
            self.forget(name)

    def forget(self, name: str) -> None:
        """Drop an artifact's manifest (its data is then never reused)."""
        self.manifest_path(name).unlink(missing_ok=True)

    # -- arrays and JSON -------------------------------------------------------------------------

    def load_array(self, name: str, spec: Any) -> np.ndarray | None:
        """The stored array ``name`` when it was computed from ``spec``, else ``None``."""
        path = self.path(f"{name}.npy")
        if not (path.exists() and self.matches(name, spec)):
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None

    def save_array(self, name: str, arr: np.ndarray, spec: Any, **meta: Any) -> None:
        self.ensure()
        self._invalidate(name, spec)
        save_npy(self.path(f"{name}.npy"), arr)
        self._write_manifest(name, spec, {"shape": list(np.shape(arr)), **meta})

    def load_json(self, name: str, spec: Any) -> Any | None:
        """The stored JSON document ``name`` when it was made from ``spec``, else ``None``."""
        if not self.matches(name, spec):
            return None
        return read_json(self.path(f"{name}.json"))

    def save_json(self, name: str, obj: Any, spec: Any, **meta: Any) -> None:
        self.ensure()
        self._invalidate(name, spec)
        write_json(self.path(f"{name}.json"), obj)
        self._write_manifest(name, spec, meta)

    # -- directories ----------------------------------------------------------------------------

    def has_dir(self, name: str, spec: Any) -> bool:
        """Whether directory artifact ``name`` exists and was made from ``spec``."""
        return self.path(name).is_dir() and self.matches(name, spec)

    @contextmanager
    def write_dir(self, name: str, spec: Any, **meta: Any) -> Iterator[Path]:
        """Build directory artifact ``name`` in a temporary sibling; it replaces the old one,
        with its manifest, only when the block finishes."""
        self.ensure()
        self._invalidate(name, spec)
        with atomic_dir(self.path(name)) as tmp:
            yield tmp
        self._write_manifest(name, spec, meta)

    # -- chunked, resumable arrays ---------------------------------------------------------------

    def chunks(self, name: str, spec: Any, n_chunks: int, *, reuse: str = "refuse"
               ) -> ChunkedArray:
        """A resumable array of ``n_chunks`` chunks under directory ``name``.

        ``reuse``: what to do when the directory holds chunks of another spec: ``"refuse"``
        (a :class:`ConfigError` naming what differs) or ``"reset"`` (delete them)."""
        return ChunkedArray(self, name, spec, n_chunks, reuse=reuse)


class ChunkedArray:
    """Chunks ``chunk_00012.npy`` of one result under ``store/name/`` with a manifest."""

    PATTERN = "chunk_{:05d}.npy"

    def __init__(self, store: RunStore, name: str, spec: Any, n_chunks: int, *,
                 reuse: str = "refuse") -> None:
        if reuse not in ("refuse", "reset"):
            raise ValueError(f"reuse must be 'refuse' or 'reset', got {reuse!r}")
        self.dir = store.path(name)
        self.inner = RunStore(self.dir, what=store.what)
        self.spec = {"spec": spec, "n_chunks": n_chunks}
        self.n_chunks = n_chunks
        ch = self.inner.changes("chunks", self.spec)
        if ch or (self.inner.manifest("chunks") is None and any(self.dir.glob("chunk_*.npy"))):
            if reuse == "refuse":
                detail = describe(ch) if ch else "its manifest is missing"
                raise ConfigError(f"{self.dir} holds chunks computed otherwise ({detail}); "
                                  "use another directory or delete this one")
            shutil.rmtree(self.dir, ignore_errors=True)
        make_dir(self.dir, store.what)
        for stale in self.dir.glob(".chunk_*.tmp"):  # left by a killed run
            stale.unlink(missing_ok=True)
        if self.inner.manifest("chunks") is None:
            self.inner._write_manifest("chunks", self.spec, {})

    def _file(self, c: int) -> Path:
        return self.dir / self.PATTERN.format(c)

    def get(self, c: int, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        """Chunk ``c`` when it is stored, readable, finite and of ``shape``; else ``None``."""
        try:
            arr = np.load(self._file(c), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if (shape is not None and arr.shape != tuple(shape)) or not np.isfinite(arr).all():
            return None
        return arr

    def put(self, c: int, arr: np.ndarray) -> None:
        save_npy(self._file(c), arr)

    def done(self) -> list[int]:
        return [c for c in range(self.n_chunks) if self._file(c).exists()]

    def missing(self) -> list[int]:
        return [c for c in range(self.n_chunks) if not self._file(c).exists()]
