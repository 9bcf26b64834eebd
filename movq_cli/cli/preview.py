"""`movq preview`: a contact sheet of a few frames of a clip, for a quick look."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from movq_cli.checkpoints import weights as weights_io
from movq_cli.checkpoints.bundled import default_weights
from movq_cli.cli.console import (
    CodesArgument,
    DeviceOption,
    DtypeOption,
    GridOption,
    KeyOption,
    reported_errors,
    stderr,
)
from movq_cli.device import resolve_device, resolve_dtype
from movq_cli.io import codes as codes_io
from movq_cli.preview import preview_to_file

app = typer.Typer()


@app.command(
    epilog=(
        "Examples:\n\n"
        "  movq preview clip.npy sheet.png\n\n"
        "  movq preview clip.npy sheet.png --frames 16 --columns 8 --weights movq.safetensors"
    ),
)
def preview(
    codes: CodesArgument,
    out: Annotated[Path, typer.Argument(help="The contact sheet to write: NAME.png.")],
    frames: Annotated[int, typer.Option(min=1, help="How many evenly spaced frames (at most the clip's).")] = 8,
    columns: Annotated[int | None, typer.Option(min=1, help="Tiles per row (default: up to 4).")] = None,
    weights: Annotated[
        Path | None, typer.Option("--weights", "-w", help="A checkpoint or diffusers folder (default: bundled).")
    ] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "fp32",
    grid: GridOption = None,
    key: KeyOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUT.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary.")] = False,
) -> None:
    """Write a contact sheet of evenly spaced frames, each labelled with its frame number."""
    with reported_errors():
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype)
        clip = codes_io.read(codes, key=key, grid=codes_io.parse_grid(grid) if grid else None)
        model = weights_io.load(weights or default_weights(), torch_device, torch_dtype)
        result = preview_to_file(model, clip, out, torch_device, frames, columns, overwrite)
        if not quiet:
            numbers = ", ".join(map(str, result.frame_numbers))
            height, width = result.size
            sheet = f"{width}x{height}"
            stderr.print(f"frames {numbers} of {clip.n_frames} -> {out} ({sheet})", soft_wrap=True, markup=False)
