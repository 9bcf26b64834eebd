"""`movq encode`: pictures or video in, a .npy of codes or latents out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from movq_cli.cli.app import command
from movq_cli.cli.console import frame_progress, reported_errors, stderr
from movq_cli.cli.options import DeviceOption, DtypeOption, OverwriteOption, QuietOption, ThreadsOption, WeightsOption


@command(
    epilog=(
        "Sides that are not multiples of the model's downsampling factor are cropped at the bottom and right.\n\n"
        "Examples:\n\n"
        "  movq encode photo.png photo.npy\n\n"
        "  movq encode frames/ clip.npy --chunk 16\n\n"
        "  movq encode clip.mp4 clip.npy --weights movq.safetensors --latents"
    ),
)
def encode(
    source: Annotated[
        Path,
        typer.Argument(
            help="An image (PNG/JPEG), a folder of images, or a video (MP4, GIF).", metavar="SOURCE", show_default=False
        ),
    ],
    out: Annotated[
        Path,
        typer.Argument(
            help="Output .npy: codes (T, H, W), (H, W) for one image, or latents.", metavar="OUT", show_default=False
        ),
    ],
    weights: WeightsOption = "default",
    device: DeviceOption = "auto",
    dtype: DtypeOption = "fp32",
    threads: ThreadsOption = None,
    chunk: Annotated[int, typer.Option(min=1, metavar="N", help="Frames per encoder call.")] = 8,
    latents: Annotated[
        bool, typer.Option("--latents", help="Write the continuous latents (T, e, H, W) instead of codes.")
    ] = False,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Encode pictures or a video into MoVQ codes or latents."""
    with reported_errors():
        from movq_cli import load
        from movq_cli.device import describe, set_threads
        from movq_cli.encoding import encode_to_file
        from movq_cli.io.images import open_footage
        from movq_cli.pipeline import model_device

        footage = open_footage(source)
        set_threads(threads)
        model = load(weights, device, dtype, encoder=True)
        with frame_progress(f"encoding {source.name}", quiet) as progress:
            result = encode_to_file(
                model, footage, out, model_device(model), chunk=chunk, latents=latents, overwrite=overwrite,
                on_frames=progress.start(footage.n_frames),
            )  # fmt: skip
        if not quiet and result.size != footage.size:
            stderr.print(
                f"cropped {footage.size[0]}x{footage.size[1]} to {result.size[0]}x{result.size[1]} at the bottom and "
                f"right: sides are multiples of {model.config.factor} pixels, one code each",
                soft_wrap=True,
                markup=False,
            )
        if not quiet:
            stderr.print(
                f"wrote {result.dtype} {result.shape} from {footage.n_frames} frame(s) in {result.seconds:.1f} s "
                f"({describe(model)}) -> {result.output}",
                soft_wrap=True,
                markup=False,
            )
