"""Command line interface: a thin layer over :mod:`recprune.pipeline` and the stage APIs.

One module per command group (``select``, ``llm``: finetune / evaluate / compare / run,
``benchmark``, ``data``: data stats and the surrogate, ``options``: the generated option
reference). Errors caused by input (:class:`~recprune.errors.RecpruneError`) are printed as one
clear line and exit with status 2; no traceback.
"""

import sys

from recprune.cli import benchmark, data, llm, options, select  # noqa: F401 (the commands)
from recprune.cli.app import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover
    sys.exit(app())
