"""`movq preview`: a contact sheet of a few frames of a clip, for a quick look; for a batch,
one sheet per code file and an index.html."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from movq_cli.cli.app import command
from movq_cli.cli.console import batch_progress, batch_summary, error_line, reported_errors, stderr
from movq_cli.cli.options import (
    DeviceOption,
    DtypeOption,
    GridOption,
    JsonOption,
    KeyOption,
    OverwriteOption,
    QuietOption,
    ThreadsOption,
    TileOption,
    UnscaledOption,
    WeightsOption,
)
from movq_cli.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from movq_cli.io.codes import ReadOptions
    from movq_cli.models.family import DecodeOptions


@command(
    epilog=(
        "Without OUT the sheet is drawn in the terminal: Sixel or Kitty graphics where the terminal "
        "says it draws them (WezTerm, foot, Konsole, Kitty, tmux 3.4+ with Sixel), 24-bit half blocks "
        "elsewhere.\n\n"
        "With several code files, a folder or a quoted glob pattern, OUT is a folder: one sheet per "
        "code file (NAME.png, in the same tree) and index.html, a page that opens from the file "
        "system and shows every sheet, with the decoded output beside it from --decoded.\n\n"
        "Examples:\n\n"
        "  movq preview clip.npy\n\n"
        "  movq preview clip.npy sheet.png --count 16 --columns 8 --weights movq.safetensors\n\n"
        "  movq preview codes/ sheets/ --decoded videos/"
    ),
)
def preview(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Code files (.npy/.npz of integer codes or float latents), folders or glob patterns, then OUT: "
            "the sheet to write (NAME.png or NAME.jpg) or, for several, its folder. Without OUT, one code "
            "file's sheet is drawn in the terminal.",
            metavar="CODES... [OUT]",
            show_default=False,
        ),
    ],
    count: Annotated[
        int, typer.Option(min=1, metavar="N", help="How many evenly spaced frames (at most the clip's).")
    ] = 8,
    columns: Annotated[int | None, typer.Option(min=1, metavar="N", help="Tiles per row (default: up to 4).")] = None,
    decoded: Annotated[
        Path | None,
        typer.Option(
            metavar="FOLDER",
            help="In a batch: the OUT of a batch decode of the same inputs; index.html shows each output beside "
            "its sheet (videos play inline).",
        ),
    ] = None,
    weights: WeightsOption = "default",
    device: DeviceOption = "auto",
    dtype: DtypeOption = "fp32",
    threads: ThreadsOption = None,
    grid: GridOption = None,
    key: KeyOption = None,
    unscaled: UnscaledOption = False,
    tile: TileOption = None,
    overwrite: OverwriteOption = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop a batch at the first failure.")] = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Write or draw a contact sheet of evenly spaced frames, each labelled with its frame number."""
    with reported_errors():
        from movq_cli import load
        from movq_cli.batch import BatchOptions, find_jobs, is_batch
        from movq_cli.device import set_threads
        from movq_cli.io.codes import ReadOptions, read_clip
        from movq_cli.io.writers import WriteOptions
        from movq_cli.models.family import DecodeOptions

        inputs = [Path(path) for path in paths]
        batch = is_batch(inputs[:-1] or inputs)
        _check_arguments(paths, batch, decoded, fail_fast, as_json)
        options = BatchOptions(
            read=ReadOptions(key=key, grid=grid),
            decode=DecodeOptions(unscaled=unscaled, tile=tile),
            write=WriteOptions(overwrite=overwrite),
            fail_fast=fail_fast,
        )
        set_threads(threads)
        if not batch:
            clip = read_clip(inputs[0], options.read)  # a bad file is reported before the model loads
            model = load(weights, device, dtype)
            _preview_one(model, clip, inputs[1] if len(inputs) == 2 else None, count, columns, options, as_json, quiet)
            return
        *inputs, out = paths  # OUT stays a string: a trailing "/" names a folder
        jobs = find_jobs([Path(path) for path in inputs], Path(out), "png")
        model = load(weights, device, dtype)
        reports = _preview_batch(model, jobs, Path(out), decoded, count, columns, options, as_json, quiet)
    if any(report.status == "failed" for report in reports):
        raise typer.Exit(1)


