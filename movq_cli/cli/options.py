"""Arguments and options that several commands share, declared once, with their parsers.

Nothing here imports torch: `movq --help` and `movq --version` must start at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from movq_cli.errors import InputError

DTYPE_NAMES = ("fp32", "bf16", "fp16")


def typer_parser(parse):
    """A Typer parser from a library parser: its InputError becomes Click's usage error (exit 2)."""

    def parser(text: str):
        try:
            return parse(text)
        except InputError as error:
            raise typer.BadParameter(str(error)) from None

    return parser


def parse_grid(text: str) -> tuple[int, int]:
    """'32x48' -> (32, 48): rows x columns of codes."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise InputError(f"expected HxW with positive integers, not {text!r}")
    return int(parts[0]), int(parts[1])


def parse_tile(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); '240x360' -> (240, 360): pixels of a tile."""
    if text.isdigit() and int(text) > 0:
        return int(text), int(text)
    return parse_grid(text)


def parse_frames(text: str) -> slice:
    """'a:b' or 'a:b:step' (Python slice rules, negative numbers count from the end) -> a slice;
    'n' -> frame n alone (-1: the last)."""
    if text.strip().lstrip("-").isdigit():
        number = int(text)
        return slice(number, number + 1 if number != -1 else None)
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        start, stop, *step = (int(part) if part.strip() else None for part in parts)
    except ValueError:
        raise InputError(f"expected N, START:STOP or START:STOP:STEP with integers, not {text!r}") from None
    if step and step[0] == 0:
        raise InputError(f"{text}: the step cannot be zero")
    return slice(start, stop, step[0] if step else None)


def parse_dtype(text: str) -> str:
    name = text.strip().lower()
    if name not in DTYPE_NAMES:
        raise InputError(f"{text!r} is not one of {', '.join(DTYPE_NAMES)}")
    return name


WEIGHTS_HELP = (
    "A checkpoint (.safetensors, .ckpt, .pt), a diffusers folder, a Hub id (owner/name, owner/name/subfolder, "
    "owner/name@revision, owner/name:file.ckpt), or 'default' for the bundled model."
)

WeightsArgument = Annotated[str, typer.Argument(help=WEIGHTS_HELP, metavar="WEIGHTS", show_default=False)]
WeightsOption = Annotated[str, typer.Option("--weights", "-w", help=WEIGHTS_HELP, metavar="WEIGHTS", show_default=True)]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.", metavar="DEVICE")]
DtypeOption = Annotated[
    str,
    typer.Option(
        help=f"Compute precision: {', '.join(DTYPE_NAMES)}.", metavar="DTYPE", parser=typer_parser(parse_dtype)
    ),
]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        metavar="N",
        help="CPU threads for torch (default: one per core; idle threads sleep, OMP_WAIT_POLICY=PASSIVE, so "
        "that other work on the cores does not slow decoding down).",
    ),
]
# Any: Typer would read a tuple annotation as two values, and it validates what the parser returns
GridOption = Annotated[
    Any,
    typer.Option(
        help="Frame shape for flat token rows (L,) or (T, L): height x width in codes.",
        metavar="HxW",
        parser=typer_parser(parse_grid),
    ),
]
FramesOption = Annotated[
    Any,
    typer.Option(
        help="Only frame N, or START:STOP[:STEP], of each clip (Python slice rules; output frames).",
        metavar="N|START:STOP[:STEP]",
        parser=typer_parser(parse_frames),
    ),
]
KeyOption = Annotated[
    str | None,
    typer.Option(help="Which array of an .npz, .pt or .safetensors file to read (nested dicts: a.b).", metavar="NAME"),
]
TokensOption = Annotated[
    str | None,
    typer.Option(
        metavar="FORMAT",
        help="The file holds the raw token ids a generation returned: emu3 or lumina-mgpt. Each image in them "
        "becomes a frame.",
    ),
]
TokenOffsetOption = Annotated[
    int | None,
    typer.Option(min=0, metavar="ID", help="With --tokens: the id of code 0 (default: the format's)."),
]
ImageOption = Annotated[
    int | None,
    typer.Option(min=0, metavar="K", help="With --tokens: only image K (from 0) of the stream."),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary on stderr.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout, nothing else.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
CodesArgument = Annotated[
    Path,
    typer.Argument(
        help="Code file: .npy, .npz, .pt or .safetensors of integer codes or float latents.",
        metavar="CODES",
        show_default=False,
    ),
]
UnscaledOption = Annotated[
    bool,
    typer.Option(
        "--unscaled",
        help="CogVideoX latents already divided by the VAE's scaling_factor (default: as a pipeline hands them).",
    ),
]
TileOption = Annotated[
    Any,  # a tuple annotation would read as two values (see GridOption)
    typer.Option(
        metavar="PIXELS",
        help="Decode each frame (CogVideoX: each chunk) in spatial tiles of PIXELS (256 or 240x360), each on "
        "the device in turn, the rest in host memory: for frames that do not fit. Same pixels, slower.",
        parser=typer_parser(parse_tile),
    ),
]
PerClipOption = Annotated[
    bool,
    typer.Option(
        "--per-clip",
        help="Emu3: each latent frame is a clip of its own, as BAAI's autoencode.py encodes a video "
        "(4 frames a clip, nothing carried between them); default: one clip, as Emu3VQVAE.decode takes (1, T, h, w).",
    ),
]
