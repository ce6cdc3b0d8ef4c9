"""Rich progress for long work: a rows counter on stderr."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


@contextmanager
def row_progress(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """Yields `advance(n)`; shows rows done and elapsed time while the block runs."""
    columns = [
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        MofNCompleteColumn() if total else TextColumn("{task.completed:,.0f} rows"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
