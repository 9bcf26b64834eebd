"""What every command shares: the stderr console, error reporting, progress bars."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from movq_cli.errors import MovqError

stderr = Console(stderr=True, highlight=False)


def error_line(message: str) -> None:
    stderr.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Known errors become one red line on stderr and their exit code; Ctrl-C or SIGTERM exit 130."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    except MovqError as error:
        error_line(str(error))
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        stderr.print("[red]interrupted[/red]; partial output removed")
        raise typer.Exit(130) from None
    except Exception as error:  # the last line of defence: still one line, no traceback
        if os.environ.get("MOVQ_DEBUG"):
            raise
        message = str(error).splitlines()[0] if str(error) else ""
        error_line(f"unexpected {type(error).__name__}: {message} (MOVQ_DEBUG=1 shows more)")
        raise typer.Exit(1) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextmanager
def frame_progress(description: str, total: int, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A Rich progress bar on stderr (only when it is a terminal); yields `advance(frames)`."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
        disable=quiet or not sys.stderr.isatty(),
    )
    with progress:
        task = progress.add_task(description, total=total, rate="")

        def advance(frames: int) -> None:
            progress.advance(task, frames)
            speed = progress.tasks[task].speed
            progress.update(task, rate=f"{speed:.2f} frames/s" if speed else "")

        yield advance


def summary(frames: int, frame_size: tuple[int, int], seconds: float, output: object) -> None:
    height, width = frame_size
    stderr.print(
        f"wrote {frames} frame(s) of {width}x{height} in {seconds:.1f} s "
        f"({frames / max(seconds, 1e-9):.2f} frames/s) -> {escape(str(output))}",
        soft_wrap=True,
    )
