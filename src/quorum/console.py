"""Everything quorum tells a person goes to stderr, so stdout and CSV files stay clean."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

T = TypeVar("T")
console = Console(stderr=True, highlight=False, soft_wrap=True)


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        console.print(message)


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} {self.unit}/s" if task.speed else f"- {self.unit}/s")


def track(items: Iterable[T], total: int, description: str, quiet: bool = False, unit: str = "batches",
          size: Callable[[T], int] = lambda item: 1) -> Iterator[T]:
    """Wrap an iterable in a progress bar with rate and ETA; `size(item)` is how far each item advances it."""
    if quiet or not console.is_terminal:  # a log file gets the epoch lines, not bar redraws
        yield from items
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(unit),
               TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task, size(item))
