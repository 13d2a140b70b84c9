"""``recprune options``: every option of a workflow or registered class, from its config class."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from recprune.cli.app import app
from recprune.cli.common import friendly
from recprune.config import fields_of
from recprune.errors import RecpruneError


def _registries() -> dict:
    from recprune.backends import BACKENDS
    from recprune.scoring.registry import SCORES
    from recprune.scoring.solvers import SOLVERS
    from recprune.selection import SELECTORS

    return {"selector": SELECTORS, "backend": BACKENDS, "solver": SOLVERS, "score": SCORES}


def _workflows() -> dict:
    from recprune.pipeline import SelectConfig

    return {"select": SelectConfig}


def _rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    rows = []
    for f in fields_of(cls):
        if f["nested"] is not None:
            rows += _rows(type(f["nested"]), f"{prefix}{f['name']}.")
            continue
        default = "(required)" if f["default"] is dataclasses.MISSING else repr(f["default"])
        rows.append((prefix + f["name"], f["type"], default, f["help"]))
    return rows


@app.command()
@friendly
def options(
    kind: Annotated[str, typer.Argument(
        help="'select' (the workflow's dotted --set paths), or a registry: 'selector', "
             "'backend', 'solver', 'score'.")] = "selector",
    name: Annotated[Optional[str], typer.Argument(help="One registered name.")] = None,
) -> None:
    """List options: of a workflow config, or of each registered selector/backend/solver."""
    out = Console(width=160)
    if kind in _workflows():
        t = Table(title=f"recprune {kind}: options (--set PATH=VALUE, or keys of --config FILE)")
        for c in ("path", "type", "default", "help"):
            t.add_column(c)
        for r in _rows(_workflows()[kind]):
            t.add_row(*r)
        out.print(t)
        return
    regs = _registries()
    if kind not in regs:
        raise RecpruneError(f"unknown kind {kind!r}; choose one of "
                            f"{sorted([*_workflows(), *regs])}")
    reg = regs[kind]
    if kind == "score":
        t = Table(title="scores a selector can require")
        for c in ("name", "kind", "what"):
            t.add_column(c)
        for n in sorted(reg.discover()):
            t.add_row(n, reg[n].kind, reg[n].doc.split("\n")[0])
        out.print(t)
        return
    names = [name] if name else reg.names()
    for n in names:
        e = reg.entry(n)
        t = Table(title=f"{kind} {n}: {e.doc}", title_justify="left")
        for c in ("option", "type", "default", "help"):
            t.add_column(c)
        for r in (_rows(e.config) if e.config is not None else []):
            t.add_row(*r)
        out.print(t)
