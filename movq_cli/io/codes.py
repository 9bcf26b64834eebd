"""Reading code files: integer codes or continuous latents, as frames, read lazily.

`.npy` files and `.npz` members are read a few frames at a time (`stored.StoredArray`), never
memory-mapped and never unpickled; torch.save and .safetensors files are read by `tensorfiles`.
Integer arrays become frames of codes (T, H, W); floating arrays become latents (T, e, H, W).
Arrays and tensors already in memory (`from_array`) are taken as they are: a tensor stays on its device.
With `tokens`, the file holds the raw ids a language model generated (`tokenstreams`): each image
found in them becomes one frame.
"""

from __future__ import annotations

import math
import tokenize
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

from movq_cli.errors import InputError, first_line
from movq_cli.io import tensorfiles, tokenstreams
from movq_cli.io.stored import FileSource, StoredArray, ZipMemberSource, open_regular

# how the files start: .npy, and zip archives (.npz, and torch.save's format since torch 1.6)
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
# a 2D array of codes (A, B) is one frame unless it is more than this many times wider than high:
# then it is A flat token rows of B codes each (a frame of 8x4096 codes is not a picture)
ROWS_ASPECT = 8
SCAN_BYTES = 64 << 20  # how much of a file one validation step looks at
# what numpy raises for a damaged header or body
DAMAGED = (ValueError, TypeError, OverflowError, OSError, EOFError, SyntaxError, tokenize.TokenError)


