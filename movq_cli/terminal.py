"""Pictures drawn in the terminal: Kitty graphics or Sixel where the terminal answers that it
draws them, 24-bit half-block characters elsewhere; never into a pipe or a file.

The protocols come from textual-image, imported only here, when a picture is drawn: importing
it asks the terminal what it can draw: Sixel in its device attributes (WezTerm, foot, Konsole,
mlterm, xterm -ti vt340, tmux 3.4 or later built with Sixel), then the Kitty graphics protocol.
"""

from __future__ import annotations

import math
import sys
from typing import TextIO

import numpy as np

from movq_cli.errors import InputError

NOT_A_TERMINAL = "stdout is not a terminal, so nothing is drawn; name a picture to write instead (NAME.png)"


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def half_block_pixels(picture: np.ndarray, columns: int, background: int) -> np.ndarray:
    """`picture` (H, W, 3) as the pixels of half-block cells: at most `columns` wide (shrunk by
    averaging, never enlarged), an even number of rows (the last padded with `background`)."""
    from PIL import Image

    height, width, _ = picture.shape
    if width > columns:
        height, width = max(1, round(height * columns / width)), columns
        picture = np.asarray(Image.fromarray(picture).resize((width, height), Image.Resampling.BOX))
    if height % 2:
        picture = np.concatenate([picture, np.full((1, width, 3), background, np.uint8)])
    return picture


def draw(picture: np.ndarray, background: int = 0) -> str:
    """Draw `picture` (H, W, 3) uint8 on stdout, at most as wide as the terminal. Returns how:
    "kitty", "sixel" or "blocks". Raises InputError when stdout is not a terminal."""
    if not is_terminal(sys.stdout):
        raise InputError(NOT_A_TERMINAL)
    from PIL import Image
    from rich.console import Console
    from textual_image import renderable  # asks the terminal what it draws
    from textual_image._terminal import get_cell_size

    console = Console(color_system="truecolor", force_terminal=True)
    kinds = {renderable.TGPImage: "kitty", renderable.SixelImage: "sixel"}
    kind = kinds.get(renderable.Image, "blocks")
    if kind == "blocks":
        pixels = half_block_pixels(picture, console.width, background)
        image = renderable.HalfcellImage(Image.fromarray(pixels), width=pixels.shape[1], height=pixels.shape[0] // 2)
    else:
        cell_width = get_cell_size().width
        columns = min(console.width, math.ceil(picture.shape[1] / cell_width))
        image = renderable.Image(Image.fromarray(picture), width=columns, height="auto")
    console.print(image)
    return kind
