"""Run store: keyed, atomic, resumable artifacts (every cache and run directory uses it).

- :mod:`recprune.store.fingerprint` — the only place keys and digests are made.
- :mod:`recprune.store.diff` — what differs between a stored spec and the one asked for.
- :mod:`recprune.store.atomic` — atomic file and directory writes.
- :mod:`recprune.store.runstore` — :class:`RunStore` (keyed artifacts + manifests) and
  :class:`ChunkedArray` (resumable chunked results).
- :mod:`recprune.store.lock` — per-directory process locks.
"""

from recprune.store.atomic import (atomic_dir, atomic_path, make_dir, read_json, replace_dir,
                                   save_npy, write_json, write_jsonl, write_text)
from recprune.store.diff import describe, diff
from recprune.store.fingerprint import (Hasher, canonical, digest, digest_text, fingerprint,
                                        rows_key, text_digests)
from recprune.store.lock import DirLock
from recprune.store.runstore import ChunkedArray, RunStore

__all__ = ["ChunkedArray", "DirLock", "Hasher", "RunStore", "atomic_dir", "atomic_path",
           "canonical", "describe", "diff", "digest", "digest_text", "fingerprint", "make_dir",
           "read_json", "replace_dir", "rows_key", "save_npy", "text_digests", "write_json",
           "write_jsonl", "write_text"]
