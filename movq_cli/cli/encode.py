"""`movq encode`: pictures or video in, a .npy of codes or latents out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from movq_cli.checkpoints import weights as weights_io
from movq_cli.checkpoints.bundled import default_weights
from movq_cli.cli.console import DeviceOption, DtypeOption, frame_progress, reported_errors, stderr
from movq_cli.device import resolve_device, resolve_dtype
from movq_cli.encode import encode_to_file
from movq_cli.io.images import open_footage

app = typer.Typer()


@app.command(
    epilog=(
        "Sides that are not multiples of the model's downsampling factor are cropped at the bottom and right.\n\n"
        "Examples:\n\n"
        "  movq encode photo.png photo.npy\n\n"
        "  movq encode frames/ clip.npy --chunk 16\n\n"
        "  movq encode clip.mp4 clip.npy --weights movq.safetensors --latents"
    ),
)
def encode(
    source: Annotated[Path, typer.Argument(help="An image (PNG/JPEG), a folder of images, or a video (MP4, GIF).")],
    out: Annotated[Path, typer.Argument(help="Output .npy: codes (T, H, W), (H, W) for one image, or latents.")],
    weights: Annotated[
        Path | None, typer.Option("--weights", "-w", help="Weights with an encoder (default: the bundled model).")
    ] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "fp32",
    chunk: Annotated[int, typer.Option(min=1, help="Frames per encoder call.")] = 8,
    latents: Annotated[
        bool, typer.Option("--latents", help="Write the continuous latents (T, e, H, W) instead of codes.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary.")] = False,
) -> None:
    """Encode pictures or a video into MoVQ codes or latents."""
    with reported_errors():
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype)
        footage = open_footage(source)
        model = weights_io.load(weights or default_weights(), torch_device, torch_dtype, encoder=True)
        with frame_progress(f"encoding {source.name}", footage.n_frames, quiet) as advance:
            result = encode_to_file(
                model, footage, out, torch_device, chunk=chunk, latents=latents, overwrite=overwrite,
                on_frames=advance,
            )  # fmt: skip
        if not quiet:
            stderr.print(
                f"wrote {result.dtype} {result.shape} from {footage.n_frames} frame(s) in {result.seconds:.1f} s "
                f"-> {result.output}",
                soft_wrap=True,
                markup=False,
            )
