"""`movq compare` and `movq roundtrip`: two versions of the same frames in one sheet, with their
PSNR and SSIM frame by frame."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from movq_cli.cli.app import command
from movq_cli.cli.console import reported_errors, stderr
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
    parse_dtype,
    parse_tile,
    typer_parser,
)
from movq_cli.errors import InputError

OutArgument = Annotated[
    Path | None,
    typer.Argument(
        help="The sheet to write: NAME.png or NAME.jpg; without it, drawn in the terminal.",
        metavar="[OUT]",
        show_default=False,
    ),
]
CountOption = Annotated[int, typer.Option(min=1, metavar="N", help="How many evenly spaced frames to compare.")]


@command(
    epilog=(
        "The first row is the codes decoded with --weights, --dtype and --tile; the second, decoded again "
        "with what the --against options change, or the source pictures (--source); the third, their "
        "difference. PSNR and SSIM compare the second row with the first.\n\n"
        "Examples:\n\n"
        "  movq compare clip.npy sheet.png -w movq-a.safetensors --against-weights movq-b.safetensors\n\n"
        "  movq compare clip.npy --dtype fp32 --against-dtype bf16 --json\n\n"
        "  movq compare latents.npy sheet.png -w THUDM/CogVideoX-2b --against-tile 256\n\n"
        "  movq compare clip.npy sheet.png --source clip.mp4"
    ),
)
def compare(
    codes: Annotated[
        Path, typer.Argument(help="Code file: .npy or .npz of codes or latents.", metavar="CODES", show_default=False)
    ],
    out: OutArgument = None,
    against_weights: Annotated[
        str | None, typer.Option(metavar="WEIGHTS", help="Decode the second row with these weights.")
    ] = None,
    against_dtype: Annotated[
        str | None,
        typer.Option(metavar="DTYPE", help="Decode the second row in this dtype.", parser=typer_parser(parse_dtype)),
    ] = None,
    against_tile: Annotated[
        Any,
        typer.Option(
            metavar="PIXELS",
            help="Decode the second row in tiles of PIXELS (CogVideoX).",
            parser=typer_parser(parse_tile),
        ),
    ] = None,
    source: Annotated[
        Path | None,
        typer.Option(metavar="PICTURES", help="Compare the decode with these: a video, a picture or a folder of them."),
    ] = None,
    count: CountOption = 8,
    weights: WeightsOption = "default",
    device: DeviceOption = "auto",
    dtype: DtypeOption = "fp32",
    threads: ThreadsOption = None,
    grid: GridOption = None,
    key: KeyOption = None,
    unscaled: UnscaledOption = False,
    tile: TileOption = None,
    overwrite: OverwriteOption = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Decode the same codes twice, or beside their source, into one sheet with PSNR and SSIM per frame."""
    with reported_errors():
        from movq_cli import load
        from movq_cli.compare import compare as compare_frames
        from movq_cli.compare import footage_frames
        from movq_cli.device import set_threads
        from movq_cli.io import codes as codes_io
        from movq_cli.io.images import open_footage
        from movq_cli.models.family import DecodeOptions
        from movq_cli.preview import decode_chosen

        against = against_weights is not None or against_dtype is not None or against_tile is not None
        if against == (source is not None):
            raise InputError(
                "compare with one of: --against-weights, --against-dtype, --against-tile (a second decode), "
                "or --source (the pictures the codes should show)"
            )
        _check_out(out, overwrite, as_json)
        footage = open_footage(source) if source is not None else None
        clip = codes_io.read(codes, key=key, grid=grid)
        set_threads(threads)
        model = load(weights, device, dtype)
        options = DecodeOptions(unscaled=unscaled, tile=tile)
        first = decode_chosen(model, clip, count, options)
        label = _label(weights, dtype, tile)
        if footage is not None:
            if footage.n_frames != first.total:
                raise InputError(f"{source} has {footage.n_frames} frame(s); {codes} decodes to {first.total}")
            pictures = footage_frames(footage, first.numbers, first.frames.shape[1:3])
            reference, compared = (f"source: {source.name}", pictures), (label, first.frames)
        else:
            other_weights, other_dtype = against_weights or weights, against_dtype or dtype
            same_model = (other_weights, other_dtype) == (weights, dtype)
            other = model if same_model else load(other_weights, device, other_dtype)
            second = decode_chosen(other, clip, count, DecodeOptions(unscaled=unscaled, tile=against_tile or tile))
            reference = (label, first.frames)
            compared = (_label(other_weights, other_dtype, against_tile or tile), second.frames)
        _report(compare_frames(reference, compared, first.numbers), out, overwrite, as_json, quiet)


