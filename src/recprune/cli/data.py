"""``recprune data stats`` and ``recprune surrogate train|eval``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from recprune.cli.app import data_app, surrogate_app
from recprune.cli.common import DataOpt, TrustOpt, console, friendly, load_data, setup_logging


@data_app.command("stats")
@friendly
def data_stats(data: DataOpt = "synthetic", trust_pickle: TrustOpt = False,
               as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
               ) -> None:
    """Dataset statistics (the paper's Table 1 columns plus sequence lengths)."""
    from recprune.data.stats import dataset_stats, format_stats

    setup_logging(True)
    st = dataset_stats(load_data(data, trust_pickle))
    if as_json:
        print(json.dumps(st, indent=2, default=float))
    else:
        Console().print(format_stats(st))


@surrogate_app.command("train")
@friendly
def surrogate_train(
    data: DataOpt, out: Annotated[Path, typer.Option(help="Checkpoint file to write.")],
    loss: str = "ce", epochs: int = 200, patience: int = 5, batch_size: int = 256,
    lr: float = 1e-3, max_minutes: Optional[float] = None, seed: int = 0,
    trust_pickle: TrustOpt = False, quiet: bool = False,
) -> None:
    """Train SASRec with early stopping on the validation period; save a checkpoint."""
    from recprune.surrogate import SurrogateTrainConfig, save_surrogate, train_surrogate

    setup_logging(quiet)
    ds = load_data(data, trust_pickle)
    cfg = SurrogateTrainConfig(loss=loss, max_epochs=epochs, patience=patience,
                               batch_size=batch_size, lr=lr, max_minutes=max_minutes, seed=seed)
    res = train_surrogate(ds, cfg, show_progress=not quiet)
    save_surrogate(out, res, ds)
    best = {k: round(v, 4) for k, v in res.best_metrics.items() if k != "n_users"}
    console.print(f"best epoch {res.best_epoch} of {len(res.history)} ({res.seconds:.0f} s): "
                  f"valid {best} -> {out}")


@surrogate_app.command("eval")
@friendly
def surrogate_eval(data: DataOpt, checkpoint: Annotated[Path, typer.Option()],
                   period: str = "test", trust_pickle: TrustOpt = False) -> None:
    """Full-ranking Recall/NDCG@{10,20,50} of a surrogate checkpoint."""
    from recprune.surrogate import evaluate, load_surrogate

    setup_logging(True)
    ds = load_data(data, trust_pickle)
    res = load_surrogate(checkpoint, ds)
    m = evaluate(res.model, ds, period)
    print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in m.items()}))
