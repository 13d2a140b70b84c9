"""What differs between the configuration an artifact was made with and the one asked for."""

from __future__ import annotations

from typing import Any

from recprune.store.fingerprint import canonical

_MISSING = "<absent>"


def diff(old: Any, new: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """``{dotted.key: (old, new)}`` for every leaf where ``old`` and ``new`` differ."""
    old, new = canonical(old), canonical(new)
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for k in sorted(set(old) | set(new)):
            out.update(diff(old.get(k, _MISSING), new.get(k, _MISSING), f"{prefix}{k}."))
        return out
    return {} if old == new else {prefix[:-1] or "(value)": (old, new)}


def describe(changes: dict[str, tuple[Any, Any]], *, old: str = "stored", new: str = "now",
             limit: int = 6) -> str:
    """One line naming each change: ``"lr: 0.001 (stored) vs 0.01 (now); ..."``."""
    parts = [f"{k}: {a!r} ({old}) vs {b!r} ({new})" for k, (a, b) in list(changes.items())[:limit]]
    if len(changes) > limit:
        parts.append(f"and {len(changes) - limit} more")
    return "; ".join(parts)