def _check_arguments(paths: list[str], batch: bool, decoded: Path | None, fail_fast: bool, as_json: bool) -> None:
    from movq_cli.terminal import NOT_A_TERMINAL, is_terminal

    if batch:
        if len(paths) < 2:
            raise InputError("a batch of sheets needs OUT, the folder they go to (see movq preview --help)")
        return
    for flag, given in (("--decoded", decoded is not None), ("--fail-fast", fail_fast)):
        if given:
            raise InputError(f"{flag} is for batches: several code files, a folder or a pattern")
    if len(paths) > 2:
        raise InputError("give one code file, then OUT or nothing (see movq preview --help)")
    if len(paths) == 1 and as_json:
        raise InputError("without OUT the sheet is drawn on stdout, where --json prints; give OUT")
    if len(paths) == 1 and not is_terminal(sys.stdout):
        raise InputError(NOT_A_TERMINAL)


def _preview_one(model, clip, out: Path | None, count, columns, options, as_json: bool, quiet: bool) -> None:
    """The sheet of one clip, to `out` or (None) drawn in the terminal."""
    from movq_cli.preview import BACKGROUND, preview_to_file, sheet_of
    from movq_cli.terminal import draw

    if out is None:
        sheet, chosen = sheet_of(model, clip, count, columns, options.decode)
        how = draw(sheet, BACKGROUND)
        numbers, total, where = chosen.numbers, chosen.total, f"({how})"
    else:
        result = preview_to_file(model, clip, out, count, columns, options.write.overwrite, options.decode)
        height, width = result.size
        numbers, total, where = result.frame_numbers, result.total, f"-> {out} ({height}x{width})"
    if as_json:
        print(json.dumps({"input": str(clip.path), "output": str(out), "frames": numbers, "total": total}))
    if not quiet:
        stderr.print(f"frames {', '.join(map(str, numbers))} of {total} {where}", soft_wrap=True, markup=False)


def _preview_batch(model, jobs, out: Path, decoded: Path | None, count, columns, options, as_json: bool, quiet: bool):
    """Every job's sheet into the folder `out`, and its index.html; returns the files' reports."""
    from movq_cli.device import describe
    from movq_cli.sheets import preview_batch, write_index

    started = time.perf_counter()
    with batch_progress(len(jobs), quiet) as progress:

        def on_report(report) -> None:
            progress.end_file(report.input)
            if as_json:
                print(json.dumps(report.as_json()), flush=True)
            if quiet and report.error:
                error_line(report.error)

        reports = preview_batch(model, jobs, options, count, columns, on_report)
    index = write_index(reports, out, decoded)
    if not quiet:
        batch_summary(reports, time.perf_counter() - started, describe(model))
        stderr.print(f"-> {index}", soft_wrap=True, markup=False)
    return reports


def check_can_show(single: bool, as_json: bool) -> None:
    """Before decoding with --show: one code file, stdout a terminal and not taken by --json."""
    from movq_cli.terminal import NOT_A_TERMINAL, is_terminal

    if not single:
        raise InputError("--show draws one code file's first frame; a batch has `movq preview CODES... SHEETS/`")
    if as_json:
        raise InputError("--show draws on stdout, where --json prints; choose one")
    if not is_terminal(sys.stdout):
        raise InputError(NOT_A_TERMINAL)


def show_first_frame(
    model, codes: Path, read: ReadOptions, decode: DecodeOptions, frame: np.ndarray | None = None
) -> None:
    """Draw the first frame a decode of the code file `codes` with these options writes: `frame`,
    kept as the decode wrote it, or (when the decode was skipped) decoded alone."""
    from movq_cli.io.codes import read_clip
    from movq_cli.models.family import selected_numbers
    from movq_cli.pipeline import decode_frames, prepare
    from movq_cli.preview import BACKGROUND
    from movq_cli.terminal import draw

    def first(total: int) -> list[int]:  # the first frame of the selection, planned once
        return selected_numbers(total, slice(None) if read.frames is None else read.frames)[:1]

    if frame is None:
        frame = next(decode_frames(prepare(model, read_clip(codes, read), first, decode)))[0]
    draw(frame, BACKGROUND)
