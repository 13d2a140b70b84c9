"""Rich progress bars used by every long stage."""

from __future__ import annotations

from contextlib import contextmanager

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


class _NullProgress:
    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def advance(self, *a, **k):
        pass


@contextmanager
def progress(enabled: bool = True):
    """A rich ``Progress`` (or a no-op stand-in when ``enabled`` is false)."""
    if not enabled:
        yield _NullProgress()
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  transient=False) as p:
        yield p
