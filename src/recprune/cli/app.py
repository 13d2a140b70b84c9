"""The typer application and its command groups; each command lives in its own module."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from recprune.utils.registry import load_plugins

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="recprune: pick the few samples an LLM recommender should be fine-tuned on.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect datasets.")
surrogate_app = typer.Typer(no_args_is_help=True, help="Train / evaluate the SASRec surrogate.")
app.add_typer(data_app, name="data")
app.add_typer(surrogate_app, name="surrogate")


@app.callback()
def _main(plugin: Annotated[Optional[list[str]], typer.Option(
        "--plugin", help="Import this module first (repeatable): its @register_selector / "
                         "@BACKENDS.register / @register_solver classes become available by "
                         "name. RECPRUNE_PLUGINS=mod1,mod2 does the same.")] = None) -> None:
    from recprune.cli.common import console

    try:
        load_plugins(",".join(plugin or []))
    except Exception as e:  # a plugin's own error: one line, not a traceback
        console.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2) from None
