"""`movq preview`: a contact sheet of a few frames of a clip, for a quick look."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from movq_cli.cli.app import command
from movq_cli.cli.console import reported_errors, stderr
from movq_cli.cli.options import (
    CodesArgument,
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


@command(
    epilog=(
        "Examples:\n\n"
        "  movq preview clip.npy sheet.png\n\n"
        "  movq preview clip.npy sheet.png --count 16 --columns 8 --weights movq.safetensors"
    ),
)
def preview(
    codes: CodesArgument,
    out: Annotated[
        Path,
        typer.Argument(help="The contact sheet to write: NAME.png or NAME.jpg.", metavar="OUT", show_default=False),
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
    """Write a contact sheet of evenly spaced frames, each labelled with its frame number."""
    with reported_errors():
        from movq_cli import load
        from movq_cli.device import set_threads
        from movq_cli.io import codes as codes_io
        from movq_cli.models.family import DecodeOptions
        from movq_cli.preview import preview_to_file

        clip = codes_io.read(codes, key=key, grid=grid)
        set_threads(threads)
        model = load(weights, device, dtype)
        options = DecodeOptions(unscaled=unscaled, tile=tile)
        result = preview_to_file(model, clip, out, count, columns, overwrite, options)
        if not quiet:
            numbers = ", ".join(map(str, result.frame_numbers))
            height, width = result.size
            stderr.print(
                f"frames {numbers} of {result.total} -> {out} ({height}x{width})", soft_wrap=True, markup=False
            )
