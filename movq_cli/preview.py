"""A quick look at a clip: a contact sheet of a few evenly spaced frames, each with its number.

Only the frames on the sheet are read and decoded, however long the clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from movq_cli.errors import InputError
from movq_cli.io.codes import Clip
from movq_cli.io.writers import WRITERS, WriteOptions, get_writer
from movq_cli.models.family import DecodeOptions
from movq_cli.pipeline import Plan, decode_frames, prepare

GAP = 2  # pixels between tiles
BACKGROUND = 32
DEFAULT_COLUMNS = 4
# 3x5 bitmap digits 0-9, rows top to bottom ("#" lit)
DIGITS = [
    "#### ## ## ####", " # ##  #  # ###", "###  #####  ###", "###  ####  ####", "# ## ####  #  #",
    "####  ###  ####", "####  #### ####", "###  #  #  #  #", "#### ##### ####", "#### ####  ####",
]  # fmt: skip


@dataclass(frozen=True)
class PreviewResult:
    output: Path
    frame_numbers: list[int]
    total: int  # frames the whole clip decodes to
    size: tuple[int, int]  # (height, width) of the sheet
    frame_size: tuple[int, int]  # (height, width) of a frame


def frame_numbers(n_frames: int, count: int) -> list[int]:
    """`count` (at most `n_frames`) evenly spaced frame numbers from the first frame to the last."""
    count = min(count, n_frames)
    return sorted({round(i * (n_frames - 1) / max(1, count - 1)) for i in range(count)})


def _digit_mask(digit: int) -> np.ndarray:
    return np.array([c == "#" for c in DIGITS[digit]]).reshape(5, 3)


def label_box(number: int, tile_height: int) -> tuple[int, int]:
    """(height, width) of the label drawn in a tile's top-left corner."""
    scale = _scale(tile_height)
    return (5 + 2) * scale, (4 * len(str(number)) + 1) * scale


def _scale(tile_height: int) -> int:
    return max(1, tile_height // 64)


def draw_number(tile: np.ndarray, number: int) -> None:
    """White digits on a black box in the top-left corner of `tile` (H, W, 3), in place."""
    scale = _scale(tile.shape[0])
    height, width = label_box(number, tile.shape[0])
    tile[:height, :width] = 0
    for i, digit in enumerate(str(number)):
        mask = _digit_mask(int(digit)).repeat(scale, 0).repeat(scale, 1)
        top, left = scale, (1 + 4 * i) * scale
        region = tile[top : top + 5 * scale, left : left + 3 * scale]
        region[mask[: region.shape[0], : region.shape[1]]] = 255


def sheet_size(count: int, frame_size: tuple[int, int], columns: int) -> tuple[int, int]:
    """(height, width) of the sheet of `count` tiles of `frame_size`, `columns` to a row."""
    height, width = frame_size
    rows, columns = math.ceil(count / columns), min(columns, count)
    return rows * (height + GAP) - GAP, columns * (width + GAP) - GAP


def contact_sheet(frames: np.ndarray, numbers: list[int], columns: int) -> np.ndarray:
    """Frames (N, H, W, 3) as a grid of `columns` tiles per row, GAP pixels apart, each numbered."""
    count, height, width, _ = frames.shape
    sheet = np.full((*sheet_size(count, (height, width), columns), 3), BACKGROUND, np.uint8)
    for i, (frame, number) in enumerate(zip(frames, numbers, strict=True)):
        top, left = (i // columns) * (height + GAP), (i % columns) * (width + GAP)
        tile = sheet[top : top + height, left : left + width]
        tile[:] = frame
        draw_number(tile, number)
    return sheet


@dataclass(frozen=True)
class Chosen:
    """Frames of a clip picked for a sheet, decoded: (N, H, W, 3) uint8, their numbers, and how
    many frames the whole clip decodes to."""

    frames: np.ndarray
    numbers: list[int]
    total: int


def decode_chosen(
    model: torch.nn.Module, clip: Clip, count: int = 8, options: DecodeOptions = DecodeOptions()
) -> Chosen:
    """Check `clip` and decode `count` evenly spaced frames of it (only those, where frames are independent)."""
    return _decode(_choose(model, clip, count, options))


def _choose(model: torch.nn.Module, clip: Clip, count: int, options: DecodeOptions) -> Plan:
    """The plan of a decode of `count` evenly spaced frames of `clip`."""
    return prepare(model, clip, lambda total: frame_numbers(total, count), options)


def _decode(plan: Plan) -> Chosen:
    return Chosen(np.concatenate(list(decode_frames(plan))), plan.numbers, plan.total)


def sheet_of(model: torch.nn.Module, clip: Clip, count: int = 8, columns: int | None = None,
             options: DecodeOptions = DecodeOptions()) -> tuple[np.ndarray, Chosen]:  # fmt: skip
    """The contact sheet (H, W, 3) of `count` evenly spaced frames of `clip`, and those frames."""
    chosen = decode_chosen(model, clip, count, options)
    return contact_sheet(chosen.frames, chosen.numbers, columns or min(DEFAULT_COLUMNS, len(chosen.numbers))), chosen


def check_picture(output: Path) -> None:
    """Raise InputError unless `output` names one picture (.png or .jpg)."""
    picture = WRITERS.get(output.suffix.lower())
    if picture is None or not picture.one_frame:
        raise InputError(f"a preview is one picture; name it NAME.png or NAME.jpg, not {output.name}")


def write_picture(picture: np.ndarray, output: Path, overwrite: bool = False) -> None:
    """Write (H, W, 3) uint8 to `output` (.png or .jpg), whole or not at all."""
    check_picture(output)
    with get_writer(output, picture.shape[:2], 1, WriteOptions(overwrite=overwrite)) as writer:
        writer.write(picture[None])


def preview_to_file(
    model: torch.nn.Module,
    clip: Clip,
    output: Path,
    count: int = 8,
    columns: int | None = None,
    overwrite: bool = False,
    options: DecodeOptions = DecodeOptions(),
) -> PreviewResult:
    """Decode `count` evenly spaced frames of `clip` (latents taken as `options` say) and write
    their contact sheet to `output` (.png or .jpg)."""
    check_picture(output)
    plan = _choose(model, clip, count, options)
    columns = columns or min(DEFAULT_COLUMNS, plan.n_frames)
    size = sheet_size(plan.n_frames, plan.frame_size, columns)
    with get_writer(output, size, 1, WriteOptions(overwrite=overwrite)) as writer:
        chosen = _decode(plan)
        sheet = contact_sheet(chosen.frames, chosen.numbers, columns)
        writer.write(sheet[None])
    return PreviewResult(output, chosen.numbers, chosen.total, sheet.shape[:2], chosen.frames.shape[1:3])
