"""What every command prints through: the two consoles, the one-line error, tables and progress
bars (on stderr, transient, so piped output stays the tables)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Wide enough for the tables when piped or captured (rich would fall back to 80 columns).
console = Console(highlight=False, width=None if sys.stdout.isatty() else 180)
err_console = Console(stderr=True, highlight=False)

Report = Callable[[str, int, int], None]  # (what, done, total)


def print_error(message: str) -> None:
    # Messages are plain text: "[ray]" in "pip install '.[ray]'" is not rich markup.
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def print_table(title: str, columns: list[str], rows: list[list[Any]], *, no_wrap: tuple[str, ...] = (),
                **kwargs: Any) -> None:
    """A rich table; the columns named in `no_wrap` keep each cell on one line (others fold)."""
    table = Table(title=title, **kwargs)
    for col in columns:
        table.add_column(col, overflow="fold", no_wrap=col in no_wrap)
    for row in rows:
        table.add_row(*[str(v) for v in row])
    console.print(table)


@contextlib.contextmanager
def steps(description: str) -> Iterator[Report]:
    """A rich progress bar fed by the library's (what, done, total) callbacks."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=True) as progress:
        tasks: dict[str, Any] = {}
        main = progress.add_task(description, total=None)

        def report(what: str, done: int, total: int) -> None:
            if total <= 10:  # a step counter: one bar, its description is the current step
                progress.update(main, description=f"{description}: {what}", completed=done, total=total)
                return
            if what not in tasks:
                tasks[what] = progress.add_task(what, total=total)
            progress.update(tasks[what], completed=done, total=total)

        yield report


@contextlib.contextmanager
def counted(description: str, total: int) -> Iterator[Callable[[str, str], None]]:
    """A bar over `total` items fed by (event, key) hooks: "start" names the item, "done" counts it."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  console=err_console, transient=True) as progress:
        task = progress.add_task(description, total=total)

        def hook(event: str, key: str) -> None:
            if event == "start":
                progress.update(task, description=f"{description} {key}")
            else:
                progress.advance(task)

        yield hook


def load_data(data_dir: Path | None):
    """The dataset, verified, with a download bar when it has to be fetched first."""
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    from toolkit.core import data

    with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
                  console=err_console, transient=True) as progress:
        tasks: dict[str, Any] = {}

        def report(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(f"downloading {name}", total=total or None)
            progress.update(tasks[name], completed=done)

        return data.load(data_dir, progress=report)
