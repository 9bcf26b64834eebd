"""`movq preview`: a contact sheet of a few frames of a clip, for a quick look."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from movq_cli.cli.app import command
from movq_cli.cli.console import reported_errors, stderr
from movq_cli.cli.options import (
    DeviceOption,
    DtypeOption,
    GridOption,
    KeyOption,
    OverwriteOption,
    QuietOption,
    ThreadsOption,
    TileOption,
    UnscaledOption,
    WeightsOption,
)
from movq_cli.errors import InputError


@command(
    epilog=(
        "Without OUT the sheet is drawn in the terminal: Kitty graphics or Sixel where the terminal "
        "draws them (iTerm2, WezTerm, foot, tmux 3.4+ with Sixel), 24-bit half blocks elsewhere.\n\n"
        "Examples:\n\n"
        "  movq preview clip.npy\n\n"
        "  movq preview clip.npy sheet.png\n\n"
        "  movq preview clip.npy sheet.png --count 16 --columns 8 --weights movq.safetensors"
    ),
)
def preview(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="A code file (.npy/.npz of integer codes or float latents), then OUT: the contact sheet "
            "to write, NAME.png or NAME.jpg; without OUT, drawn in the terminal.",
            metavar="CODES [OUT]",
            show_default=False,
        ),
    ],
    count: Annotated[
        int, typer.Option(min=1, metavar="N", help="How many evenly spaced frames (at most the clip's).")
    ] = 8,
    columns: Annotated[int | None, typer.Option(min=1, metavar="N", help="Tiles per row (default: up to 4).")] = None,
    weights: WeightsOption = "default",
    device: DeviceOption = "auto",
    dtype: DtypeOption = "fp32",
    threads: ThreadsOption = None,
    grid: GridOption = None,
    key: KeyOption = None,
    unscaled: UnscaledOption = False,
    tile: TileOption = None,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Write or draw a contact sheet of evenly spaced frames, each labelled with its frame number."""
    with reported_errors():
        from movq_cli import load
        from movq_cli.device import set_threads
        from movq_cli.io import codes as codes_io
        from movq_cli.models.family import DecodeOptions
        from movq_cli.preview import BACKGROUND, preview_to_file, sheet_of
        from movq_cli.terminal import NOT_A_TERMINAL, draw, is_terminal

        if len(paths) > 2:
            raise InputError("give one code file, then OUT or nothing (see movq preview --help)")
        codes, out = paths[0], (paths[1] if len(paths) == 2 else None)
        if out is None and not is_terminal(sys.stdout):
            raise InputError(NOT_A_TERMINAL)
        clip = codes_io.read(codes, key=key, grid=grid)
        set_threads(threads)
        model = load(weights, device, dtype)
        options = DecodeOptions(unscaled=unscaled, tile=tile)
        if out is None:
            sheet, chosen = sheet_of(model, clip, count, columns, options)
            how = draw(sheet, BACKGROUND)
            if not quiet:
                numbers = ", ".join(map(str, chosen.numbers))
                stderr.print(f"frames {numbers} of {chosen.total} ({how})", soft_wrap=True, markup=False)
            return
        result = preview_to_file(model, clip, out, count, columns, overwrite, options)
        if not quiet:
            numbers = ", ".join(map(str, result.frame_numbers))
            height, width = result.size
            stderr.print(
                f"frames {numbers} of {result.total} -> {out} ({width}x{height})", soft_wrap=True, markup=False
            )