@dataclass(frozen=True)
class Clip:
    """A clip of codes (T, H, W) or latents (T, e, H, W): in memory (a numpy array, or a torch
    tensor on any device) or still in its file."""

    array: np.ndarray | StoredArray
    path: Path  # the file; for an array given in memory, the name it is called by in messages
    stored_shape: tuple[int, ...] = ()  # the array's shape in the file, before it became frames
    numbers: Sequence[int] | None = None  # each frame's number in the file, once frames are selected
    in_memory: bool = False  # given as an array or tensor, not read from `path`
    # each frame is a separate image, not a frame of one video (the images of a token stream): a
    # model with a time axis decodes each on its own, as a clip of one frame
    images: bool = False
    tokens: str | None = None  # the token stream's format (tokenstreams.FORMATS), when read from one

    @property
    def is_latents(self) -> bool:
        return self.array.ndim == 4

    @property
    def n_frames(self) -> int:
        return self.array.shape[0]

    @property
    def grid(self) -> tuple[int, int]:
        """Codes per frame, (rows, columns)."""
        return self.array.shape[-2], self.array.shape[-1]

    def frames(self, start: int, stop: int) -> np.ndarray:
        """Frames [start, stop) as an in-memory array (read from disk now)."""
        return _materialise(self.array[start:stop])

    def chunks(self, frames: int):
        """(start, frames) pairs covering the clip, `frames` at a time."""
        for start in range(0, self.n_frames, frames):
            yield start, self.frames(start, start + frames)

    def pieces(self):
        """(first frame, first row, block) triples covering the clip, each about SCAN_BYTES or less:
        whole frames while a frame fits in that, bands of rows of one frame when it does not."""
        frame_bytes = max(1, math.prod(self.array.shape[1:]) * self.array.dtype.itemsize)
        if frame_bytes <= SCAN_BYTES:
            for start, block in self.chunks(SCAN_BYTES // frame_bytes):
                yield start, 0, block
            return
        rows = max(1, SCAN_BYTES // max(1, frame_bytes // self.grid[0]))
        for frame in range(self.n_frames):
            for row in range(0, self.grid[0], rows):
                yield frame, row, _materialise(self.array[frame : frame + 1, ..., row : row + rows, :])

    def frame_number(self, index: int) -> int:
        """The number in the file of this clip's frame `index`."""
        return index if self.numbers is None else self.numbers[index]

    def select(self, frames: slice | Sequence[int]) -> Clip:
        """Some of the frames: a slice stays a lazy view of the file; a list of frame numbers is read now.

        Raises InputError when nothing is selected."""
        every = range(self.n_frames) if self.numbers is None else self.numbers
        if isinstance(frames, slice):
            numbers, array = every[frames], self.array[frames]
        else:
            numbers, array = [every[i] for i in frames], _materialise(self.array[list(frames)])
        if len(numbers) == 0:
            raise InputError(f"{self.path}: the frame selection picks none of its {self.n_frames} frame(s)")
        return replace(self, array=array, numbers=numbers)

    def describe(self) -> str:
        if self.tokens is not None:
            title = tokenstreams.FORMATS[self.tokens].title
            return f"{title} token stream: {self.n_frames} image(s) of {self.grid[0]}x{self.grid[1]} codes"
        kind = f"latents x{self.array.shape[1]}" if self.is_latents else "codes"
        return f"{self.n_frames} frame(s) of {self.grid[0]}x{self.grid[1]} {kind}"


def _native(block: np.ndarray) -> np.ndarray:
    """`block` in this machine's byte order (a .npy may hold big-endian numbers)."""
    return block.astype(block.dtype.newbyteorder("="), copy=False)


@dataclass(frozen=True)
class ReadOptions:
    """How a clip is read: `key` picks the array of a file holding several (nested dicts: "a.b"),
    `grid` shapes flat token rows into frames, `frames` picks output frames (a slice or frame
    numbers; None: all), which the decode reads no more of than it needs; `tokens`,
    `token_offset` and `image` read the token ids a generation returned (see `read`)."""

    key: str | None = None
    grid: tuple[int, int] | None = None
    frames: slice | Sequence[int] | None = None
    tokens: str | None = None  # the generator whose token ids the file holds (tokenstreams.FORMATS)
    token_offset: int | None = None  # the id of code 0 in those ids (None: the generator's)
    image: int | None = None  # only this image of the token stream


def read_clip(source, options: ReadOptions = ReadOptions()) -> Clip:
    """A code file (a path), or an array or tensor (`from_array`), as a clip, read with `options`
    (their `frames` are chosen when the decode is prepared)."""
    tokens = dict(tokens=options.tokens, token_offset=options.token_offset, image=options.image)
    if isinstance(source, (str, Path)):
        return read(source, key=options.key, grid=options.grid, **tokens)
    if options.key is not None:
        raise ValueError(f"key={options.key!r} picks an array of a file; the codes are already an array")
    return from_array(source, grid=options.grid, **tokens)


def read(
    path: str | Path,
    key: str | None = None,
    grid: tuple[int, int] | None = None,
    tokens: str | None = None,
    token_offset: int | None = None,
    image: int | None = None,
) -> Clip:
    """Open a code file and shape it into frames. Raises InputError on anything unusable.

    With `tokens` ("emu3", "lumina-mgpt": `tokenstreams.FORMATS`) the file holds token ids a
    generation returned (a vector, a batch (B, L), or a list of them in a .pt or .safetensors
    file: `key` names it, or every tensor of the file is read): each image in them becomes a
    frame, or with `image` only image number `image`; `token_offset` is the id of code 0."""
    path = Path(path)
    if tokens is not None:
        return _token_stream(_open_arrays(path, key), path, grid, tokens, token_offset, image, in_memory=False)
    _refuse_token_options(token_offset, image)
    array = _open_array(path, key)
    _check_dtype(array, path)
    return Clip(_as_frames(array, grid, path), path, tuple(array.shape))


def from_array(
    array,
    grid: tuple[int, int] | None = None,
    name: str = "codes",
    tokens: str | None = None,
    token_offset: int | None = None,
    image: int | None = None,
) -> Clip:
    """A numpy array or a torch tensor (on any device, left there) shaped into frames as a file's
    array would be, called `name` in messages; with `tokens`, token ids as `read` takes them (also
    a list of vectors). Raises InputError on anything unusable."""
    if tokens is not None:
        arrays = list(array) if isinstance(array, (list, tuple)) else [array]
        for each in arrays:
            if not isinstance(each, np.ndarray) and not _is_tensor(each):
                raise TypeError(f"{name} must be numpy arrays or torch tensors of token ids, not {type(each).__name__}")
        return _token_stream(arrays, Path(name), grid, tokens, token_offset, image, in_memory=True)
    _refuse_token_options(token_offset, image)
    if not isinstance(array, np.ndarray) and not _is_tensor(array):
        raise TypeError(f"{name} must be a file path, a numpy array or a torch tensor, not {type(array).__name__}")
    path = Path(name)
    _check_dtype(array, path)
    if _is_tensor(array):
        array = array.detach()
    return Clip(_as_frames(array, grid, path), path, tuple(array.shape), in_memory=True)


def _refuse_token_options(token_offset: int | None, image: int | None) -> None:
    if token_offset is not None or image is not None:
        given = "token_offset=..." if token_offset is not None else "image=..."
        raise InputError(f"{given} is for token streams; say which generator wrote them with tokens=...")


def _token_stream(
    arrays: list, path: Path, grid, tokens: str, token_offset: int | None, image: int | None, in_memory: bool
) -> Clip:
    """The images in the token ids `arrays` (vectors or batches (B, L)) as a clip of frames."""
    tokenstreams.token_format(tokens)
    if grid is not None:
        raise InputError(f"grid=... is for flat rows of codes; with tokens={tokens} each image's rows give its grid")
    sequences = []
    for array in arrays:
        ids = array.detach().cpu().numpy() if _is_tensor(array) else _materialise(array)
        if ids.dtype.kind not in "iu":
            choose = "; choose the ids with key=NAME" if len(arrays) > 1 else ""
            raise InputError(f"{path} holds {ids.dtype} numbers; token ids are integers{choose}")
        if ids.ndim not in (1, 2):
            raise InputError(f"{path}: token ids are a vector (L,) or a batch (B, L); got shape {ids.shape}")
        sequences += [ids] if ids.ndim == 1 else list(ids)
    try:
        frames = tokenstreams.stack(tokenstreams.images(sequences, tokens, token_offset), image)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
    shape = tuple(arrays[0].shape) if len(arrays) == 1 else (len(arrays),)
    return Clip(frames, path, shape, in_memory=in_memory, images=True, tokens=tokens)


def _is_tensor(array) -> bool:
    return type(array).__module__.startswith("torch") and hasattr(array, "device")


def _materialise(view):
    """A slice of a clip in memory: numpy views of a file are read now; a tensor stays where it is."""
    return view if _is_tensor(view) else _native(np.array(view, order="C"))


def _kind(array) -> str:
    """The numpy dtype kind of an array or a tensor: "i", "u", "f", "b", "c", ..."""
    if not _is_tensor(array):
        return array.dtype.kind
    dtype = array.dtype
    if dtype.is_floating_point:
        return "f"
    if dtype.is_complex:
        return "c"
    if str(dtype) == "torch.bool":
        return "b"
    return "u" if str(dtype).startswith("torch.uint") else "i"


def _open_array(path: Path, key: str | None) -> np.ndarray | StoredArray:
    with open_regular(path) as file:
        magic = file.read(9)
    if magic.startswith(NPY_MAGIC):
        if key is not None:
            raise InputError(f"key={key!r} names an array in an .npz, .pt or .safetensors file; {path} is a .npy file")
        return _open_npy(path)
    if magic.startswith(ZIP_MAGIC) and not tensorfiles.is_torch_zip(path):
        return _open_npz(path, key)
    if magic.startswith(ZIP_MAGIC) or magic[:1] == b"\x80" or tensorfiles.is_safetensors(magic):
        return tensorfiles.read_tensor_file(path, key, safetensors=tensorfiles.is_safetensors(magic))
    raise InputError(f"{path} is not a .npy or .npz file, nor a torch.save (.pt) or .safetensors one")


def _open_arrays(path: Path, key: str | None) -> list[np.ndarray | StoredArray]:
    """The arrays of a token stream file: the one of a .npy or .npz (`key`: its member), or those of
    a .pt or .safetensors file that `key` names (a tensor, or every tensor of a list or dict saved
    under that name; no key: every tensor in the file)."""
    with open_regular(path) as file:
        magic = file.read(9)
    safetensors = tensorfiles.is_safetensors(magic)
    if safetensors or magic[:1] == b"\x80" or (magic.startswith(ZIP_MAGIC) and tensorfiles.is_torch_zip(path)):
        return tensorfiles.read_tensor_list(path, key, safetensors=safetensors)
    return [_open_array(path, key)]


def _open_npy(path: Path) -> np.ndarray | StoredArray:
    source = FileSource(path)
    try:
        shape, fortran_order, dtype = _npy_header(source.file)
        offset = source.file.tell()
        _check_stored(dtype, path)
        needed = offset + math.prod(shape) * dtype.itemsize
        if source.size < needed:
            raise InputError(f"{path} is truncated: {source.size} bytes, the header promises {needed}")
        if math.prod(shape) == 0:
            return np.empty(shape, dtype)
        if fortran_order or not shape:  # rare enough, or small enough, to be read whole
            source.file.seek(0)
            return np.lib.format.read_array(source.file, allow_pickle=False)
        return StoredArray(source, offset, dtype, shape)
    except InputError:
        raise
    except DAMAGED as error:
        raise InputError(f"{path}: damaged .npy file ({first_line(error)})") from None


def _open_npz(path: Path, key: str | None) -> np.ndarray | StoredArray:
    """An .npz member: a stored one read in place like a .npy, a compressed one inflated as it is read."""
    source = FileSource(path)
    try:
        archive = zipfile.ZipFile(source.file)
        members = {name.removesuffix(".npy"): name for name in archive.namelist()}
        key = tensorfiles.choose(members, key, path, "array", ", ".join(members))
        info = archive.getinfo(members[key])
        with archive.open(info) as member:
            shape, fortran_order, dtype = _npy_header(member)
            offset = member.tell()
            _check_stored(dtype, path)
            needed = offset + math.prod(shape) * dtype.itemsize
            if info.file_size < needed:
                raise InputError(
                    f"{path}: array {key!r} is truncated: {info.file_size} bytes, its header promises {needed}"
                )
            if math.prod(shape) == 0:
                return np.empty(shape, dtype)
            if fortran_order or not shape:  # rare enough, or small enough, to be read whole
                member.seek(0)
                return np.lib.format.read_array(member, allow_pickle=False)
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1:  # bit 0: encrypted
            start = _member_start(source, info) + offset
            if source.size < start + needed - offset:
                raise InputError(f"{path} is truncated: array {key!r} runs past its end")
            return StoredArray(source, start, dtype, shape)
        return StoredArray(ZipMemberSource(path, info.filename), offset, dtype, shape)
    except InputError:
        raise
    except (*DAMAGED, zipfile.BadZipFile, zlib.error, KeyError, NotImplementedError, RuntimeError) as error:
        raise InputError(f"{path}: damaged .npz file ({first_line(error)})") from None


def _member_start(source: FileSource, info: zipfile.ZipInfo) -> int:
    """Where the data of an uncompressed zip member begins: after its local header, whose name
    and extra field (lengths at bytes 26-29) may differ from the central directory's."""
    source.file.seek(info.header_offset)
    header = source.file.read(30)
    if len(header) < 30 or not header.startswith(ZIP_MAGIC):
        raise zipfile.BadZipFile(f"no local header for {info.filename}")
    return info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")


def _npy_header(file: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The shape, order and dtype in the header of the .npy stream `file`, left at the first byte of data."""
    version = np.lib.format.read_magic(file)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read_header(file)


def _check_stored(dtype: np.dtype, path: Path) -> None:
    if dtype.hasobject:
        raise InputError(f"{path} holds Python objects (a pickled array); movq reads only numeric arrays")


def _check_dtype(array: np.ndarray, path: Path) -> None:
    found = _kind(array)
    if found == "f" and not _is_tensor(array) and array.dtype.itemsize > 8:
        raise InputError(f"{path} holds {array.dtype.itemsize * 8}-bit floats; latents must be 16, 32 or 64-bit floats")
    if found not in "iuf":
        names = {"b": "booleans", "c": "complex numbers", "O": "Python objects", "U": "strings", "S": "bytes"}
        what = names.get(found, f"dtype {array.dtype}")
        raise InputError(f"{path} holds {what}; codes must be integers and latents floats")


def _as_frames(array: np.ndarray, grid: tuple[int, int] | None, path: Path) -> np.ndarray:
    while array.ndim > 1 and array.shape[0] == 1:
        array = array.reshape(array.shape[1:])
    if math.prod(array.shape) == 0:
        raise InputError(f"{path} has zero frames (shape {array.shape})")
    if _kind(array) == "f":
        if array.ndim == 3:
            array = array.reshape((1, *array.shape))
        if array.ndim != 4:
            raise InputError(f"{path}: latents must be (e, H, W) or (T, e, H, W); got shape {array.shape}")
        return array
    if array.ndim == 1:
        rows, cols = grid or _square(array.shape[0], path)
        return _rows_to_grid(array.reshape((1, array.shape[0])), rows, cols, path)
    if array.ndim == 2:
        if grid is not None:
            return _rows_to_grid(array, *grid, path)
        if array.shape[1] <= ROWS_ASPECT * array.shape[0]:
            return array.reshape((1, *array.shape))  # one frame (H, W)
        return _rows_to_grid(array, *_square(array.shape[1], path), path)  # far wider than high: token rows
    if array.ndim == 3:
        if grid is not None and tuple(array.shape[1:]) != tuple(grid):
            raise InputError(f"{path}: frames are {array.shape[1]}x{array.shape[2]}, not grid=({grid[0]}, {grid[1]})")
        return array
    raise InputError(f"{path}: codes must be (H, W), (T, H, W), (L,) or (T, L); got {array.ndim} axes {array.shape}")


def _square(length: int, path: Path) -> tuple[int, int]:
    """A row of `length` codes as a square frame; InputError naming the shapes it could have when it is not one."""
    side = math.isqrt(length)
    if side * side != length:
        shapes = [(rows, length // rows) for rows in range(1, length + 1) if length % rows == 0]
        likely = [f"grid=({rows}, {cols})" for rows, cols in shapes if max(rows, cols) <= 4 * min(rows, cols)]
        maybe = f" ({' or '.join(likely)}?)" if 0 < len(likely) <= 4 else ""
        raise InputError(
            f"{path}: {length} codes in a row is not a square; give the frame shape with grid=(H, W){maybe}"
        )
    return side, side


def _rows_to_grid(rows: np.ndarray, height: int, width: int, path: Path) -> np.ndarray:
    if rows.shape[1] != height * width:
        raise InputError(f"{path}: rows of {rows.shape[1]} codes do not fill grid=({height}, {width})")
    return rows.reshape(rows.shape[0], height, width)


def check_fits(codes: Clip, channels: int, n_codes: int | None) -> None:
    """Raise InputError unless every frame can be decoded by a model that takes latents of
    `channels` channels and integer codes in [0, n_codes) (None: no integer codes).

    Scans every selected frame (a chunk at a time) for out-of-range codes or non-finite latents,
    so that a bad value is reported before any output is written.
    """
    if codes.is_latents:
        found = codes.array.shape[1]
        if found != channels:
            raise InputError(f"{codes.path}: latents have {found} channels; this model takes {channels}")
        for start, first_row, block in codes.pieces():
            bad = ~_isfinite(block)
            if bad.any():
                t, c, y, x = _first(bad)
                value = block[t, c, y, x].item()
                frame = codes.frame_number(start + t)
                raise InputError(
                    f"{codes.path}: latent {value} at frame {frame}, channel {c}, row {first_row + y}, column {x}"
                )
        return
    limit = n_codes
    if limit is None:
        raise InputError(f"{codes.path}: integer codes need a codebook, and this model has none (give latents)")
    for start, first_row, block in codes.pieces():
        bad = (block < 0) | (block >= limit)
        if bad.any():
            t, y, x = _first(bad)
            raise InputError(
                f"{codes.path}: code {block[t, y, x].item()} at frame {codes.frame_number(start + t)}, "
                f"row {first_row + y}, column {x} is outside [0, {limit}) for this model"
            )


def _isfinite(block):
    if _is_tensor(block):
        import torch

        return torch.isfinite(block)
    return np.isfinite(block)


def _first(mask) -> tuple[int, ...]:
    """The index of the first true value of a boolean array or tensor."""
    mask = mask.cpu().numpy() if _is_tensor(mask) else mask
    return tuple(int(i) for i in np.argwhere(mask)[0])
