"""The encode pipeline: pictures -> chunk -> device -> encoder -> codes or latents -> .npy.

Frames whose sides are not multiples of the model's downsampling factor are cropped at the
bottom and right to the largest multiple (at most factor-1 pixels go).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from movq_cli.errors import InputError, RunError, reason
from movq_cli.io.images import Footage
from movq_cli.io.targets import AtomicTarget
from movq_cli.models.movq import Movq


@dataclass(frozen=True)
class EncodeResult:
    output: Path
    shape: tuple[int, ...]
    dtype: str
    seconds: float
    size: tuple[int, int] = (0, 0)  # pixels encoded (height, width): the frames' own, cropped to the factor


def code_dtype(n_codes: int) -> np.dtype:
    """The smallest signed integer type that holds every code."""
    return np.dtype(np.int16 if n_codes <= np.iinfo(np.int16).max + 1 else np.int32)


def check_encoder(model: Movq, latents: bool) -> None:
    """Raise InputError unless `model` can encode: an encoder, and a codebook unless `latents` are wanted."""
    if model.encoder is None:
        raise InputError("this model has no encoder (its weights carry only the decoder); give weights with one")
    if not latents and not model.has_codebook:
        raise InputError("this model has no codebook; use latents=True")


def encode_chunk(model: Movq, frames: np.ndarray, device: torch.device, latents: bool) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> codes (n, h, w) or latents (n, e, h, w), on `device`."""
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        pixels = torch.from_numpy(frames).to(device, non_blocking=True).permute(0, 3, 1, 2)
        images = pixels.to(dtype).div_(127.5).sub_(1)
        encoded = model.encode(images)
        return encoded.float() if latents else model.quantize.nearest(encoded)


def _batches(footage: Footage, chunk: int, size: tuple[int, int]) -> Iterator[np.ndarray]:
    height, width = size
    batch = []
    for frame in footage.frames():
        batch.append(frame[:height, :width])
        if len(batch) == chunk:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def encode_to_file(
    model: Movq,
    footage: Footage,
    output: Path,
    device: torch.device,
    chunk: int = 8,
    latents: bool = False,
    overwrite: bool = False,
    on_frames: Callable[[int], None] | None = None,
) -> EncodeResult:
    """Encode every frame of `footage` into the .npy file `output`.

    Codes are (T, h, w) integers, or (h, w) for a single image; with `latents`, the encoder's
    continuous output before quantization, (T, e, h, w) or (e, h, w), float32.
    """
    config = model.config
    check_encoder(model, latents)
    if output.suffix.lower() != ".npy":
        raise InputError(f"{output}: encode writes .npy files")
    factor = config.factor
    size = (footage.size[0] // factor * factor, footage.size[1] // factor * factor)
    if min(size) == 0:
        raise InputError(f"{footage.path}: {footage.size[0]}x{footage.size[1]} is smaller than one code ({factor}px)")
    grid = (size[0] // factor, size[1] // factor)
    per_frame = (config.embed_dim, *grid) if latents else grid
    shape = (footage.n_frames, *per_frame) if footage.kind != "image" else per_frame
    dtype = np.dtype(np.float32) if latents else code_dtype(config.n_codes)

    started = time.perf_counter()
    target = AtomicTarget(output, overwrite)
    try:
        array = _reserved_memmap(target.temp, dtype, shape)
        flat = array.reshape(footage.n_frames, *per_frame)
        done = 0
        for batch in _batches(footage, chunk, size):
            if done + len(batch) > footage.n_frames:
                break  # a video that yields more frames than it declared: keep the declared count
            flat[done : done + len(batch)] = encode_chunk(model, batch, device, latents).cpu().numpy()
            done += len(batch)
            if on_frames:
                on_frames(len(batch))
        if done != footage.n_frames:
            raise RunError(f"{footage.path}: read {done} frames, expected {footage.n_frames}")
        array.flush()
        del array, flat
        target.commit()
    except OSError as error:
        target.remove()
        raise RunError(f"cannot write {output}: {reason(error)}") from None
    except BaseException:
        target.remove()
        raise
    return EncodeResult(output, shape, dtype.name, time.perf_counter() - started, size)


def _reserved_memmap(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> np.memmap:
    """A new .npy at `path`, mapped for writing, its blocks reserved on the disk first: on a full
    disk that is an OSError now, where writing into a sparse map would kill the process (SIGBUS)."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    with open(path, "r+b") as file:
        os.posix_fallocate(file.fileno(), 0, os.fstat(file.fileno()).st_size)
    return array
