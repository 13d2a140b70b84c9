"""``recprune benchmark``: the DEALRec Table-2 protocol as one resumable grid.

For every budget, selection method and seed, the selection is made on a fixed candidate pool
(all training users, or a seeded ``pool`` of them) and every backend is fine-tuned on it and
evaluated on a fixed set of test users (all, or a seeded ``eval_users`` subset). Run directory::

    OUT/config.json                 the benchmark configuration
    OUT/cache/                      surrogate.pt and scores/: computed once, shared by all cells
    OUT/cells/b<budget>/<method>/s<seed>/select/            the selection (recprune select)
    OUT/cells/b<budget>/<method>/s<seed>/<backend>/finetune/  fine-tuned model
    OUT/cells/b<budget>/<method>/s<seed>/<backend>/eval/      metrics, per-user values
    OUT/cells/b<budget>/<method>/s<seed>/<backend>/cell.json  the finished cell's key + fit summary
    OUT/cells/full/s<seed>/...      method "all": full-data fine-tuning (no selection)
    OUT/cells/pop/eval/             most-popular baseline (with ``popularity``)
    OUT/cells.csv                   one row per finished cell: metrics, wall seconds per stage
    OUT/table.md, table.csv         mean +- std over seeds per method x backend (best in bold)
    OUT/significance.csv            paired tests of every method against the baseline (Random)
    OUT/coverage.csv                what each selection covers (lengths, item popularity)
    OUT/*.png, OUT/report.md        plots and the report that shows them

Every stage reuses a finished result with the same configuration (select: ``select/done.json``;
fine-tune / evaluate: their own keys), so running the same command again continues an
interrupted grid and never recomputes a finished cell; a long fine-tuning or evaluation resumes
from its own checkpoints. Selections, models and evaluations depend only on their cell's
configuration, so cells may be added (methods, seeds, budgets) to an existing run directory.
A finished cell is recognised by ``cell.json`` + ``eval/`` alone, without its fine-tuned model: the
small result files can be copied to another machine and the grid continued there.

Several processes may work on one run directory at once: each cell's selection and each
(cell, backend) fine-tune + evaluation holds a lock (``.lock``, an ``flock`` the system releases
when its process dies) while it runs, and a process that meets a locked cell skips it. So the
same command started twice on one machine shares the grid dynamically (``--shard i/n`` splits it
statically instead); each run's tables hold the cells finished when it ends, and the last run to
end collects them all. Cells whose fine-tuning was interrupted (checkpoints, no ``cell.json``) are
taken first, so each process resumes half-done work before it starts new cells. The shared
score cache is not locked: make it once first (``selections_only``) before starting processes
in parallel on a fresh directory.

The significance test pairs users: each method's per-user metric is averaged over its seeds
and compared with the baseline's per-user average on the same test users (paired t-test and
Wilcoxon signed-rank, see :func:`recprune.evaluation.paired_test`). That test holds the seeds
fixed: it asks whether *these* selections differ on the population of test users. Whether
another draw of seeds would order the methods the same way is a different question, answered
(with little power at 2-3 seeds) by ``p_seeds``, Welch's t-test on the per-seed means
(:func:`seed_test`); it needs at least two seeds on each side.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recprune.backends import BACKENDS, create_backend
from recprune.backends.base import FitResult
from recprune.data import load_dataset
from recprune.data.dataset import InteractionDataset
from recprune.errors import ConfigError, RecpruneError
from recprune.evaluation import EvalResult, eval_user_rows, paired_test
from recprune.pipeline.llm import (EvaluateConfig, FinetuneConfig, _backend_options, run_evaluate,
                                   run_finetune)
from recprune.pipeline.select import SelectConfig, run_select
from recprune.pipeline.select import pool_rows as draw_pool
from recprune.selection import SELECTORS, get_selector
from recprune.store import (DirLock, atomic_path, fingerprint, make_dir, rows_key, write_json,
                            write_text)

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


def _grid(cfg: BenchmarkConfig, budgets: list[int]) -> list[Cell]:
    cells = []
    for b in budgets:
        for m in cfg.methods:
            if m == FULL:
                continue
            cells += [Cell(b, m, s) for s in range(cfg.seeds)]
    if FULL in cfg.methods:
        cells += [Cell(None, FULL, s) for s in range(cfg.full_seeds)]
    return cells


def _select_cell(cfg: BenchmarkConfig, cell: Cell, ds: InteractionDataset, out: Path,
                 pool_rows: np.ndarray, progress: bool,
                 compute: bool = True):
    """The cell's selected rows and selection timings (reused when already done; ``None`` when
    not done and ``compute`` is false; :data:`BUSY` when another process is selecting it)."""
    if cell.method == FULL:
        return pool_rows, {}
    d = out / cell.path / "select"
    scfg = SelectConfig(data=cfg.data, budget=cell.budget, out=str(d), method=cell.method,
                        method_options=dict(cfg.method_options.get(cell.method, {})),
                        seed=cell.seed, trust_pickle=cfg.trust_pickle, pool=cfg.pool,
                        pool_seed=cfg.pool_seed,
                        cache_dir=cfg.cache_dir or str(out / "cache"),
                        **cfg.select_options)
    sd = scfg.to_dict()
    if sd["effort_cache"] is None:  # keys of selections made before the option existed
        del sd["effort_cache"]
    key = fingerprint(sd)
    done = d / "done.json"

    def reuse():
        try:
            meta = json.loads(done.read_text())
            if meta.get("key") == key:
                return np.asarray(meta["rows"], dtype=np.int64), meta["timings"]
        except (OSError, json.JSONDecodeError, KeyError):
            pass
        return None

    if (found := reuse()) is not None or not compute:
        return found
    lock = DirLock(d)
    if not lock.acquire():
        log.info("%s is being computed by %s: skipped here", d, lock.holder())
        return BUSY
    try:
        if (found := reuse()) is not None:  # finished while we looked
            return found
        res = run_select(scfg, dataset=ds, show_progress=progress)
        rows = np.sort(np.asarray(res.selection.rows, dtype=np.int64))
        timings = {k: float(v) for k, v in res.timings.items()}
        write_json(done, {"key": key, "rows": rows.tolist(), "timings": timings})
    finally:
        lock.release()
    return rows, timings


# Settings that only choose which cells exist or how the tables look: changing them between two
# runs in one directory extends or re-reads the grid. Every other field enters the cells' keys,
# so a change would make the finished cells stale.
_GRID_FIELDS = frozenset({"out", "methods", "backends", "budgets", "seeds", "full_seeds",
                          "table_metrics", "metric", "baseline", "popularity"})


def changed_settings(out: str | Path, cfg: BenchmarkConfig) -> dict[str, tuple]:
    """``{field: (in OUT/config.json, now)}`` for each setting that differs from the one the run
    directory was made with and that its cells depend on (empty for a new directory).

    Fields missing from an older ``config.json`` count as their defaults.
    """
    path = Path(out) / "config.json"
    try:
        before = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: unreadable benchmark configuration ({e}); remove it or use "
                          f"another --out") from None
    if not isinstance(before, dict):
        raise ConfigError(f"{path}: not a benchmark configuration (a JSON object)")
    now = json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists, as stored
    defaults = json.loads(json.dumps(BenchmarkConfig(data="", out="").to_dict()))
    diff: dict[str, tuple] = {}

    def walk(name, a, b):  # dotted names down into option dictionaries
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(f"{name}.{k}", a.get(k), b.get(k))
        elif a != b:
            diff[name] = (a, b)

    for k, v in now.items():
        if k not in _GRID_FIELDS:
            walk(k, before.get(k, defaults[k]), v)
    return diff


def _check_settings(out: Path, cfg: BenchmarkConfig) -> None:
    diff = changed_settings(out, cfg)
    if diff:
        lines = "\n".join(f"  {k}: {json.dumps(a)} -> {json.dumps(b)}"
                          for k, (a, b) in diff.items())
        raise ConfigError(
            f"{out}/config.json was written with other settings, which its finished cells depend "
            f"on:\n{lines}\nrepeat the original options to continue that run, use another "
            f"--out, or pass --recompute to recompute the cells these settings change")


def run_benchmark(cfg: BenchmarkConfig, *, dataset: InteractionDataset | None = None,
                  progress: bool = True, shard: tuple[int, int] | None = None,
                  selections_only: bool = False, finished_only: bool = False,
                  recompute: bool = False) -> BenchmarkResult | None:
    """Run (or continue) the whole grid and write the tables, plots and report.

    ``selections_only``: compute the shared scores and every cell's selection, then stop (no
    fine-tuning). ``shard=(i, n)``: process only the cells ``i, i+n, i+2n, ...`` of the grid
    (several processes can share a machine or machines share a directory once the scores are
    cached, e.g. after ``selections_only``); a sharded run writes no tables (``None`` is
    returned): run once more without ``shard`` to collect every finished cell.
    ``finished_only``: select and fine-tune nothing; write the tables, plots and report of the
    cells finished so far (an interim report of a grid still running elsewhere); the report
    lists the cells still missing and the table marks methods with fewer seeds than
    ``cfg.seeds``.
    ``recompute``: proceed although OUT/config.json was written with other settings that the
    cells depend on (see :func:`changed_settings`); otherwise that is a ``ConfigError``, so
    that a forgotten option never silently recomputes (or ignores) finished work.
    """
    if shard is not None:
        i, n = shard
        if n < 1 or not 0 <= i < n:
            raise ConfigError(f"shard must be i/n with 0 <= i < n, got {i}/{n}")
    if finished_only and (shard is not None or selections_only):
        raise ConfigError("finished_only writes the tables of finished cells; it cannot be "
                          "combined with shard or selections_only")
    cfg.validate()
    if not recompute:
        _check_settings(Path(cfg.out), cfg)
    ds = dataset if dataset is not None else load_dataset(
        cfg.data, **({"trust_pickle": True} if cfg.trust_pickle else {}))
    cfg.validate(ds.n_users)
    out = make_dir(cfg.out, "--out")
    write_json(out / "config.json", cfg.to_dict())
    pool_rows = draw_pool(ds, cfg.pool, cfg.pool_seed)
    budgets = sorted({resolve_budget(b, len(pool_rows)) for b in cfg.budgets})
    eval_rows = eval_user_rows(ds, cfg.period, cfg.eval_users, cfg.eval_seed)
    ecommon = dict(data=cfg.data, period=cfg.period, ks=cfg.ks, eval_users=cfg.eval_users,
                   seed=cfg.eval_seed, device=cfg.device, trust_pickle=cfg.trust_pickle)

    records: list[dict] = []
    evals: dict = {}
    if cfg.popularity:
        pop = create_backend("pop")
        pop.fit(ds, pool_rows)
        ev = run_evaluate(EvaluateConfig(out=str(out / "cells" / "pop" / "eval"), **ecommon),
                          dataset=ds, backend=pop, progress=False)
        evals[(None, "most-popular", 0, "pop")] = ev
        records.append(_record(None, "most-popular", 0, "pop", len(pool_rows), {}, None, ev))

    cells = _grid(cfg, budgets)
    if shard is not None:
        cells = cells[shard[0]::shard[1]]
    # interrupted fine-tunes first, so that processes sharing the grid resume them before
    # starting new cells (at most one half-done cell per process at any time)
    cells.sort(key=lambda c: not _interrupted(out, c, cfg.backends))
    n_total = len(cells) * len(cfg.backends)
    k = 0
    missing: list[str] = []
    busy: list[tuple[Cell, str | None]] = []  # (cell, backend or None = its selection) elsewhere
    for cell in cells:
        t0 = time.perf_counter()
        sel = _select_cell(cfg, cell, ds, out, pool_rows, progress, compute=not finished_only)
        if sel is BUSY:
            busy.append((cell, None))
            continue
        if sel is None:  # finished_only and not even selected yet
            missing += [f"{cell.path}/{b}" for b in cfg.backends]
            continue
        rows, sel_timings = sel
        if selections_only:
            continue
        for backend in cfg.backends:
            k += 1
            rec = _backend_cell(cfg, ds, out, cell, backend, rows, sel_timings, eval_rows,
                                ecommon, progress, compute=not finished_only)
            if rec is BUSY:
                busy.append((cell, backend))
                continue
            if rec is None:
                missing.append(f"{cell.path}/{backend}")
                continue
            record, ev, fit, reused = rec
            evals[(cell.budget, cell.method, cell.seed, backend)] = ev
            records.append(record)
            m = ev.summary()[cfg.metric]["mean"]
            msg = (f"[{k}/{n_total}] {cell.method} budget {cell.budget or 'all'} seed "
                   f"{cell.seed} -> {backend}: {cfg.metric} {m:.4f} (fine-tune "
                   f"{fit.seconds:.0f} s{' reused' if reused else ''}, eval "
                   f"{ev.seconds:.0f} s; cell {time.perf_counter() - t0:.0f} s)")
            log.info(msg)
            if progress:
                print(msg, flush=True)
    # cells that other processes were computing: take those that have finished meanwhile
    for cell, backend in busy:
        sel = _select_cell(cfg, cell, ds, out, pool_rows, progress, compute=False)
        backends = cfg.backends if backend is None else (backend,)
        for b in backends:
            rec = None
            if sel is not None and sel is not BUSY and not selections_only:
                rec = _backend_cell(cfg, ds, out, cell, b, *sel, eval_rows, ecommon, progress,
                                    compute=False)
            if rec is None or rec is BUSY:
                missing.append(f"{cell.path}/{b}")
                continue
            evals[(cell.budget, cell.method, cell.seed, b)] = rec[1]
            records.append(rec[0])
    if busy:
        log.warning("%d cell(s) were being computed by other processes sharing %s; they are "
                    "left out unless they finished meanwhile: run again to collect them",
                    len(busy), out)
    if shard is not None or selections_only:
        return None
    if finished_only and len(missing) == n_total:  # no cell of the grid is finished
        raise RecpruneError(f"{out}: no finished cell of this grid yet (nothing to tabulate)")
    if missing:
        log.info("%d of %d cells not finished yet (left out of the tables)", len(missing),
                 n_total)
    return write_outputs(cfg, ds, out, records, evals, pool_rows, budgets, missing)


def _backend_cell(cfg: BenchmarkConfig, ds: InteractionDataset, out: Path, cell: Cell,
                  backend: str, rows: np.ndarray, sel_timings: dict, eval_rows: np.ndarray,
                  ecommon: dict, progress: bool, compute: bool = True):
    """Fine-tune and evaluate one (cell, backend), or reuse its finished record.

    Returns ``(record, eval result, fit result, reused)``; ``None`` when it is not finished and
    ``compute`` is false; :data:`BUSY` when another process holds its lock (it is computing
    the cell now)."""
    base = out / cell.path / backend
    opts = dict(cfg.backend_options.get(backend, {}))
    if cfg.device != "auto" and backend != "pop":
        opts.setdefault("device", cfg.device)
    ckey = _cell_key(cfg, ds, backend, opts, cell.seed, rows, ecommon)
    finished = _finished_cell(base, ckey)
    lock = None
    if finished is None:
        if not compute:
            return None
        lock = DirLock(base)
        if not lock.acquire():
            log.info("%s is being computed by %s: skipped here", base, lock.holder())
            return BUSY
        finished = _finished_cell(base, ckey)  # finished while we waited for the lock
    try:
        if finished is not None:  # the cell's record: no model needed (e.g. a new machine)
            fit, ev = finished
            reused = True
        else:
            ft = run_finetune(FinetuneConfig(data=cfg.data, out=str(base / "finetune"),
                                             backend=backend, backend_options=opts,
                                             seed=cell.seed, trust_pickle=cfg.trust_pickle),
                              dataset=ds, rows=rows, progress=progress)
            ev = run_evaluate(EvaluateConfig(out=str(base / "eval"),
                                             model=str(base / "finetune"), **ecommon),
                              dataset=ds, backend=ft.backend, progress=progress)
            fit, reused = ft.fit, ft.reused
        if not np.array_equal(ev.rows, eval_rows):
            raise RecpruneError(f"{base / 'eval'} evaluated other users than this benchmark")
        if lock is not None and finished is None:
            write_json(base / CELL_RECORD, {"key": ckey, "fit": fit.to_dict()})
    finally:
        if lock is not None:
            lock.release()
    record = _record(cell.budget, cell.method, cell.seed, backend, len(rows), sel_timings, fit,
                     ev)
    return record, ev, fit, reused


CELL_RECORD = "cell.json"  # beside finetune/ and eval/: the finished cell's key and fit summary


def _interrupted(out: Path, cell: Cell, backends) -> bool:
    """Whether a fine-tune of ``cell`` stopped partway (checkpoints but no cell record)."""
    for b in backends:
        base = out / cell.path / b
        ckpt = base / "finetune" / "checkpoints"
        if not (base / CELL_RECORD).exists() and ckpt.is_dir() and any(ckpt.iterdir()):
            return True
    return False


def _cell_key(cfg: BenchmarkConfig, ds: InteractionDataset, backend: str, opts: dict, seed: int,
              rows: np.ndarray, ecommon: dict) -> str:
    """Everything a cell's evaluation depends on: the backend's full configuration, the data,
    the selected rows and the evaluation protocol (not the device, not file times)."""
    conf = create_backend(backend, **_backend_options(backend, opts, seed)).config_dict()
    return fingerprint({"backend": backend, "options": conf, "data": ds.fingerprint(),
                  "rows": rows_key(rows),
                  "eval": {k: (list(v) if isinstance(v, tuple) else v)
                           for k, v in ecommon.items() if k not in ("device", "data")}})


def _finished_cell(base: Path, key: str) -> tuple[FitResult, EvalResult] | None:
    """A finished cell's fit summary and evaluation, read from disk without loading any model,
    when its record matches ``key`` (so a grid continued on another machine, where the
    fine-tuned models of earlier sessions are absent, recomputes nothing)."""
    try:
        meta = json.loads((base / CELL_RECORD).read_text())
        if meta.get("key") != key:
            return None
        fit = FitResult(**{k: meta["fit"][k] for k in ("history", "best_epoch", "seconds",
                                                        "stats")})
        return fit, EvalResult.load(base / "eval")
    except (OSError, json.JSONDecodeError, KeyError, TypeError, RecpruneError):
        return None


def _record(budget, method, seed, backend, n_train, sel_timings, fit: FitResult | None,
            ev: EvalResult) -> dict:
    s = ev.summary()
    rec = {"budget": budget if budget is not None else "", "method": method, "seed": seed,
           "backend": backend, "n_train_users": int(n_train),
           "select_s": round(sum(v for k, v in sel_timings.items()
                                 if k not in ("load_data", "write")), 3),
           "select_only_s": round(sel_timings.get("select", 0.0), 3),
           "finetune_s": round(fit.seconds, 3) if fit is not None else 0.0,
           "epochs": len(fit.history) if fit is not None else 0,
           "best_epoch": fit.best_epoch if fit is not None else None,
           "eval_s": round(ev.seconds, 3), "eval_users": ev.n_users}
    rec["shared_stages"] = json.dumps({k: round(v, 1) for k, v in sel_timings.items()
                                       if k not in SHARED_STAGES_IGNORED})
    for m, v in s.items():
        rec[m] = v["mean"]
    return rec


# ----------------------------------------------------------------------------- outputs

def _seed_mean(evals: list[EvalResult]) -> EvalResult:
    """Per-user metric averaged over seeds (all evaluated on the same users)."""
    first = evals[0]
    per_user = {m: np.mean([e.per_user[m] for e in evals], axis=0) for m in first.per_user}
    return EvalResult(period=first.period, ks=first.ks, rows=first.rows,
                      user_ids=first.user_ids, per_user=per_user)


def aggregate(cells: pd.DataFrame, metrics) -> pd.DataFrame:
    """Mean and std over seeds of each metric and stage time per (budget, method, backend)."""
    cols = [*metrics, "finetune_s", "eval_s", "select_only_s"]
    g = cells.groupby(["budget", "method", "backend"], sort=False)
    agg = g[cols].agg(["mean", "std"])
    agg.columns = [f"{a}_{b}" for a, b in agg.columns]
    agg["seeds"] = g.size()
    agg["n_train_users"] = g["n_train_users"].first()
    return agg.reset_index()


def seed_test(a: list[EvalResult], b: list[EvalResult], metric: str) -> float:
    """Two-sided p-value of Welch's t-test between the per-seed means of ``a`` and ``b``
    (the seed as the random unit: selection, RQ-VAE/LoRA initialisation and training order all
    change with it); NaN with fewer than two seeds on either side, and NaN when neither side
    varies over its seeds (the test is undefined then, and a constant difference is not
    evidence that another draw of seeds would keep it)."""
    from scipy import stats

    xa = np.array([float(np.nanmean(e.per_user[metric])) for e in a])
    xb = np.array([float(np.nanmean(e.per_user[metric])) for e in b])
    if len(xa) < 2 or len(xb) < 2:
        return float("nan")
    if xa.std() == 0 and xb.std() == 0:
        return float("nan")
    return float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)


def significance(cfg: BenchmarkConfig, evals: dict) -> pd.DataFrame:
    """Every method against the baseline: the paired per-user tests on seed-averaged metrics
    (``p_ttest``, ``p_wilcoxon``) and the seed-level Welch test (``p_seeds``)."""
    rows = []
    groups: dict = {}
    for (budget, method, _seed, backend), ev in evals.items():
        groups.setdefault((budget, method, backend), []).append(ev)
    for (budget, method, backend), evs in groups.items():
        if method == cfg.baseline:
            continue
        base = groups.get((budget, cfg.baseline, backend))
        if base is None:  # full data / most-popular: against every budget's baseline
            base_keys = [k for k in groups if k[1] == cfg.baseline and k[2] == backend]
            if method == "most-popular":
                base_keys = [k for k in groups if k[1] == cfg.baseline]
        else:
            base_keys = [(budget, cfg.baseline, backend)]
        a = _seed_mean(evs)
        for bk in base_keys:
            b = _seed_mean(groups[bk])
            for metric in cfg.table_metrics:
                t = paired_test(a, b, metric)
                rows.append({"budget": bk[0], "method": method, "backend": backend,
                             "baseline_backend": bk[2], "metric": metric,
                             "mean": t["mean_a"], "baseline_mean": t["mean_b"],
                             "rel_improvement": t["rel_improvement"], "p_ttest": t["p_ttest"],
                             "p_wilcoxon": t["p_wilcoxon"],
                             "p_seeds": seed_test(evs, groups[bk], metric),
                             "seeds": len(evs), "baseline_seeds": len(groups[bk]),
                             "n_users": t["n_users"]})
    return pd.DataFrame(rows)


def _fmt(mean: float, std: float) -> str:
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if np.isfinite(std) else "")


def markdown_table(cfg: BenchmarkConfig, agg: pd.DataFrame, sig: pd.DataFrame,
                   budget) -> str:
    """Table-2 layout for one budget: methods x (backend, metric), mean ± std over seeds; the
    best selection method per column in bold; * = paired per-user t-test p < 0.05 against the
    baseline, † = seed-level Welch test p < 0.05 (:func:`seed_test`)."""
    metrics = cfg.table_metrics
    sub = agg[(agg["budget"] == budget) | (agg["budget"] == "")]
    backends = [b for b in cfg.backends]
    order = [m for m in cfg.methods if m != FULL] + ([FULL] if FULL in cfg.methods else [])
    if cfg.popularity:
        order = order + ["most-popular"]
    head = "| method | " + " | ".join(f"{b} {m}" for b in backends for m in metrics) + " |"
    lines = [head, "|---|" + "---:|" * (len(backends) * len(metrics))]
    best = {}
    for b in backends:
        few = sub[(sub["backend"] == b) & ~sub["method"].isin([FULL, "most-popular"])]
        for m in metrics:
            best[(b, m)] = few[f"{m}_mean"].max() if len(few) else None
    for meth in order:
        cells = []
        for b in backends:
            bb = "pop" if meth == "most-popular" else b
            r = sub[(sub["method"] == meth) & (sub["backend"] == bb)]
            for m in metrics:
                if not len(r):
                    cells.append("-")
                    continue
                mean, std = float(r[f"{m}_mean"].iloc[0]), float(r[f"{m}_std"].iloc[0])
                txt = _fmt(mean, std)
                if meth not in (FULL, "most-popular") and best[(b, m)] is not None \
                        and np.isclose(mean, best[(b, m)]):
                    txt = f"**{txt}**"
                if len(sig):
                    s = sig[(sig["method"] == meth) & (sig["backend"] == bb)
                            & (sig["metric"] == m) & (sig["baseline_backend"] == b)
                            & (sig["budget"] == budget)]
                    if len(s) and s["p_ttest"].iloc[0] < 0.05:
                        txt += "*"
                    if len(s) and s["p_seeds"].iloc[0] < 0.05:
                        txt += "†"
                cells.append(txt)
        label = {FULL: "all (full data)", "most-popular": "most popular"}.get(meth, meth)
        want = cfg.full_seeds if meth == FULL else cfg.seeds
        have = sub.loc[sub["method"] == meth, "seeds"]
        if meth != "most-popular" and len(have) and int(have.max()) < want:
            label += f" ({int(have.max())}/{want} seeds)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def coverage_stats(ds: InteractionDataset, pool_rows: np.ndarray,
                   selections: dict[str, np.ndarray]) -> pd.DataFrame:
    """How each selection covers the pool: sequence lengths, item popularity, distinct items, and
    ``next_item_positions`` (sum over users of training length - 1: the training examples of a
    backend that learns from every next-item position, as TIGER does by default) and
    ``active_in_valid`` (the share of users with interactions in the validation period, i.e.
    still active after the training period; a validation-matching selector such as GORACS
    prefers them)."""
    pop = np.bincount(ds.train.items, minlength=ds.n_items + 1).astype(np.float64)

    def stats(name, rows):
        lens = ds.train.lengths[rows]
        items = ds.train.subset(np.asarray(rows, dtype=np.int64)).items
        return {"selection": name, "users": int(len(rows)), "mean_length": float(lens.mean()),
                "median_length": float(np.median(lens)),
                "next_item_positions": int(np.maximum(lens - 1, 0).sum()),
                "mean_log10_item_pop": float(np.log10(pop[items]).mean()) if len(items) else 0.0,
                "distinct_items": int(len(np.unique(items))),
                "active_in_valid": float((ds.valid.lengths[rows] > 0).mean()) if len(rows)
                else 0.0,
                "distinct_items_share_of_pool": 0.0}

    out = [stats("pool (full data)", pool_rows)]
    out += [stats(k, v) for k, v in selections.items()]
    df = pd.DataFrame(out)
    df["distinct_items_share_of_pool"] = df["distinct_items"] / max(1, out[0]["distinct_items"])
    return df


def write_outputs(cfg: BenchmarkConfig, ds: InteractionDataset, out: Path, records: list[dict],
                  evals: dict, pool_rows: np.ndarray, budgets: list[int],
                  missing: list[str] | None = None) -> BenchmarkResult:
    from recprune.evaluation import plots

    cells = pd.DataFrame(records)
    with atomic_path(out / "cells.csv") as tmp:
        cells.to_csv(tmp, index=False)
    agg = aggregate(cells, cfg.table_metrics)
    with atomic_path(out / "table.csv") as tmp:
        agg.to_csv(tmp, index=False)
    sig = significance(cfg, evals)
    with atomic_path(out / "significance.csv") as tmp:
        sig.to_csv(tmp, index=False)
    # selections of seed 0 at the first budget, for the coverage and score plots
    sels = {}
    for m in cfg.methods:
        if m == FULL:
            continue
        done = out / Cell(budgets[0], m, 0).path / "select" / "done.json"
        if done.exists():
            sels[m] = np.asarray(json.loads(done.read_text())["rows"], dtype=np.int64)
    cov = coverage_stats(ds, pool_rows, sels)
    with atomic_path(out / "coverage.csv") as tmp:
        cov.to_csv(tmp, index=False)
    pngs = {}
    colors = plots.method_colors(m for m in cfg.methods if m != FULL)
    pngs["metric_by_method.png"] = plots.metric_by_method(
        agg, cfg.metric, out / "metric_by_method.png", budgets[0] if budgets else "", cells,
        colors)
    pngs["coverage.png"] = plots.coverage(ds, pool_rows, sels, out / "coverage.png", colors)
    scores = pool_scores(out, budgets[0] if budgets else None, cfg.methods)
    if scores is not None and len(scores.columns) > 2:
        pngs["score_distributions.png"] = plots.score_distributions(
            scores, sels, out / "score_distributions.png", colors=colors)
    if len(budgets) > 1:
        pngs["sweep.png"] = plots.sweep(agg, cfg.metric, len(pool_rows), out / "sweep.png")
    report = _report(cfg, ds, agg, sig, cov, cells, budgets, pool_rows, pngs, missing or [])
    write_text(out / "report.md", report)
    for b in budgets:
        write_text(out / f"table_b{b}.md", markdown_table(cfg, agg, sig, b) + "\n")
    if budgets:
        write_text(out / "table.md", markdown_table(cfg, agg, sig, budgets[0]) + "\n")
    return BenchmarkResult(out=out, cells=cells, table=agg, significance=sig, evals=evals)


def pool_scores(out: Path, budget=None, methods=None,
                exclude: tuple[str, ...] = ()) -> pd.DataFrame | None:
    """Every score column of the pool, merged over the seed-0 cells' ``scores.csv`` (of
    ``methods`` at ``budget``; default every method and budget); None if there is none.

    Scores are the floating-point columns; integer and boolean ones are a selector's labels
    (CCS strata, TF-DCon/RecRanker clusters, DEALRec groups, GORACS's greedy flag) and are left
    out, as are the interaction counts ``n_train`` / ``n_valid`` and ``exclude``."""
    out = Path(out)
    if methods is None:
        files = sorted(out.glob("cells/b*/*/s0/select/scores.csv"))
    elif budget is None:
        return None
    else:
        files = [out / Cell(budget, m, 0).path / "select" / "scores.csv" for m in methods
                 if m != FULL]
    skip = {"user_id", "row", "selected", "group", "n_train", "n_valid", *exclude}
    merged = None
    for f in files:
        if not f.exists():
            continue
        df = pd.read_csv(f)
        keep = ["row"] + [c for c in df.columns
                          if c not in skip and pd.api.types.is_float_dtype(df[c])]
        df = df[keep]
        if merged is None:
            merged = df
        else:
            new = [c for c in df.columns if c not in merged.columns]
            if new:
                merged = merged.merge(df[["row", *new]], on="row", how="outer")
    return merged


def _report(cfg, ds, agg, sig, cov, cells, budgets, pool_rows, pngs, missing) -> str:
    lines = [f"# recprune benchmark on {ds.name}", "",
             f"Pool: {len(pool_rows)} training users"
             + ("" if cfg.pool is None else f" (seeded draw, pool seed {cfg.pool_seed})")
             + f"; budgets {budgets} ("
             + ", ".join(f"{100 * b / len(pool_rows):.2f}%" for b in budgets) + " of the pool); "
             f"{cfg.seeds} seed(s) per method; evaluated on {cells['eval_users'].iloc[0]} "
             f"{cfg.period} users (eval seed {cfg.eval_seed}); backends "
             f"{list(cfg.backends)}. Mean ± std over seeds; best selection method per column in "
             f"bold; * = paired t-test p < 0.05 against {cfg.baseline} (per-user values averaged "
             f"over seeds); † = Welch's t-test on the per-seed means p < 0.05 (the seed as the "
             f"random unit).", ""]
    if missing:
        lines += [f"**Interim report: {len(missing)} cell(s) of the grid are not finished and "
                  "are left out** (a method with fewer seeds than the grid's is marked "
                  "'k/n seeds'): " + ", ".join(f"`{m}`" for m in missing), ""]
    for b in budgets:
        lines += [f"## Budget {b}", "", markdown_table(cfg, agg, sig, b), ""]
    if len(sig):
        lines += [f"## Paired tests against {cfg.baseline} ({cfg.metric})", "",
                  "p (t) and p (Wilcoxon): paired over the test users, seeds held fixed; "
                  "p (seeds): Welch's t-test on the per-seed means (seeds as the random unit, "
                  "`-` with fewer than two seeds on a side).", "",
                  "| budget | method | backend | mean | baseline | rel. | p (t) | p (Wilcoxon) "
                  "| p (seeds) |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        s = sig[sig["metric"] == cfg.metric]
        for _, r in s.iterrows():
            lines.append(f"| {r['budget']} | {r['method']} | {r['backend']} | {r['mean']:.4f} | "
                         f"{r['baseline_mean']:.4f} | {100 * r['rel_improvement']:+.1f}% | "
                         f"{r['p_ttest']:.3g} | {r['p_wilcoxon']:.3g} | "
                         + (f"{r['p_seeds']:.3g} |" if np.isfinite(r['p_seeds']) else "- |"))
        lines.append("")
    lines += ["## Wall time per stage (seconds, mean over seeds)", "",
              "| budget | method | backend | selection | fine-tune | evaluate | epochs |",
              "|---|---|---|---:|---:|---:|---:|"]
    g = cells.groupby(["budget", "method", "backend"], sort=False)
    for (b, m, be), r in g:
        lines.append(f"| {b or '-'} | {m} | {be} | {r['select_only_s'].mean():.1f} | "
                     f"{r['finetune_s'].mean():.0f} | {r['eval_s'].mean():.0f} | "
                     f"{r['epochs'].mean():.1f} |")
    shared: dict = {}
    for v in cells["shared_stages"]:
        for k, s in json.loads(v).items():
            shared[k] = max(shared.get(k, 0.0), s)
    if shared:
        lines += ["", "Shared stages (computed once, cached in `cache/`): "
                  + ", ".join(f"{k} {v:.0f} s" for k, v in shared.items()), ""]
    lines += ["", "## Coverage of the selections (seed 0)", "",
              "`next_item_positions`: training examples of a backend that learns every "
              "next-item position (TIGER); `active_in_valid`: share of the users with "
              "interactions in the validation period.", "", _md(cov), ""]
    for name in pngs:
        lines += [f"![{name}]({name})", ""]
    return "\n".join(lines)


def _md(df: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (floats with 3 decimals)."""
    def f(v):
        return f"{v:.3f}" if isinstance(v, (float, np.floating)) else str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(f(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines)


__all__ = ["ABLATIONS", "BenchmarkConfig", "BenchmarkResult", "FULL", "PAPER_METHODS",
           "aggregate", "coverage_stats", "expand_methods", "markdown_table", "pool_scores",
           "resolve_budget",
           "run_benchmark", "significance"]
