"""Token streams: the raw ids a language model's generation returned, read as grids of codes.

One small parser per generator, each a pure function over a 1D integer array: it skips the text
around and between images, finds each image's grid from its rows (W codes, then a newline
token, H times) and returns the images in order. Anything malformed (a short row, a missing
marker, an unterminated image, an id outside the codebook, a size that disagrees with the rows)
raises InputError, one line naming the position of the token at fault, what was expected there
and what was found.

Emu3 (BAAI/Emu3-Gen, transformers' Emu3ForConditionalGeneration) writes
    <|image start|> H*W <|image token|> (W visual tokens, end-of-line) x H end-of-frame <|image end|>
with the size as ordinary text; visual token k has id `offset + k`.
Lumina-mGPT 2.0 writes
    <racm3:break> <reserved{8800 + h_grids}> <reserved{8800 + w_grids}> (W codes, <reserved08799>) x H <eoss>
where code k has id `offset + k` and one grid unit is 32 pixels: 4 codes of MoVQGAN-270M (factor 8).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from movq_cli.errors import InputError

# Emu3: special ids from BAAI's tokenization_emu3.py (enumerated from 151643: <|endoftext|>,
# <|im_start|>, <|im_end|>, <|extra_0|> .. <|extra_204|>, then the vision tokens file)
EMU3_END_OF_LINE = 151846  # <|extra_200|>
EMU3_END_OF_FRAME = 151847  # <|extra_201|>
EMU3_IMAGE_TOKEN = 151851  # <|image token|>
EMU3_IMAGE_START = 151852  # <|image start|>
EMU3_IMAGE_END = 151853  # <|image end|>
EMU3_OFFSET = 151854  # <|visual token 000000|>: the vocabulary's 184622 ids less 32768 visual tokens
EMU3_CODEBOOK = 32768
EMU3_TEXT_END = 151643  # <|endoftext|>: ids from here on are special or visual tokens, not text
MAX_SIZE_TEXT = 16  # tokens of the size text between <|image start|> and <|image token|>
# the size text "H*W" as Qwen's byte-level tokens: one token per digit, byte b at rank b - 33
EMU3_SIZE_TEXT = {15 + digit: str(digit) for digit in range(10)} | {9: "*"}
EMU3_NAMES = {
    EMU3_END_OF_LINE: "end-of-line", EMU3_END_OF_FRAME: "end-of-frame", EMU3_IMAGE_TOKEN: "<|image token|>",
    EMU3_IMAGE_START: "<|image start|>", EMU3_IMAGE_END: "<|image end|>",
}  # fmt: skip

# Lumina-mGPT 2.0: ids its inference_solver.py writes as numbers
LUMINA_IMAGE_START = 151665  # <racm3:break>
LUMINA_IMAGE_END = 151666  # <eoss>
LUMINA_END_OF_LINE = 151670  # <reserved08799>
# <reserved08800>, if the reserved tokens run on from <reserved08799> one id each: derived, not
# published (inference_solver.py reads size tokens back by name), so checks use it only where the
# base cancels (_check_lumina_sizes).
LUMINA_GRID_BASE = 151671
LUMINA_OFFSET = 155000
LUMINA_CODEBOOK = 16384  # MoVQGAN-270M
LUMINA_CODES_PER_GRID = 4  # one grid unit, 32 pixels, is 4 codes of a factor-8 MoVQ
LUMINA_NAMES = {LUMINA_IMAGE_START: "<racm3:break>", LUMINA_IMAGE_END: "<eoss>", LUMINA_END_OF_LINE: "newline"}


@dataclass(frozen=True)
class Image:
    """One image found in a stream: where it opens (the index of its first token) and its codes (h, w)."""

    start: int
    codes: np.ndarray


def emu3(ids: np.ndarray, offset: int = EMU3_OFFSET) -> list[Image]:
    """The images of an Emu3 token stream, in order. Raises InputError naming the token at fault.

    A stream that starts with a visual token is the ids generated after a prompt that opened the
    image (transformers' generate output less the prompt): its first image starts at token 0."""
    images = []
    if len(ids) and offset <= ids[0] < offset + EMU3_CODEBOOK:
        images.append(Image(0, _emu3_rows(ids, 0, None, offset)))
    for start in _openings(ids, EMU3_IMAGE_START):
        image_token = _image_token(ids, start)
        size = _size_text(ids[start + 1 : image_token])
        images.append(Image(start, _emu3_rows(ids, image_token + 1, size, offset)))
    return images


def _emu3_rows(ids: np.ndarray, begin: int, size: tuple[int, int] | None, offset: int) -> np.ndarray:
    """The codes of the Emu3 image whose rows start at `begin`, `size` (H, W) where its text gave one,
    checked to be closed by end-of-frame and <|image end|>."""
    end_of_frame = _find(ids, EMU3_END_OF_FRAME, begin, EMU3_NAMES, "the image")
    codes = _rows(ids, begin, end_of_frame, EMU3_END_OF_LINE, offset, EMU3_CODEBOOK, EMU3_NAMES, width=size and size[1])
    if size and codes.shape[0] != size[0]:
        raise InputError(
            f"token {end_of_frame}: the size text says {size[0]}*{size[1]}, but the image has "
            f"{codes.shape[0]} rows of {codes.shape[1]} codes"
        )
    _expect(ids, end_of_frame + 1, EMU3_IMAGE_END, EMU3_NAMES)
    return codes


def lumina_mgpt(ids: np.ndarray, offset: int = LUMINA_OFFSET) -> list[Image]:
    """The images of a Lumina-mGPT 2.0 token stream, in order. Raises InputError naming the token at fault."""
    images = []
    for start in _openings(ids, LUMINA_IMAGE_START):
        end = _find(ids, LUMINA_IMAGE_END, start + 1, LUMINA_NAMES, "the image")
        sizes = (start + 1, start + 2)
        for position in sizes:
            if position >= end or not 0 <= ids[position] < offset or int(ids[position]) in LUMINA_NAMES:
                raise InputError(
                    f"token {position}: expected a size token (<reserved08800> + grid units), "
                    f"found {_name(ids[position], LUMINA_NAMES)}"
                )
        codes = _rows(ids, start + 3, end, LUMINA_END_OF_LINE, offset, LUMINA_CODEBOOK, LUMINA_NAMES)
        _check_lumina_sizes(ids, sizes, codes.shape)
        images.append(Image(start, codes))
    return images


def _check_lumina_sizes(ids: np.ndarray, sizes: tuple[int, int], shape: tuple[int, ...]) -> None:
    """The rows set a Lumina image's grid; its two size tokens must agree with them.

    The size tokens are <reserved{8800 + n}> for n grid units (4 codes, 32 pixels), height then
    width. Their ids are taken to run on from <reserved08799> (LUMINA_GRID_BASE + n), which no
    published file pins down, so only what holds for any base is checked: whole grid units each
    way, and the height token less the width token equal to the rows' height less their width
    in grid units. A stream cut short by whole rows fails the second check.
    """
    rows, cols = shape
    for position, side, along in zip(sizes, ("height", "width"), shape, strict=True):
        if along % LUMINA_CODES_PER_GRID:
            raise InputError(
                f"token {position}: the rows give a {side} of {along} code{'s' * (along != 1)}, not whole grid units "
                f"of {LUMINA_CODES_PER_GRID} codes (32 pixels)"
            )
    said = [int(ids[position]) - LUMINA_GRID_BASE for position in sizes]
    if said[0] - said[1] != (rows - cols) // LUMINA_CODES_PER_GRID:
        raise InputError(
            f"token {sizes[0]}: the size tokens say {said[0]} x {said[1]} grid units of 32 pixels "
            f"({said[0] * LUMINA_CODES_PER_GRID} x {said[1] * LUMINA_CODES_PER_GRID} codes), "
            f"but the rows give {rows} x {cols} codes"
        )


@dataclass(frozen=True)
class TokenFormat:
    """A generator's token stream: what to call it, how to find its images, and the default id of code 0."""

    title: str
    parse: Callable[[np.ndarray, int], list[Image]]
    offset: int
    image_start: int  # the id that opens an image, named when a stream holds none
    names: dict[int, str]  # its markers, named in messages


FORMATS = {
    "emu3": TokenFormat("Emu3", emu3, EMU3_OFFSET, EMU3_IMAGE_START, EMU3_NAMES),
    "lumina-mgpt": TokenFormat("Lumina-mGPT", lumina_mgpt, LUMINA_OFFSET, LUMINA_IMAGE_START, LUMINA_NAMES),
}


def token_format(name: str) -> TokenFormat:
    """The format called `name`; InputError naming the choices for any other."""
    if name not in FORMATS:
        raise InputError(f"tokens={name!r} is not a token stream movq reads; choose {' or '.join(FORMATS)}")
    return FORMATS[name]


# The parts both parsers share.


def _openings(ids: np.ndarray, marker: int) -> list[int]:
    return np.flatnonzero(ids == marker).tolist()


def _name(token, names: dict[int, str]) -> str:
    token = int(token)
    return f"{token} ({names[token]})" if token in names else str(token)


def _find(ids: np.ndarray, marker: int, begin: int, names: dict[int, str], inside: str) -> int:
    """The index of the first `marker` at or after `begin`; InputError when the stream ends first."""
    found = np.flatnonzero(ids[begin:] == marker)
    if not len(found):
        raise InputError(f"token {len(ids)}: the stream ends inside {inside} (expected {_name(marker, names)})")
    return begin + int(found[0])


def _expect(ids: np.ndarray, position: int, marker: int, names: dict[int, str]) -> None:
    if position >= len(ids):
        raise InputError(f"token {position}: the stream ends where {_name(marker, names)} was expected")
    if ids[position] != marker:
        raise InputError(f"token {position}: expected {_name(marker, names)}, found {_name(ids[position], names)}")


def _rows(
    ids: np.ndarray,
    begin: int,
    end: int,
    end_of_line: int,
    offset: int,
    codebook: int,
    names: dict[int, str],
    width: int | None = None,
) -> np.ndarray:
    """The codes (h, w) of the tokens [begin, end), which a marker at `end` closes: rows of `width`
    codes (None: as many as the first row holds) each followed by `end_of_line`."""
    body = ids[begin:end]
    is_end = body == end_of_line
    stray = np.flatnonzero(~is_end & ((body < offset) | (body >= offset + codebook)))
    closed = int(stray[0]) if len(stray) else len(body)  # where the rows stop: a marker, text, a bad id
    told = "as the size says" if width else "as in the first row"
    if width is None and not is_end[:closed].any():
        at = begin + closed
        code = f"a code{_range(offset, codebook)}"
        expected = code if closed == 0 else f"{code} or {_name(end_of_line, names)}"
        raise InputError(f"token {at}: expected {expected}, found {_name(ids[at], names)}")
    width = width or int(np.argmax(is_end))
    if width == 0:
        raise InputError(f"token {begin}: an image row holds no codes (found {_name(end_of_line, names)} at once)")
    should_end = np.arange(closed) % (width + 1) == width
    wrong = np.flatnonzero(is_end[:closed] != should_end)
    if len(wrong):
        at = int(wrong[0])
        if is_end[at]:
            row = at // (width + 1)
            raise InputError(f"token {begin + at}: row {row} ends after {at % (width + 1)} codes, not {width} ({told})")
        found = _name(body[at], names)
        raise InputError(
            f"token {begin + at}: expected {_name(end_of_line, names)} after {width} codes ({told}), found {found}"
        )
    if closed % (width + 1):
        at_end = closed % (width + 1) == width
        expected = _name(end_of_line, names) if at_end else f"a code{_range(offset, codebook)}"
        at = begin + closed
        raise InputError(
            f"token {at}: expected {expected} in row {closed // (width + 1)}, after {closed % (width + 1)} of "
            f"{width} codes ({told}); found {_name(ids[at], names)}"
        )
    if closed < len(body):
        at = begin + closed
        raise InputError(
            f"token {at}: expected a code{_range(offset, codebook)} or {_name(ids[end], names)} to close the image, "
            f"found {_name(ids[at], names)}"
        )
    return body.reshape(-1, width + 1)[:, :width].astype(np.int64) - offset


def _range(offset: int, codebook: int) -> str:
    return f" (an id in [{offset}, {offset + codebook}))"


def _image_token(ids: np.ndarray, start: int) -> int:
    """The index of the <|image token|> that ends the size text of the Emu3 image opened at `start`:
    ordinary text, no special or visual token, at most MAX_SIZE_TEXT tokens of it."""
    window = ids[start + 1 : start + 2 + MAX_SIZE_TEXT]
    found = np.flatnonzero(window == EMU3_IMAGE_TOKEN)
    text = window[: found[0]] if len(found) else window
    special = np.flatnonzero(text >= EMU3_TEXT_END)
    if len(special) or not len(found):
        at = start + 1 + (int(special[0]) if len(special) else len(window))
        found_there = _name(ids[at], EMU3_NAMES) if at < len(ids) else "the end of the stream"
        raise InputError(
            f"token {at}: expected the size text (at most {MAX_SIZE_TEXT} tokens), then "
            f"{_name(EMU3_IMAGE_TOKEN, EMU3_NAMES)}; found {found_there}"
        )
    return start + 1 + int(found[0])


def _size_text(text: np.ndarray) -> tuple[int, int] | None:
    """Emu3's size text "H*W" as (H, W), where it reads as such; None where it does not (then the
    rows alone give the grid)."""
    if not all(int(token) in EMU3_SIZE_TEXT for token in text):
        return None
    match = re.fullmatch(r"(\d+)\*(\d+)", "".join(EMU3_SIZE_TEXT[int(token)] for token in text))
    if not match or not int(match[2]):
        return None
    return int(match[1]), int(match[2])


def images(sequences: list[np.ndarray], tokens: str, offset: int | None = None) -> list[tuple[int, Image]]:
    """Every image of the token streams `sequences` (1D integer arrays) written as `tokens` says
    ("emu3", "lumina-mgpt"), as (sequence, image) pairs in order; `offset` is the id of code 0
    (None: the format's). Raises InputError, naming the sequence and token at fault, or when
    there is no image at all."""
    stream = token_format(tokens)
    found = []
    for number, ids in enumerate(sequences):
        try:
            found += [(number, image) for image in stream.parse(ids, stream.offset if offset is None else offset)]
        except InputError as error:
            raise InputError(f"sequence {number}, {error}" if len(sequences) > 1 else str(error)) from None
    if not found:
        opening = _name(stream.image_start, stream.names)
        raise InputError(f"no {stream.title} image in this token stream: no {opening} opens one")
    return found


def stack(found: list[tuple[int, Image]], image: int | None = None) -> np.ndarray:
    """The codes of the images `found` as frames (N, h, w), or of image number `image` alone (1, h, w).

    Raises InputError when `image` is not one of them, or when the images differ in size."""
    if image is not None:
        if not 0 <= image < len(found):
            raise InputError(f"image={image}, but the stream holds {len(found)} image(s), numbered from 0")
        return found[image][1].codes[None]
    if len({picture.codes.shape for _, picture in found}) > 1:
        sizes = ", ".join(_where(found, number) for number in range(len(found)))
        raise InputError(f"the images differ in size ({sizes}); decode one at a time with image=K")
    return np.stack([picture.codes for _, picture in found])


def _where(found: list[tuple[int, Image]], number: int) -> str:
    sequence, image = found[number]
    place = f"sequence {sequence}, token {image.start}" if any(s for s, _ in found) else f"token {image.start}"
    return f"image {number} at {place}: {image.codes.shape[0]}x{image.codes.shape[1]} codes"
