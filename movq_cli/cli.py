"""The `movq` command line: parses arguments, calls the library, reports in one line."""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from movq_cli import __version__
from movq_cli import codes as codes_io
from movq_cli import weights as weights_io
from movq_cli.device import DTYPES, resolve_device, resolve_dtype
from movq_cli.errors import InputError, MovqError
from movq_cli.pipeline import decode_to_file

app = typer.Typer(
    name="movq",
    help="Decode MoVQ codes and latents into pictures and video.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
stderr = Console(stderr=True, highlight=False)


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


@contextmanager
def _reported_errors():
    """Known errors become one red line on stderr and their exit code; Ctrl-C or SIGTERM exit 130."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    except MovqError as error:
        stderr.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        stderr.print("[red]interrupted[/red]; partial output removed")
        raise typer.Exit(130) from None
    except Exception as error:  # the last line of defence: still one line, no traceback
        if os.environ.get("MOVQ_DEBUG"):
            raise
        message = str(error).splitlines()[0] if str(error) else ""
        stderr.print(
            f"[red]error:[/red] unexpected {type(error).__name__}: {escape(message)} (MOVQ_DEBUG=1 shows more)",
            soft_wrap=True,
        )
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
        TextColumn("frames"),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
        disable=quiet or not sys.stderr.isatty(),
    )


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
        Path | None, typer.Option("--weights", "-w", help="A native .safetensors file or a diffusers VQModel folder.")
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
    with _reported_errors():
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype)
        clip = codes_io.read(codes, key=key, grid=codes_io.parse_grid(grid) if grid else None)
        if weights is None:
            raise InputError("no model: give --weights (a .safetensors file or a diffusers VQModel folder)")
        model = weights_io.load(weights, torch_device, torch_dtype)
        with _progress(quiet) as progress:
            task = progress.add_task(f"decoding {codes.name}", total=clip.n_frames, rate="")

            def advance(frames: int) -> None:
                progress.advance(task, frames)
                speed = progress.tasks[task].speed
                progress.update(task, rate=f"{speed:.2f} frames/s" if speed else "")

            result = decode_to_file(
                model, clip, out, torch_device, chunk=chunk, fps=fps, crf=crf, snap=snap,
                overwrite=overwrite, on_frames=advance,
            )  # fmt: skip
        if not quiet:
            height, width = result.frame_size
            stderr.print(
                f"wrote {result.frames} frame(s) of {width}x{height} in {result.seconds:.1f} s "
                f"({result.frames / max(result.seconds, 1e-9):.2f} frames/s) -> {escape(str(result.output))}",
                soft_wrap=True,
            )
