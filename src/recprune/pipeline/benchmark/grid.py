"""The grid: every (budget, method, seed, backend) cell selected, fine-tuned and evaluated,
resumably."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from recprune.backends import create_backend
from recprune.backends.base import FitResult
from recprune.data import load_dataset
from recprune.data.dataset import InteractionDataset
from recprune.pipeline.benchmark.config import (BUSY, FULL, SHARED_STAGES_IGNORED,
                                                BenchmarkConfig, BenchmarkResult, Cell,
                                                resolve_budget)
from recprune.pipeline.benchmark.report import write_outputs
from recprune.errors import ConfigError, RecpruneError
from recprune.evaluation import EvalResult, eval_user_rows
from recprune.pipeline.llm import (EvaluateConfig, FinetuneConfig, _backend_options, run_evaluate,
                                   run_finetune)
from recprune.pipeline.select import SelectConfig, run_select
from recprune.pipeline.select import pool_rows as draw_pool
from recprune.store import (DirLock, fingerprint, make_dir, rows_key, write_json)

log = logging.getLogger(__name__)


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
