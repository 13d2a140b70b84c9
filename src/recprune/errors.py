"""Errors that recprune raises for bad input.

Every user-facing failure is a :class:`RecpruneError` whose message names the file, line and field
involved, so that the CLI can print it without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class RecpruneError(Exception):
    """Base class of all errors caused by input or configuration (not by bugs)."""


class DataError(RecpruneError):
    """Malformed or inconsistent input data.

    Parameters
    ----------
    message:
        What is wrong.
    path, line, field:
        Where it is wrong (any may be omitted). ``line`` is 1-based, as an editor shows it.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        where = []
        if self.path is not None:
            where.append(self.path)
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ConfigError(RecpruneError):
    """An invalid option value (budget out of range, negative lambda, unknown method...)."""


class ScoringError(RecpruneError):
    """A numerical failure while scoring (NaN/inf losses or gradients)."""
