"""``recprune finetune``, ``evaluate``, ``compare`` and ``run``: the LLM-recommender stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from recprune.cli.app import app
from recprune.cli.common import (BackendOpt, BatchOpt, DataOpt, EffortCacheOpt, EpochsOpt,
                                 EvalUsersOpt, KsOpt, LlmOpt, LrOpt, SetOpt, TrustOpt, backend_opts,
                                 console, friendly, metrics_table, parse_ks, parse_lora_layers,
                                 parse_sets, score_options, setup_logging)
from recprune.cli.select import METHOD_HELP, MethodOptOpt, ScoreOptOpt
from recprune.errors import RecpruneError


def method_options(method: str, lam: float | None, groups: int | None,
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
    opts.update(parse_sets(extra, "--option"))
    return opts


@app.command()
@friendly
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

    setup_logging(quiet)
    cfg = FinetuneConfig(data=data, out=str(out), backend=backend,
                         backend_options=backend_opts(backend, set_, epochs, lr, batch_size,
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
@friendly
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

    setup_logging(quiet)
    opts = backend_opts(backend, set_, None, None, None, llm, device) if backend else {}
    cfg = EvaluateConfig(data=data, out=str(out), model=str(model) if model else None,
                         backend=backend, backend_options=opts, period=period,
                         ks=parse_ks(ks), eval_users=eval_users, seed=seed, device=device,
                         trust_pickle=trust_pickle, chunk_users=chunk_users)
    res = run_evaluate(cfg, progress=not quiet)
    console.print(metrics_table(f"{period}: {res.n_users} users, {res.seconds:.0f} s",
                                 res.summary()))
    print(json.dumps({k: round(v["mean"], 6) for k, v in res.summary().items()}))


@app.command()
@friendly
def compare(
    a: Annotated[Path, typer.Argument(help="Evaluation directory of run A.")],
    b: Annotated[Path, typer.Argument(help="Evaluation directory of run B (the reference).")],
    metric: Annotated[Optional[list[str]], typer.Option(
        help="Metric(s) to compare (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Paired comparison of two evaluations on their common users (t-test and Wilcoxon)."""
    from recprune.evaluation import EvalResult, paired_test

    setup_logging(True)
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
@friendly
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

    setup_logging(quiet)
    m = method
    mopts = method_options(m, lam, groups, hard_prune, option, allow_all=True)
    layers = parse_lora_layers(lora_layers)
    scfg = SelectConfig(data=data, budget=budget, out=str(out), method=m,
                        method_options=mopts, seed=seed, trust_pickle=trust_pickle, pool=pool,
                        surrogate_checkpoint=str(surrogate_checkpoint) if surrogate_checkpoint
                        else None, effort={"lora_layers": layers, "seed": seed},
                        effort_cache=str(effort_cache) if effort_cache else None,
                        llm=llm, device=device, **score_options(score_option))
    cfg = RunConfig(select=scfg, backend=backend,
                    backend_options=backend_opts(backend, set_, epochs, lr, batch_size, llm,
                                                  device),
                    ks=parse_ks(ks), eval_users=eval_users, eval_seed=seed)
    report = run_end_to_end(cfg, progress=not quiet)
    console.print(metrics_table(
        f"{m} ({report['selection']['n_selected']} users) -> {backend}: "
        f"{report['evaluation']['n_users']} test users", report["evaluation"]["metrics"]))
    console.print(f"report -> {out}/report.md")
