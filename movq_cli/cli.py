"""The `movq` command line: parses arguments, calls the library, reports in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from movq_cli import __version__
from movq_cli import codes as codes_io
from movq_cli import weights as weights_io
from movq_cli.cli_checkpoints import app as checkpoints_app
from movq_cli.cli_encode import app as encode_app
from movq_cli.console import frame_progress, reported_errors, summary
from movq_cli.default_model import default_weights
from movq_cli.device import DTYPES, resolve_device, resolve_dtype
from movq_cli.pipeline import decode_to_file

app = typer.Typer(
    name="movq",
    help="Decode MoVQ codes and latents into pictures and video.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        print(f"movq {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Decode MoVQ codes and latents into pictures and video."""


@app.command(
    epilog=(
        "Examples:\n\n"
        "  movq decode clip.npy clip.mp4 --weights kandinsky-2-2-decoder/movq\n\n"
        "  movq decode clip.npy frames/ --weights movq.safetensors --device cuda:1 --dtype bf16\n\n"
        "  movq decode tokens.npy image.png --weights movq/ --grid 32x32\n\n"
        "  movq decode latents.npz clip.mp4 --weights movq/ --key latents --fps 12"
    ),
)
def decode(
    codes: Annotated[Path, typer.Argument(help="Code file: .npy or .npz of integer codes or float latents.")],
    out: Annotated[Path, typer.Argument(help="Output: NAME.mp4, NAME.png (one frame), or a folder for PNG frames.")],
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights",
            "-w",
            help="A checkpoint (.safetensors, .ckpt, .pt) or a diffusers folder; default: the bundled model.",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dtype: Annotated[str, typer.Option(help=f"Compute precision: {', '.join(DTYPES)}.")] = "fp32",
    chunk: Annotated[
        int | None, typer.Option(min=1, help="Frames per decoder call (default: from memory and frame size).")
    ] = None,
    fps: Annotated[float, typer.Option(min=0.01, help="Frames per second of the MP4.")] = 24.0,
    crf: Annotated[int, typer.Option(min=0, max=51, help="H.264 quality, 0 (lossless) to 51 (worst).")] = 18,
    grid: Annotated[str | None, typer.Option(help="HxW: frame shape for flat token rows (L,) or (T, L).")] = None,
    key: Annotated[str | None, typer.Option(help="Which array of an .npz file to read.")] = None,
    snap: Annotated[bool, typer.Option("--snap", help="Snap latents to their nearest codebook rows.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary.")] = False,
) -> None:
    """Decode a clip of codes or latents to an MP4, one PNG, or a folder of PNG frames."""
    with reported_errors():
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype)
        clip = codes_io.read(codes, key=key, grid=codes_io.parse_grid(grid) if grid else None)
        model = weights_io.load(weights or default_weights(), torch_device, torch_dtype)
        with frame_progress(f"decoding {codes.name}", clip.n_frames, quiet) as advance:
            result = decode_to_file(
                model, clip, out, torch_device, chunk=chunk, fps=fps, crf=crf, snap=snap,
                overwrite=overwrite, on_frames=advance,
            )  # fmt: skip
        if not quiet:
            summary(result.frames, result.frame_size, result.seconds, result.output)


app.add_typer(encode_app)
app.add_typer(checkpoints_app)
