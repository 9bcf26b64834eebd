"""What every command shares: the stderr console, error reporting, progress bars."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

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

from movq_cli.errors import InputError, MovqError, as_flags, first_line, interrupt

if TYPE_CHECKING:
    from movq_cli.batch import FileReport

stderr = Console(stderr=True, highlight=False)


def printable(text: str) -> str:
    """`text` on one line: control characters (a newline in a file name) written as escapes."""
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in text)


def error_line(message: str) -> None:
    """One red line on stderr, with the library's keywords spelled as flags."""
    stderr.print(f"[red]error:[/red] {escape(printable(as_flags(message)))}", soft_wrap=True)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Known errors become one red line on stderr and their exit code; Ctrl-C or SIGTERM exit 130."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)  # SIGALRM: see errors.interrupt
    previous = {signum: signal.signal(signum, interrupt) for signum in signals}
    try:
        yield
    except MovqError as error:
        error_line(str(error))
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        stderr.print("[red]interrupted[/red]; partial output removed")
        raise typer.Exit(130) from None
    except Exception as error:  # the last line of defence: still one line, no traceback
        if isinstance(error, OSError) and error.errno == errno.ENAMETOOLONG:  # from any look at a path
            named = str(error.filename or "")
            error_line(f"a path is longer than this system takes ({len(named)} characters): {named[:60]}...")
            raise typer.Exit(2) from None
        if os.environ.get("MOVQ_DEBUG"):
            raise
        error_line(f"unexpected {type(error).__name__}: {first_line(error)} (MOVQ_DEBUG=1 shows more)")
        raise typer.Exit(1) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


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


class FileProgress:
    """One bar on stderr for one file, started once its frame count is known."""

    def __init__(self, progress: Progress, description: str) -> None:
        self.progress = progress
        self.description = description

    def start(self, total: int) -> Callable[[int], None]:
        """Show the bar for `total` frames; returns its `advance(frames)`."""
        task = self.progress.add_task(self.description, total=total, unit="frames", rate="")

        def advance(frames: int) -> None:
            self.progress.advance(task, frames)
            state = self.progress.tasks[task]
            self.progress.update(task, rate=_frames_per_second(int(state.completed), state.elapsed or 0))

        return advance


@contextmanager
def frame_progress(description: str, quiet: bool) -> Iterator[FileProgress]:
    """A Rich progress bar on stderr (only when it is a terminal), shown from `start(total)` on."""
    with _progress(quiet) as progress:
        yield FileProgress(progress, description)


class BatchProgress:
    """Bars on stderr: the whole batch (files, frames, frames/s, ETA) and each file being decoded
    (one at a time, or one per worker)."""

    def __init__(self, progress: Progress, files: int) -> None:
        self.progress = progress
        self.batch = progress.add_task("all files", total=files, unit="files", rate="")
        self.files: dict[Path, TaskID] = {}
        self.frames = 0
        self.started = time.perf_counter()

    def start_file(self, codes: Path, frames: int) -> Callable[[int], None]:
        """Show a bar for the code file `codes`; returns its `advance(frames)`."""
        file = self.files[codes] = self.progress.add_task(codes.name, total=frames, unit="frames", rate="")

        def advance(frames: int) -> None:
            self.frames += frames
            self.progress.advance(file, frames)
            rate = _frames_per_second(self.frames, time.perf_counter() - self.started)
            self.progress.update(file, rate=rate)
            self.progress.update(self.batch, unit=f"files, {self.frames} frames", rate=rate)

        return advance

    def end_file(self, codes: Path) -> None:
        if codes in self.files:
            self.progress.remove_task(self.files.pop(codes))
        self.progress.advance(self.batch, 1)


@contextmanager
def batch_progress(files: int, quiet: bool) -> Iterator[BatchProgress]:
    with _progress(quiet) as progress:
        yield BatchProgress(progress, files)


def summary(report: FileReport, decoder: str) -> None:
    """One line on stderr for one decoded file; `decoder` says on what it ran ("cpu, fp32")."""
    if report.status == "skipped":
        stderr.print(f"skipped: {escape(str(report.output))} exists", soft_wrap=True)
        return
    height, width = report.frame_size
    speed = f"{report.frames / max(report.seconds, 1e-9):.2f} frames/s"
    stderr.print(
        f"wrote {report.frames} frame(s) of {height}x{width} in {report.seconds:.1f} s ({speed}, {decoder}) "
        f"-> {escape(str(report.output))}",
        soft_wrap=True,
    )


def refuse_stdout(out: str | Path) -> None:
    """OUT "-" reads as standard output, which movq does not write to: say so rather than make a folder "-"."""
    if str(out) == "-":
        raise InputError("OUT - would be standard output; movq writes files: name one (clip.mp4) or a folder (frames/)")


def slow_dtype_note(dtype: str, devices: list) -> None:
    """A line on stderr when the CPU is to compute in fp16, which most CPUs do several times slower than bf16."""
    if dtype == "fp16" and any(device.type == "cpu" for device in devices):
        stderr.print(
            "note: fp16 is slow on the CPU (several times slower than bf16 on most); --dtype bf16 is as compact",
            soft_wrap=True,
        )


def _reason(report: FileReport) -> str:
    return as_flags(report.error) if report.error else f"{report.output} exists"


def report_json(report: FileReport) -> str:
    """One file's report as a line of JSON, its error in the command line's words."""
    fields = report.as_json()
    if fields["error"]:
        fields["error"] = as_flags(fields["error"])
    return json.dumps(fields)


def batch_summary(reports: list[FileReport], seconds: float, decoder: str) -> None:
    """The end of a batch on stderr: the files that were skipped or failed, then the totals.

    On a terminal the files are a table; elsewhere one line each, never wrapped, so that paths can be copied."""
    missed = [report for report in reports if report.status != "done"]
    if missed and not stderr.is_terminal:
        for report in missed:
            reason = _reason(report)
            line = reason if reason.startswith(str(report.input)) else f"{report.input}: {reason}"
            stderr.print(escape(printable(f"{report.status}: {line}")), soft_wrap=True)
    elif missed:
        table = Table(box=None, padding=(0, 2, 0, 0), show_edge=False)
        for column in ("status", "input", "reason"):
            table.add_column(column, overflow="fold")
        for report in missed:
            colour = "red" if report.status == "failed" else "yellow"
            reason = _reason(report).removeprefix(str(report.input)).removeprefix(":").strip()
            table.add_row(f"[{colour}]{report.status}[/{colour}]", escape(str(report.input)), escape(reason))
        stderr.print(table)
    counts = Counter(report.status for report in reports)
    frames = sum(report.frames for report in reports)
    speed = _frames_per_second(frames, seconds)
    stderr.print(
        f"{counts['done']} done ({frames} frame(s) in {seconds:.1f} s{', ' + speed if speed else ''}), "
        f"{counts['skipped']} skipped, {counts['failed']} failed ({decoder})",
        soft_wrap=True,
    )
