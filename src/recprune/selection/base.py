"""Selector interface and registry.

A selector turns per-sample scores into a set of selected rows. Each declares the scores it
needs (``requires``); the pipeline computes those and passes them in a :class:`ScoreTable`.
A new method is one new file that subclasses :class:`Selector` and decorates it with
:func:`register_selector`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from recprune.errors import ConfigError
from recprune.utils.registry import Registry

SELECTORS: Registry[Selector] = Registry("selection method")
register_selector = SELECTORS.register


def get_selector(name: str, **options) -> Selector:
    """Instantiate a registered selector: ``get_selector("dealrec", lam=0.3)``."""
    return SELECTORS.create(name, **options)


@dataclass
class ScoreTable:
    """Per-sample scores of the candidate pool, aligned with ``rows`` (dataset user rows)."""

    rows: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rows = np.asarray(self.rows, dtype=np.int64)
        for k, v in self.columns.items():
            self._check(k, v)

    def _check(self, name: str, v: np.ndarray) -> None:
        if len(v) != len(self.rows):
            raise ValueError(f"score {name!r} has {len(v)} values for {len(self.rows)} rows")
        if not np.isfinite(v).all():
            bad = np.flatnonzero(~np.isfinite(v))
            raise ConfigError(f"score {name!r} has {len(bad)} non-finite values "
                              f"(first rows {self.rows[bad[:5]].tolist()})")

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise ConfigError(f"score {name!r} was not computed; available: {sorted(self.columns)}")
        return self.columns[name]

    def add(self, name: str, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        self._check(name, values)
        self.columns[name] = values

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


def minmax(x: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant array maps to zeros (the reference gives 0/0 = NaN)."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 0:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)
