"""What every command shares: the stderr console, error reporting, progress bars."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from movq_cli.device import DTYPES
from movq_cli.errors import MovqError

if TYPE_CHECKING:
    from movq_cli.batch import FileReport

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


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
        disable=quiet or not sys.stderr.isatty(),
    )


def _frames_per_second(frames: int, seconds: float) -> str:
    return f"{frames / seconds:.2f} frames/s" if frames and seconds > 0 else ""


@contextmanager
def frame_progress(description: str, total: int, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A Rich progress bar on stderr (only when it is a terminal); yields `advance(frames)`."""
    with _progress(quiet) as progress:
        task = progress.add_task(description, total=total, unit="frames", rate="")

        def advance(frames: int) -> None:
            progress.advance(task, frames)
            state = progress.tasks[task]
            progress.update(task, rate=_frames_per_second(int(state.completed), state.elapsed or 0))

        yield advance


class BatchProgress:
    """Two bars on stderr: the whole batch (files, frames, frames/s, ETA) and the file being decoded."""

    def __init__(self, progress: Progress, files: int) -> None:
        self.progress = progress
        self.batch = progress.add_task("all files", total=files, unit="files", rate="")
        self.file: TaskID | None = None
        self.frames = 0
        self.started = time.perf_counter()

    def start_file(self, name: str, frames: int) -> Callable[[int], None]:
        """Show a bar for the next file; returns its `advance(frames)`."""
        self.file = self.progress.add_task(name, total=frames, unit="frames", rate="")
        file = self.file

        def advance(frames: int) -> None:
            self.frames += frames
            self.progress.advance(file, frames)
            rate = _frames_per_second(self.frames, time.perf_counter() - self.started)
            self.progress.update(file, rate=rate)
            self.progress.update(self.batch, unit=f"files, {self.frames} frames", rate=rate)

        return advance

    def end_file(self) -> None:
        if self.file is not None:
            self.progress.remove_task(self.file)
            self.file = None
        self.progress.advance(self.batch, 1)


@contextmanager
def batch_progress(files: int, quiet: bool) -> Iterator[BatchProgress]:
    with _progress(quiet) as progress:
        yield BatchProgress(progress, files)


def summary(frames: int, frame_size: tuple[int, int], seconds: float, output: object) -> None:
    height, width = frame_size
    stderr.print(
        f"wrote {frames} frame(s) of {width}x{height} in {seconds:.1f} s "
        f"({frames / max(seconds, 1e-9):.2f} frames/s) -> {escape(str(output))}",
        soft_wrap=True,
    )


def batch_summary(reports: list[FileReport], seconds: float) -> None:
    """The end of a batch on stderr: a table of the files that were skipped or failed, then the totals."""
    missed = [report for report in reports if report.status != "done"]
    if missed:
        table = Table(box=None, padding=(0, 2, 0, 0), show_edge=False)
        for column in ("status", "input", "reason"):
            table.add_column(column, overflow="fold")
        for report in missed:
            colour = "red" if report.status == "failed" else "yellow"
            reason = report.error or f"{report.output} exists"
            table.add_row(f"[{colour}]{report.status}[/{colour}]", escape(str(report.input)), escape(reason))
        stderr.print(table)
    counts = Counter(report.status for report in reports)
    frames = sum(report.frames for report in reports)
    speed = _frames_per_second(frames, seconds)
    stderr.print(
        f"{counts['done']} done ({frames} frame(s) in {seconds:.1f} s{', ' + speed if speed else ''}), "
        f"{counts['skipped']} skipped, {counts['failed']} failed",
        soft_wrap=True,
    )


# Options several commands share, declared once.
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOption = Annotated[str, typer.Option(help=f"Compute precision: {', '.join(DTYPES)}.")]
GridOption = Annotated[str | None, typer.Option(help="HxW: frame shape for flat token rows (L,) or (T, L).")]
KeyOption = Annotated[str | None, typer.Option(help="Which array of an .npz file to read.")]
CodesArgument = Annotated[Path, typer.Argument(help="Code file: .npy or .npz of integer codes or float latents.")]
