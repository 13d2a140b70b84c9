"""``recprune benchmark``: the resumable grid of selections x backends x seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from recprune.cli.app import app
from recprune.cli.common import (DataOpt, EffortCacheOpt, EvalUsersOpt, KsOpt, LlmOpt, TrustOpt,
                                 console, dotted, friendly, parse_budgets, parse_ks,
                                 parse_lora_layers, score_options, setup_logging)
from recprune.cli.select import ScoreOptOpt
from recprune.errors import RecpruneError


@app.command()
@friendly
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

    setup_logging(quiet)
    layers = parse_lora_layers(lora_layers)
    bopts = dotted(set_, "--set")
    if llm is not None:
        bopts.setdefault("bigrec", {})["model"] = llm
    sopts: dict = {"effort": {"lora_layers": layers}, "device": device,
                   **score_options(score_option)}
    if llm is not None:
        sopts["llm"] = llm
    if surrogate_checkpoint is not None:
        sopts["surrogate_checkpoint"] = str(surrogate_checkpoint)
    if effort_cache is not None:
        sopts["effort_cache"] = str(effort_cache)
    cfg = BenchmarkConfig(
        data=data, out=str(out), methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        backends=tuple(b.strip() for b in backends.split(",") if b.strip()),
        budgets=parse_budgets(budget), seeds=seeds, full_seeds=full_seeds, pool=pool,
        pool_seed=pool_seed, eval_users=eval_users, eval_seed=eval_seed, period=period,
        ks=parse_ks(ks), metric=metric, baseline=baseline, popularity=popularity,
        method_options=dotted(option, "--option"), backend_options=bopts, select_options=sopts,
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
