"""Fine-tune / evaluate / end-to-end workflows over the backends (``recprune finetune``,
``recprune evaluate``, ``recprune run``).

Run directories
---------------
``recprune finetune --out F``::

    F/config.json      the configuration used
    F/fit.json         per-epoch losses, best epoch, wall time, throughput, the selection used
    F/model/           the saved backend (``backend.json`` + weights / adapter); reload with
                       :func:`recprune.backends.load_backend`
    F/checkpoints/     per-epoch checkpoints of an unfinished fit (a rerun resumes from them)

``recprune evaluate --out E``::

    E/config.json, E/metrics.json (means with 95% CIs, wall time), E/per_user.csv (per-user
    metrics, for paired tests), E/ranked.npy (top-K item ids), E/generations.jsonl (BIGRec)

``recprune run --out R``: ``R/select/`` (a ``recprune select`` run dir), ``R/finetune/``,
``R/eval/`` and ``R/report.json`` + ``R/report.md``.

A finished stage is reused when the same command runs again with the same configuration (its
key is stored beside its output); a changed configuration recomputes it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from recprune.backends import FitResult, Recommender, create_backend, load_backend
from recprune.backends.base import BACKENDS
from recprune.data import InteractionDataset, load_dataset
from recprune.errors import ConfigError, DataError
from recprune.evaluation import DEFAULT_KS, EvalResult, eval_user_rows, evaluate_backend
from recprune.pipeline.select import SelectConfig, run_select
from recprune.store import fingerprint, make_dir, rows_key, write_json, write_jsonl, write_text

log = logging.getLogger(__name__)


def _load(data: str, trust_pickle: bool) -> InteractionDataset:
    return load_dataset(data, **({"trust_pickle": True} if trust_pickle else {}))


def load_selection(path: str | Path, ds: InteractionDataset) -> np.ndarray:
    """User rows of a selection file (external user ids, one per line; ``#`` comments and blank
    lines ignored) or of a ``recprune select`` run directory (its ``selected_users.txt``).

    Unknown or duplicate user ids, non-integer lines and an empty selection are
    :class:`DataError` naming the file and line."""
    p = Path(path)
    if p.is_dir():
        p = p / "selected_users.txt"
    if not p.is_file():
        raise DataError("selection file not found", path=str(p))
    order = np.argsort(ds.user_ids, kind="stable")
    sorted_ids = ds.user_ids[order]
    rows: list[int] = []
    seen: dict[int, int] = {}
    for lineno, raw in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        s = raw.split("#", 1)[0].strip()
        if not s:
            continue
        try:
            uid = int(s)
        except ValueError:
            raise DataError(f"not a user id: {s[:40]!r}", path=str(p), line=lineno) from None
        pos = int(np.searchsorted(sorted_ids, uid))
        if pos >= len(sorted_ids) or sorted_ids[pos] != uid:
            raise DataError(f"unknown user id {uid} (not in data set {ds.name!r})",
                            path=str(p), line=lineno)
        if uid in seen:
            raise DataError(f"user id {uid} listed twice (first on line {seen[uid]})",
                            path=str(p), line=lineno)
        seen[uid] = lineno
        rows.append(int(order[pos]))
    if not rows:
        raise DataError("empty selection: no user ids", path=str(p))
    return np.asarray(rows, dtype=np.int64)


def _backend_options(backend: str, options: dict, seed: int) -> dict:
    opts = dict(options)
    opts.setdefault("seed", seed)
    return opts


# ----------------------------------------------------------------------------- finetune

@dataclass
class FinetuneConfig:
    """``recprune finetune``: fine-tune ``backend`` on the users of ``selection`` (a file of user
    ids or a ``recprune select`` run directory; ``None`` = every training user, i.e. full-data
    fine-tuning)."""

    data: str
    out: str
    backend: str = "tiger"
    backend_options: dict = field(default_factory=dict)
    selection: str | None = None
    seed: int = 0
    trust_pickle: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneResult:
    run_dir: Path
    backend: Recommender
    fit: FitResult
    rows: np.ndarray
    reused: bool = False


def run_finetune(cfg: FinetuneConfig, *, dataset: InteractionDataset | None = None,
                 rows: np.ndarray | None = None, progress: bool = True) -> FinetuneResult:
    """Fine-tune and save the backend (see the module docstring for the run directory).

    ``rows`` overrides ``cfg.selection`` (used by :func:`run_end_to_end`)."""
    if cfg.backend not in BACKENDS:
        create_backend(cfg.backend)  # raises the registry's clear error
    opts = _backend_options(cfg.backend, cfg.backend_options, cfg.seed)
    backend = create_backend(cfg.backend, **opts)  # validates options before any work
    ds = dataset if dataset is not None else _load(cfg.data, cfg.trust_pickle)
    if rows is None:
        rows = (load_selection(cfg.selection, ds) if cfg.selection
                else np.arange(ds.n_users, dtype=np.int64))
    rows = np.asarray(rows, dtype=np.int64)
    run = make_dir(cfg.out, "--out")
    key = fingerprint({"backend": cfg.backend, "options": backend.config_dict(),
                       "data": ds.fingerprint(), "rows": rows_key(rows)})
    fit_path, model_dir = run / "fit.json", run / "model"
    if fit_path.exists() and (model_dir / "backend.json").exists():
        try:
            meta = json.loads(fit_path.read_text())
            if meta.get("key") == key:
                log.info("finetune: reusing the finished model in %s", model_dir)
                fit = FitResult(**{k: meta["fit"][k] for k in ("history", "best_epoch",
                                                                "seconds", "stats")})
                return FinetuneResult(run, load_backend(model_dir), fit, rows, reused=True)
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    write_json(run / "config.json", {**cfg.to_dict(), "backend_config": backend.config_dict()})
    fit = backend.fit(ds, rows, out_dir=run / "checkpoints", progress=progress)
    backend.save(model_dir)
    write_json(fit_path, {"key": key, "backend": cfg.backend, "n_selected": int(len(rows)),
                          "selected_user_ids": ds.user_ids[rows].tolist(), "fit": fit.to_dict()})
    return FinetuneResult(run, backend, fit, rows)


# ----------------------------------------------------------------------------- evaluate

@dataclass
class EvaluateConfig:
    """``recprune evaluate``: full-ranking evaluation of a saved model (``model``: a
    ``finetune`` run directory or its ``model/``), or of an un-fitted ``backend`` (the untuned
    model; ``pop`` = most-popular over all training users)."""

    data: str
    out: str
    model: str | None = None
    backend: str | None = None
    backend_options: dict = field(default_factory=dict)
    period: str = "test"
    ks: tuple[int, ...] = DEFAULT_KS
    eval_users: int | None = None
    seed: int = 0
    device: str = "auto"
    trust_pickle: bool = False
    chunk_users: int = 200

    def to_dict(self) -> dict:
        return asdict(self)


def _model_dir(model: str | Path) -> Path:
    p = Path(model)
    if (p / "model" / "backend.json").exists():
        return p / "model"
    return p


def run_evaluate(cfg: EvaluateConfig, *, dataset: InteractionDataset | None = None,
                 backend: Recommender | None = None, progress: bool = True) -> EvalResult:
    """Evaluate and write ``metrics.json``, ``per_user.csv``, ``ranked.npy`` into ``cfg.out``."""
    if backend is None and (cfg.model is None) == (cfg.backend is None):
        raise ConfigError("give exactly one of a saved model (--model) or a backend to evaluate "
                          "untuned (--backend)")
    if cfg.period not in ("valid", "test"):
        raise ConfigError(f"period must be 'valid' or 'test', got {cfg.period!r}")
    ks = tuple(int(k) for k in cfg.ks)
    if not ks or min(ks) < 1:
        raise ConfigError(f"K values must be positive, got {cfg.ks}")
    if isinstance(cfg.chunk_users, bool) or not isinstance(cfg.chunk_users, int) \
            or cfg.chunk_users < 1:
        raise ConfigError(f"chunk_users must be a positive integer, got {cfg.chunk_users!r}")
    if backend is None:
        if cfg.model is not None:
            backend = load_backend(_model_dir(cfg.model), device=cfg.device)
        else:
            backend = create_backend(cfg.backend, **_backend_options(
                cfg.backend, cfg.backend_options, cfg.seed))
    ds = dataset if dataset is not None else _load(cfg.data, cfg.trust_pickle)
    rows = eval_user_rows(ds, cfg.period, cfg.eval_users, cfg.seed)
    out = Path(cfg.out)
    key = fingerprint({"config": {k: v for k, v in cfg.to_dict().items() if k != "out"},
                 "backend": backend.config_dict(), "data": ds.fingerprint(),
                 "model_stamp": _stamp(cfg.model)})
    if (out / "metrics.json").exists():
        try:
            if json.loads((out / "metrics.json").read_text()).get("key") == key:
                log.info("evaluate: reusing %s", out)
                return EvalResult.load(out)
        except (json.JSONDecodeError, DataError):
            pass
    make_dir(out, "--out")
    write_json(out / "config.json", {**cfg.to_dict(), "backend_config": backend.config_dict()})
    # finished chunks of this exact evaluation (same key) survive a crash and are reused
    res = evaluate_backend(backend, ds, period=cfg.period, ks=ks, rows=rows, progress=progress,
                           chunk_dir=out / "partial" / key[:16], chunk_users=cfg.chunk_users)
    res.info["key"] = key
    gens = res.generations
    if gens is not None and len(gens) == len(rows):
        write_jsonl(out / "generations.jsonl",
                    [{"user_id": int(u), "generated": g} for u, g in zip(res.user_ids, gens)])
    res.save(out)
    shutil.rmtree(out / "partial", ignore_errors=True)
    return res


def _stamp(model: str | None) -> str | None:
    """Modification time of a saved model's manifest: a re-trained model is re-evaluated."""
    if model is None:
        return None
    p = _model_dir(model) / "backend.json"
    return str(p.stat().st_mtime_ns) if p.exists() else None


