"""movq: decode MoVQ codes and latents into pictures and video.

The public API, what the `movq` command itself calls::

    import movq_cli as movq

    model = movq.load("kandinsky-community/kandinsky-2-2-decoder", device="cuda", dtype="bf16")
    movq.decode("clip.npy", "clip.mp4", model)            # the whole clip, streamed to a file
    for frame in movq.decode_frames("clip.npy", model):   # or frame by frame: (H, W, 3) uint8
        ...
    movq.decode(latents, "clip.mp4", model)               # a numpy array or a torch tensor, where it is
    movq.contact_sheet("clip.npy", "sheet.png", model)    # 8 numbered frames on one picture (movq preview)
    encoder = movq.load(encoder=True)                     # the bundled model, with its encoder
    movq.encode("photo.png", "photo.npy", encoder)

Importing this package does not import torch; each function imports what it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from movq_cli.errors import InputError, MovqError, OutOfMemory, RunError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from movq_cli.encoding import EncodeResult
    from movq_cli.families import Model
    from movq_cli.pipeline import DecodeResult
    from movq_cli.preview import PreviewResult

__version__ = "0.1.0"
__all__ = [
    "load", "decode", "decode_frames", "contact_sheet", "encode",
    "Model", "DecodeResult", "PreviewResult", "EncodeResult",
    "MovqError", "InputError", "RunError", "OutOfMemory", "__version__",
]  # fmt: skip
# what the API returns, imported when first asked for: their modules import torch
_LAZY = {
    "Model": "movq_cli.families",
    "DecodeResult": "movq_cli.pipeline",
    "PreviewResult": "movq_cli.preview",
    "EncodeResult": "movq_cli.encoding",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'movq_cli' has no attribute {name!r}")


def load(
    weights: str | Path = "default",
    device: str = "auto",
    dtype: str = "fp32",
    encoder: bool = False,
) -> Model:
    """A model ready for inference on `device` ("auto", "cpu", "cuda", "cuda:N", "mps") in `dtype`
    ("fp32", "bf16", "fp16").

    `weights` is a checkpoint file, a diffusers folder, a Hugging Face Hub id, or "default" for the
    bundled model. The encoder is loaded only with `encoder` (for `encode`). Raises InputError (one
    line, saying what is wrong) for anything unusable.
    """
    from movq_cli.checkpoints import weights as checkpoints
    from movq_cli.checkpoints.bundled import default_weights
    from movq_cli.device import resolve_device, resolve_dtype

    source = default_weights() if str(weights) == "default" else weights
    return checkpoints.load(source, resolve_device(device), resolve_dtype(dtype), encoder=encoder)


def decode(
    codes: str | Path | np.ndarray | torch.Tensor,
    out: str | Path,
    model: Model,
    *,
    frames: slice | Sequence[int] | None = None,
    key: str | None = None,
    grid: tuple[int, int] | None = None,
    tokens: str | None = None,
    token_offset: int | None = None,
    image: int | None = None,
    chunk: int | None = None,
    fps: float | None = None,
    crf: int | None = None,
    encoder: str | None = None,
    snap: bool = False,
    unscaled: bool = False,
    per_clip: bool = False,
    tile: int | tuple[int, int] | None = None,
    overwrite: bool = False,
    source_numbers: bool = False,
    on_frames: Callable[[int], None] | None = None,
) -> DecodeResult:
    """Decode `codes` into `out`: a video (.mp4, .webm, .gif, .webp), one picture (.png, .jpg) or a
    folder of PNG frames ("name/"), written atomically.

    `codes` is a code file (.npy, .npz, .pt, .pth, .safetensors), or a numpy array or torch tensor
    shaped as a file's would be: codes (T, h, w), latents (T, e, h, w), CogVideoX latents
    (F, C, h, w) or (1, F, C, h, w) as a pipeline's output_type="latent" hands them. A tensor is
    decoded on the model's device; one already there (a CUDA tensor) is not copied to the host.

    `frames` selects output frames (a slice or frame numbers), `key` the array of a file holding
    several (nested dicts: "a.b"), `grid` the frame shape of flat token rows; `tokens` ("emu3",
    "lumina-mgpt") says `codes` holds the raw ids a generation returned (a vector, a batch (B, L)
    or a list of them), each image in them a frame, `token_offset` the id of code 0 and `image`
    picks one image; `fps`, `crf` and `encoder` (an MP4's H.264 encoder: "x264-veryfast", "nvenc",
    ...) set how a video is written; `snap` snaps a MoVQ's latents to its codebook, `unscaled`
    says CogVideoX latents are already divided by the scaling factor, `tile` (pixels: 256 or
    (240, 360)) decodes each frame (CogVideoX: each chunk) in spatial tiles, to the same pixels,
    in less memory; `per_clip` decodes each of Emu3's latent frames as a clip of its own (codes
    BAAI's autoencode.py made); `source_numbers` names a folder's PNG frames by their number in the whole output
    (frames=slice(None, None, 10): 00000.png, 00010.png, ...); `on_frames(n)` hears progress.
    Returns what was written (frames, frame size, seconds)."""
    from movq_cli.io.writers import WriteOptions
    from movq_cli.pipeline import decode_to_file

    plan = _prepare(
        codes, model, frames, dict(key=key, grid=grid, tokens=tokens, token_offset=token_offset, image=image),
        dict(chunk=chunk, snap=snap, unscaled=unscaled, tile=_tile(tile), per_clip=per_clip),
    )  # fmt: skip
    write = WriteOptions(fps=fps, crf=crf, encoder=encoder, overwrite=overwrite, source_numbers=source_numbers)
    return decode_to_file(plan, out, write, on_frames)


def decode_frames(
    codes: str | Path | np.ndarray | torch.Tensor,
    model: Model,
    *,
    frames: slice | Sequence[int] | None = None,
    key: str | None = None,
    grid: tuple[int, int] | None = None,
    tokens: str | None = None,
    token_offset: int | None = None,
    image: int | None = None,
    chunk: int | None = None,
    snap: bool = False,
    unscaled: bool = False,
    per_clip: bool = False,
    tile: int | tuple[int, int] | None = None,
) -> Iterator[np.ndarray]:
    """The frames of `codes` (a code file, an array or a tensor, as `decode` takes them), decoded a
    chunk at a time: (H, W, 3) uint8 arrays in order.

    Everything is checked before the first frame is decoded; memory stays flat however long the clip."""
    from movq_cli.pipeline import decode_frames as decode_chunks

    plan = _prepare(
        codes, model, frames, dict(key=key, grid=grid, tokens=tokens, token_offset=token_offset, image=image),
        dict(chunk=chunk, snap=snap, unscaled=unscaled, tile=_tile(tile), per_clip=per_clip),
    )  # fmt: skip
    for block in decode_chunks(plan):
        yield from block


def contact_sheet(
    codes: str | Path | np.ndarray | torch.Tensor,
    out: str | Path,
    model: Model,
    *,
    count: int = 8,
    columns: int | None = None,
    key: str | None = None,
    grid: tuple[int, int] | None = None,
    tokens: str | None = None,
    token_offset: int | None = None,
    image: int | None = None,
    unscaled: bool = False,
    per_clip: bool = False,
    tile: int | tuple[int, int] | None = None,
    overwrite: bool = False,
) -> PreviewResult:
    """A contact sheet (.png or .jpg) of `count` evenly spaced frames of `codes` (as `decode` takes
    them), each numbered, `columns` to a row; only those frames are decoded."""
    from movq_cli.io.codes import ReadOptions, read_clip
    from movq_cli.models.family import DecodeOptions
    from movq_cli.preview import preview_to_file

    clip = read_clip(codes, ReadOptions(key=key, grid=grid, tokens=tokens, token_offset=token_offset, image=image))
    options = DecodeOptions(unscaled=unscaled, tile=_tile(tile), per_clip=per_clip)
    return preview_to_file(model, clip, Path(out), count, columns, overwrite, options)


def encode(
    source: str | Path,
    out: str | Path,
    model: Model,
    *,
    latents: bool = False,
    chunk: int = 8,
    overwrite: bool = False,
    on_frames: Callable[[int], None] | None = None,
) -> EncodeResult:
    """Encode an image, a folder of images or a video into the .npy file `out`: codes (T, h, w)
    (or (h, w) for one image), or with `latents` the encoder's continuous output. `model` must be
    loaded with `load(..., encoder=True)`."""
    from movq_cli.encoding import encode_to_file
    from movq_cli.io.images import open_footage
    from movq_cli.pipeline import model_device

    footage = open_footage(source)
    return encode_to_file(
        model, footage, Path(out), model_device(model), chunk=chunk, latents=latents, overwrite=overwrite,
        on_frames=on_frames,
    )  # fmt: skip


def _prepare(codes, model: Model, frames, read: dict, decode: dict):
    """`codes` read with the `read` keywords, prepared for `model` to decode `frames` with the `decode` ones."""
    from movq_cli.io.codes import ReadOptions, read_clip
    from movq_cli.models.family import DecodeOptions
    from movq_cli.pipeline import prepare

    return prepare(model, read_clip(codes, ReadOptions(**read)), frames, DecodeOptions(**decode))


def _tile(tile: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """A tile size in pixels, square (256) or (rows, columns), as DecodeOptions takes it."""
    if tile is None:
        return None
    rows, cols = (tile, tile) if isinstance(tile, int) else tile
    if rows < 1 or cols < 1:
        raise ValueError(f"a tile needs a positive size, not {tile}")
    return rows, cols
