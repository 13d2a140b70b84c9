"""The score registry: how each named input of the selectors is computed and cached.

A selector declares the names it ``requires`` (``influence``, ``effort``, ``grand``,
``text_emb``, ...); :data:`SCORES` maps every name to a :class:`ScoreSpec`. A new score is one
new file in :mod:`recprune.scoring.scores` with a :func:`register_score` function (the package's
modules are imported when the registry is first asked).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from recprune.scoring.context import ScoringContext

ScoreFn = Callable[["ScoringContext"], tuple[np.ndarray, dict]]
KeyFn = Callable[["ScoringContext"], dict]
KINDS = ("column", "feature", "aux")


@dataclass(frozen=True)
class ScoreSpec:
    """How one named selector input is obtained.

    kind: ``"column"`` (1-D per sample), ``"feature"`` ((n, d) per sample) or ``"aux"`` (not
        aligned with the pool).
    compute: ``ctx -> (array, metadata)``; the metadata go into the artifact's manifest.
    key: ``ctx -> dict`` of everything the value depends on (the value is then kept in the
        run store under ``scores/<name>`` and reused while the key matches), or ``None``.
    all_users: ``compute`` returns one value per dataset user (indexed by the pool afterwards).
    order: scores are computed in increasing ``order`` (influence before effort).
    """

    kind: str
    compute: ScoreFn
    key: KeyFn | None = None
    all_users: bool = False
    order: int = 100
    doc: str = ""


class ScoreRegistry(dict[str, ScoreSpec]):
    """``name -> ScoreSpec``; the built-in score modules are imported on first use."""

    _discovered = False

    def discover(self) -> ScoreRegistry:
        if not self._discovered:
            self._discovered = True
            pkg = importlib.import_module("recprune.scoring.scores")
            for info in pkgutil.iter_modules(pkg.__path__, "recprune.scoring.scores."):
                importlib.import_module(info.name)
        return self

    def ordered(self, names: set[str]) -> list[str]:
        """``names`` in computation order."""
        self.discover()
        return sorted(names, key=lambda n: (self[n].order, n))


SCORES = ScoreRegistry()


def register_score(name: str, kind: str, *, key: KeyFn | None = None, all_users: bool = False,
                   order: int = 100, doc: str = "") -> Callable[[ScoreFn], ScoreFn]:
    """Register how score ``name`` is computed (decorates ``compute(ctx) -> (array, meta)``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown score kind {kind!r}; choose one of {KINDS}")

    def deco(fn: ScoreFn) -> ScoreFn:
        SCORES[name] = ScoreSpec(kind, fn, key, all_users, order,
                                 doc or (fn.__doc__ or "").strip())
        return fn
    return deco
