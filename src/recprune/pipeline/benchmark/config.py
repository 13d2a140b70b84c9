"""The benchmark's configuration (methods and aliases, budgets, seeds, the settings its cells
depend on) and its cell and result types."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from recprune.backends import BACKENDS, create_backend
from recprune.errors import ConfigError
from recprune.pipeline.llm import _backend_options
from recprune.pipeline.select import SelectConfig
from recprune.selection import SELECTORS, get_selector

log = logging.getLogger(__name__)


FULL = "all"  # the full-data "method": fine-tune on the whole pool
PAPER_METHODS = ("random", "grand", "el2n", "ccs", "tfdcon", "recranker", "dealrec")
ABLATIONS = ("dealrec_no_influence", "dealrec_no_effort", "dealrec_greedy")
ALIASES = {"paper": PAPER_METHODS, "ablations": ABLATIONS,
           "everything": PAPER_METHODS + ("goracs",) + ABLATIONS + (FULL,)}
SHARED_STAGES_IGNORED = ("load_data", "select", "write")
BUSY = object()  # a cell (or its selection) that another process holds the lock of


def expand_methods(names) -> tuple[str, ...]:
    """Method names with the aliases ``paper``, ``ablations`` and ``everything`` expanded."""
    out: list[str] = []
    for n in names:
        for m in ALIASES.get(n, (n,)):
            if m not in out:
                out.append(m)
    return tuple(out)


@dataclass
class BenchmarkConfig:
    """Everything ``recprune benchmark`` needs.

    budgets: numbers of samples (an integer >= 1) or fractions of the pool (a float < 1,
        e.g. 0.02 = 2%); several budgets make a selection-ratio sweep.
    seeds: number of seeds (0 .. seeds-1); each seed is a separate selection and fine-tuning.
    full_seeds: seeds of the full-data cells (method ``"all"``), which are expensive.
    pool / pool_seed: a seeded candidate pool of ``pool`` training users (default: all), the same
        for every method and seed, so scores are computed once.
    eval_users / eval_seed: the fixed seeded subset of test users every cell is evaluated on.
    method_options: ``{method: {option: value}}``; backend_options: ``{backend: {...}}``.
    select_options: extra :class:`SelectConfig` fields shared by every selection (e.g.
        ``surrogate_checkpoint``, ``effort``, ``llm``, ``grand``, ``el2n``, ``embed``).
    metric: the main metric (plots, significance); baseline: the method tested against.
    popularity: also evaluate the most-popular baseline (over the pool's training items).
    period: ``"test"`` (the comparison) or ``"valid"`` (to choose selector hyper-parameters
        such as DEALRec's lambda or K without looking at the test period).
    cache_dir: where the shared scores are cached (default ``OUT/cache``); several run
        directories (e.g. one per hyper-parameter setting) can share one cache.
    """

    data: str
    out: str
    methods: tuple[str, ...] = ("random", "dealrec")
    backends: tuple[str, ...] = ("tiger",)
    budgets: tuple[float, ...] = (1024,)
    seeds: int = 3
    full_seeds: int = 1
    pool: int | None = None
    pool_seed: int = 0
    eval_users: int | None = None
    eval_seed: int = 0
    period: str = "test"
    ks: tuple[int, ...] = (10, 20, 50)
    table_metrics: tuple[str, ...] = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
    metric: str = "ndcg@20"
    baseline: str = "random"
    popularity: bool = True
    method_options: dict = field(default_factory=dict)
    backend_options: dict = field(default_factory=dict)
    select_options: dict = field(default_factory=dict)
    device: str = "auto"
    trust_pickle: bool = False
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        self.methods = expand_methods(self.methods)
        self.backends = tuple(self.backends)
        self.budgets = tuple(self.budgets)
        self.ks = tuple(int(k) for k in self.ks)
        self.table_metrics = tuple(self.table_metrics)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self, n_users: int | None = None) -> None:
        """Check everything cheap before any work (unknown names, bad options, budgets)."""
        if not self.methods:
            raise ConfigError("give at least one selection method")
        if not self.backends:
            raise ConfigError("give at least one backend")
        for m in self.methods:
            if m != FULL and m not in SELECTORS:
                raise ConfigError(f"unknown selection method {m!r}; choose from "
                                  f"{sorted(SELECTORS)}, '{FULL}' (full data) or an alias "
                                  f"{sorted(ALIASES)}")
        for m, opts in self.method_options.items():
            if m not in self.methods:
                raise ConfigError(f"options given for method {m!r}, which is not benchmarked")
            get_selector(m, **opts)  # raises a clear ConfigError for bad options
        for m in self.methods:
            if m != FULL and m not in self.method_options:
                get_selector(m)
        for b in self.backends:
            if b not in BACKENDS:
                create_backend(b)  # the registry's clear error
        for b, opts in self.backend_options.items():
            if b not in self.backends:
                raise ConfigError(f"options given for backend {b!r}, which is not benchmarked")
            create_backend(b, **_backend_options(b, opts, 0))
        if self.seeds < 1 or self.full_seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got seeds={self.seeds}, "
                              f"full_seeds={self.full_seeds}")
        if not self.budgets and any(m != FULL for m in self.methods):
            raise ConfigError("give at least one budget")
        if self.period not in ("valid", "test"):
            raise ConfigError(f"period must be 'valid' or 'test', got {self.period!r}")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"K values must be positive, got {self.ks}")
        known = {f"{m}@{k}" for m in ("recall", "ndcg") for k in self.ks}
        for m in (*self.table_metrics, self.metric):
            if m not in known:
                raise ConfigError(f"metric {m!r} is not computed; with ks={list(self.ks)} "
                                  f"choose from {sorted(known)}")
        try:
            SelectConfig(data=self.data, budget=1, out=self.out, **self.select_options)
        except TypeError as e:
            raise ConfigError(f"bad select options: {e}") from None
        bad = {"data", "budget", "out", "method", "method_options", "seed", "pool", "pool_seed",
               "cache_dir", "trust_pickle"} & set(self.select_options)
        if bad:
            raise ConfigError(f"select options {sorted(bad)} are set by the benchmark itself")
        if n_users is not None:
            pool = n_users if self.pool is None else self.pool
            if self.pool is not None and not 1 <= self.pool <= n_users:
                raise ConfigError(f"pool must be in 1..{n_users}, got {self.pool}")
            for b in self.budgets:
                resolve_budget(b, pool)


def resolve_budget(budget: float, pool: int) -> int:
    """An integer budget as is; a fraction in (0, 1) of the pool, rounded (at least 1)."""
    if isinstance(budget, float) and not float(budget).is_integer():
        if not 0 < budget < 1:
            raise ConfigError(f"a fractional budget must be in (0, 1), got {budget}")
        n = max(1, int(round(budget * pool)))
    else:
        n = int(budget)
    if not 1 <= n <= pool:
        raise ConfigError(f"budget {budget} gives {n} samples; it must be in 1..{pool} (the "
                          f"candidate pool)")
    return n


@dataclass
class Cell:
    budget: int | None  # None: full data
    method: str
    seed: int

    @property
    def path(self) -> Path:
        if self.method == FULL:
            return Path("cells") / "full" / f"s{self.seed}"
        return Path("cells") / f"b{self.budget}" / self.method / f"s{self.seed}"


@dataclass
class BenchmarkResult:
    out: Path
    cells: pd.DataFrame
    table: pd.DataFrame
    significance: pd.DataFrame
    evals: dict = field(default_factory=dict)  # (budget, method, seed, backend) -> EvalResult