# ----------------------------------------------------------------------------- end to end

@dataclass
class RunConfig:
    """``recprune run``: select (``select.method``, or ``"all"`` for full-data fine-tuning) ->
    fine-tune ``backend`` -> evaluate; one report."""

    select: SelectConfig
    backend: str = "tiger"
    backend_options: dict = field(default_factory=dict)
    period: str = "test"
    ks: tuple[int, ...] = DEFAULT_KS
    eval_users: int | None = None
    eval_seed: int = 0

    @property
    def out(self) -> Path:
        return Path(self.select.out)

    def to_dict(self) -> dict:
        d = asdict(self)
        return d


def run_end_to_end(cfg: RunConfig, *, dataset: InteractionDataset | None = None,
                   progress: bool = True) -> dict:
    """Run the three stages into ``cfg.select.out`` and write ``report.json`` / ``report.md``."""
    run = cfg.out
    # validate cheap things first
    create_backend(cfg.backend, **_backend_options(cfg.backend, cfg.backend_options,
                                                   cfg.select.seed))
    ds = dataset if dataset is not None else _load(cfg.select.data, cfg.select.trust_pickle)
    eval_user_rows(ds, cfg.period, cfg.eval_users, cfg.eval_seed)
    make_dir(run, "--out")
    write_json(run / "config.json", cfg.to_dict())
    timings: dict[str, float] = {}
    t = time.perf_counter()
    if cfg.select.method == "all":
        rows = np.arange(ds.n_users, dtype=np.int64)
        sel_info: dict = {"method": "all", "n_selected": int(len(rows))}
    else:
        scfg = dataclasses.replace(cfg.select, out=str(run / "select"))
        sres = run_select(scfg, dataset=ds, show_progress=progress)
        rows = np.sort(sres.selection.rows)
        sel_info = {"method": scfg.method, "budget": scfg.budget, "n_selected": int(len(rows)),
                    "pool": scfg.pool, "stage_seconds": sres.timings}
    timings["select"] = time.perf_counter() - t
    t = time.perf_counter()
    ft = run_finetune(FinetuneConfig(data=cfg.select.data, out=str(run / "finetune"),
                                     backend=cfg.backend, backend_options=cfg.backend_options,
                                     seed=cfg.select.seed), dataset=ds, rows=rows,
                      progress=progress)
    timings["finetune"] = time.perf_counter() - t
    t = time.perf_counter()
    ev = run_evaluate(EvaluateConfig(data=cfg.select.data, out=str(run / "eval"),
                                     model=str(run / "finetune"), period=cfg.period,
                                     ks=cfg.ks, eval_users=cfg.eval_users, seed=cfg.eval_seed),
                      dataset=ds, backend=ft.backend, progress=progress)
    timings["evaluate"] = time.perf_counter() - t
    report = {"data": {"name": ds.name, "source": ds.source, "users": ds.n_users,
                       "items": ds.n_items},
              "selection": sel_info,
              "backend": {"name": cfg.backend, "config": ft.backend.config_dict()},
              "fit": {"best_epoch": ft.fit.best_epoch, "epochs_run": len(ft.fit.history),
                      "seconds": ft.fit.seconds, "stats": ft.fit.stats,
                      "history": ft.fit.history, "reused": ft.reused},
              "evaluation": ev.to_dict(), "timings": timings}
    write_json(run / "report.json", report)
    write_text(run / "report.md", report_markdown(report))
    return report


def _fmt(x: float | None, nd: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def report_markdown(report: dict) -> str:
    """Human-readable summary of :func:`run_end_to_end`'s report."""
    ev, sel, fit = report["evaluation"], report["selection"], report["fit"]
    lines = [f"# recprune run: {sel['method']} -> {report['backend']['name']}", "",
             f"Data: {report['data']['name']} ({report['data']['users']} users, "
             f"{report['data']['items']} items). Selected {sel['n_selected']} users"
             + (f" (budget {sel['budget']})" if sel.get("budget") else "") + ".", "",
             f"Fine-tuning: {fit['epochs_run']} epochs, best epoch {fit['best_epoch']}, "
             f"{fit['seconds']:.0f} s.", "",
             f"Evaluation on the {ev['period']} period, {ev['n_users']} users, full ranking over "
             f"all items (history excluded), {ev['seconds']:.0f} s:", "",
             "| metric | mean | 95% CI |", "|---|---:|---|"]
    for m, s in ev["metrics"].items():
        lines.append(f"| {m} | {_fmt(s['mean'])} | [{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}] |")
    lines += ["", "Stage wall times (s): " + ", ".join(f"{k} {v:.0f}"
                                                    for k, v in report["timings"].items()), ""]
    return "\n".join(lines)