@command(
    epilog=(
        "The everyday check of a tokenizer: the first row is the source, the second the same frames encoded "
        "into codes and decoded again, the third their difference.\n\n"
        "Examples:\n\n"
        "  movq roundtrip photo.png\n\n"
        "  movq roundtrip clip.mp4 sheet.png -w movq_final.ckpt --count 12 --json"
    ),
)
def roundtrip(
    source: Annotated[
        Path,
        typer.Argument(
            help="An image (PNG/JPEG), a folder of images, or a video (MP4, GIF).", metavar="SOURCE", show_default=False
        ),
    ],
    out: OutArgument = None,
    count: CountOption = 8,
    weights: WeightsOption = "default",
    device: DeviceOption = "auto",
    dtype: DtypeOption = "fp32",
    threads: ThreadsOption = None,
    overwrite: OverwriteOption = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Encode a source into codes and decode them again, beside the source, with PSNR and SSIM per frame."""
    with reported_errors():
        from movq_cli import load
        from movq_cli.compare import compare as compare_frames
        from movq_cli.compare import roundtrip_frames
        from movq_cli.device import set_threads
        from movq_cli.io.images import open_footage

        _check_out(out, overwrite, as_json)
        footage = open_footage(source)
        set_threads(threads)
        model = load(weights, device, dtype, encoder=True)
        numbers, pictures, decoded = roundtrip_frames(model, footage, count)
        reference = (f"source: {source.name}", pictures)
        compared = (f"encoded, decoded: {_label(weights, dtype, None)}", decoded)
        _report(compare_frames(reference, compared, numbers), out, overwrite, as_json, quiet)


def _label(weights: str, dtype: str, tile: tuple[int, int] | None) -> str:
    name = Path(weights).name if Path(weights).exists() else weights
    return ", ".join([name, dtype] + ([f"tiles of {tile[0]}x{tile[1]}"] if tile else []))


def _check_out(out: Path | None, overwrite: bool, as_json: bool) -> None:
    """Before any work: OUT names a picture that may be written, or there is a terminal to draw in."""
    from movq_cli.io.targets import AtomicTarget
    from movq_cli.preview import check_picture
    from movq_cli.terminal import NOT_A_TERMINAL, is_terminal

    if out is None:
        if as_json:
            raise InputError("without OUT the sheet is drawn on stdout, where --json prints; give OUT")
        if not is_terminal(sys.stdout):
            raise InputError(NOT_A_TERMINAL)
        return
    check_picture(out)
    AtomicTarget(out, overwrite).remove()  # says now if it exists or cannot be written


def _report(comparison, out: Path | None, overwrite: bool, as_json: bool, quiet: bool) -> None:
    """The sheet to OUT or the terminal; the scores on stderr, or as JSON on stdout."""
    from movq_cli.preview import BACKGROUND, write_picture
    from movq_cli.terminal import draw

    if out is None:
        draw(comparison.sheet, BACKGROUND)
    else:
        write_picture(comparison.sheet, out, overwrite)
    if as_json:
        print(json.dumps({**comparison.as_json(), "output": str(out) if out else None}))
    if quiet:
        return
    reference, compared = comparison.labels
    stderr.print(f"{compared} against {reference}:", soft_wrap=True, markup=False)
    for score in comparison.scores:
        stderr.print(f"  frame {score.frame:>5}  PSNR {_db(score.psnr)}  SSIM {_number(score.ssim)}", markup=False)
    stderr.print(
        f"  {'all':<11}  PSNR {_db(comparison.psnr)}  SSIM {_number(comparison.ssim)}" + (f" -> {out}" if out else ""),
        soft_wrap=True,
        markup=False,
    )


def _db(value: float) -> str:
    return f"{value:6.2f} dB" if math.isfinite(value) else "   inf dB"


def _number(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"
