"""Everything quorum tells a person goes to stderr, so stdout and CSV files stay clean."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

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
    """Wrap an iterable in a progress bar with rate and ETA; `size(item)` is how far each item advances it.

    Where stderr is not a terminal (a log file, a pipe, CI) a bar's redraws would be noise, and no
    output at all looks like a hung run: a plain line every PLAIN_EVERY seconds instead."""
    if quiet:
        yield from items
        return
    if not console.is_terminal:
        yield from _plain_progress(items, total, description, unit, size)
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(unit),
               TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task, size(item))


PLAIN_EVERY = 5.0  # seconds between the plain progress lines of a run whose stderr is not a terminal


def _plain_progress(items: Iterable[T], total: int, description: str, unit: str,
                    size: Callable[[T], int]) -> Iterator[T]:
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += size(item)
        now = time.monotonic()
        if now - last >= PLAIN_EVERY and done < total:
            last = now
            rate = done / (now - start)
            left = f", about {_duration((total - done) / rate)} left" if rate else ""
            console.print(f"{description}: {done}/{total} {unit}, {rate:.1f} {unit}/s{left}", markup=False)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
