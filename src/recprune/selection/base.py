"""Selector interface and registry.

A selector turns per-sample scores into a set of selected rows. Each declares the scores it
needs (``requires``); the pipeline computes those and passes them in a :class:`ScoreTable`.
A new method is one new file that subclasses :class:`Selector` and decorates it with
:func:`register_selector`.

A :class:`ScoreTable` holds three kinds of inputs, all looked up by the names a selector
``requires``:

* ``columns``: one value per candidate (``influence``, ``effort``, ``el2n``, ``grand``, ...);
* ``features``: one row per candidate, ``(n, d)`` arrays (``sur_emb``, ``llm_emb``, ``text_emb``)
  for the clustering / transport based selectors;
* ``aux``: arrays that are not aligned with the pool (``val_emb``: embeddings of GORACS's
  validation prompts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from recprune.errors import ConfigError
from recprune.utils.registry import Registry

SELECTORS: Registry[Selector] = Registry("selection method",
                                          package="recprune.selection")
register_selector = SELECTORS.register


def get_selector(name: str, **options) -> Selector:
    """Instantiate a registered selector: ``get_selector("dealrec", lam=0.3)``."""
    return SELECTORS.create(name, **options)


@dataclass
class ScoreTable:
    """Inputs of a selector for the candidate pool ``rows`` (dataset user rows).

    ``columns``: 1-D per-sample scores aligned with ``rows``; ``features``: 2-D ``(n, d)``
    per-sample representations aligned with ``rows``; ``aux``: arrays a selector needs that are
    not aligned with the pool (e.g. ``val_emb``). Both new fields default to empty, so tables
    built with ``ScoreTable(rows, columns)`` keep working.
    """

    rows: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    features: dict[str, np.ndarray] = field(default_factory=dict)
    aux: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rows = np.asarray(self.rows, dtype=np.int64)
        for k, v in self.columns.items():
            self._check(k, v)
        for k, v in list(self.features.items()):
            self.features[k] = self._check_feature(k, v)
        for k, v in list(self.aux.items()):
            self.aux[k] = self._check_finite(k, np.asarray(v))

    def _check(self, name: str, v: np.ndarray) -> None:
        if len(v) != len(self.rows):
            raise ValueError(f"score {name!r} has {len(v)} values for {len(self.rows)} rows")
        self._check_finite(name, v)

    def _check_finite(self, name: str, v: np.ndarray) -> np.ndarray:
        finite = np.isfinite(v)
        if not finite.all():
            bad = np.flatnonzero(~finite.reshape(len(v), -1).all(axis=1)) if v.ndim else [0]
            rows = (self.rows[bad[:5]].tolist() if v.ndim and len(v) == len(self.rows)
                    else list(bad[:5]))
            raise ConfigError(f"score {name!r} has {len(bad)} non-finite entries "
                              f"(first rows {rows})")
        return v

    def _check_feature(self, name: str, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v)
        if v.ndim != 2 or len(v) != len(self.rows):
            raise ValueError(f"feature {name!r} must be a ({len(self.rows)}, d) array, got shape "
                             f"{v.shape}")
        return self._check_finite(name, v)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise ConfigError(f"score {name!r} was not computed; available: {sorted(self.columns)}")
        return self.columns[name]

    def __contains__(self, name: object) -> bool:
        return name in self.columns or name in self.features or name in self.aux

    def add(self, name: str, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        self._check(name, values)
        self.columns[name] = values

    def add_feature(self, name: str, values: np.ndarray) -> None:
        """Add an ``(n, d)`` per-sample representation (kept in its dtype, e.g. float32)."""
        self.features[name] = self._check_feature(name, values)

    def feature(self, name: str) -> np.ndarray:
        if name not in self.features:
            raise ConfigError(f"feature {name!r} was not computed; available: "
                              f"{sorted(self.features)}")
        return self.features[name]

    def add_aux(self, name: str, values: np.ndarray) -> None:
        """Add an array that is not aligned with the pool (e.g. validation embeddings)."""
        self.aux[name] = self._check_finite(name, np.asarray(values))

    def get_aux(self, name: str) -> np.ndarray:
        if name not in self.aux:
            raise ConfigError(f"input {name!r} was not computed; available: {sorted(self.aux)}")
        return self.aux[name]

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class Selection:
    """The chosen rows plus per-sample extras a selector wants reported (e.g. ``overall``,
    ``group``), each aligned with the pool."""

    rows: np.ndarray  # selected dataset rows, in selection order
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


class Selector:
    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()

    def select(self, scores: ScoreTable, budget: int, *, seed: int = 0) -> Selection:
        raise NotImplementedError

    def config(self) -> dict:
        return {"method": self.name, **{k: v for k, v in vars(self).items()
                                        if not k.startswith("_")}}


def check_budget(budget: int, pool: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise ConfigError(f"budget must be an integer, got {budget!r}")
    if budget <= 0:
        raise ConfigError(f"budget must be positive, got {budget}")
    if budget > pool:
        raise ConfigError(f"budget {budget} exceeds the candidate pool of {pool} samples")
    return int(budget)


def top_scores(score: np.ndarray, budget: int, skip_top: float = 0.0) -> np.ndarray:
    """Positions of the ``budget`` highest scores after dropping the ``skip_top`` fraction of
    the very highest (ties: lower position first). ``skip_top`` is the "offset" variant of
    difficulty-based pruning (Paul et al., 2021, Sec. 4: at aggressive pruning rates the hardest
    examples are often noisy or unlearnable and are better skipped)."""
    if not 0 <= skip_top < 1:
        raise ConfigError(f"skip_top must be in [0, 1), got {skip_top}")
    order = np.argsort(-np.asarray(score), kind="stable")
    skip = int(skip_top * len(order))
    budget = check_budget(budget, len(order) - skip)
    return order[skip:skip + budget]


def minmax(x: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant array maps to zeros (the reference gives 0/0 = NaN)."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 0:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)
