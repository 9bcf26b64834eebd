"""What a model family decodes, and how a clip streams through it.

The pipeline talks to a model through its family and never asks which model it is:

- `MovqFrames` (the 2D MoVQ): every frame decodes on its own, from integer codes (n, h, w) or
  latents (n, e, h, w); any chunk of frames gives the same pixels, so the chunk size is free
  and a selection of frames reads only those frames.
- `CogVideoXVideo` (CogVideoX, the MoVQ decoder in 3D): latent frames (F, C, h, w) decode in the chunks
  of the model's schedule, with the causal convolutions' state carried from one chunk to the
  next, into 4(F-1)+1 frames (or 4F for an even F); a frame depends on every latent frame
  before it, so a selection of output frames is decoded from the first latent frame on and
  the decoding stops after the last frame selected.

Both turn chunks of file frames, on the device, into images (n, 3, H, W) about [-1, 1].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch

from movq_cli.device import LIVE_ACTIVATIONS, auto_chunk
from movq_cli.errors import InputError
from movq_cli.io import codes as codes_io
from movq_cli.io.codes import Clip
from movq_cli.io.stored import StoredArray
from movq_cli.memory import check_fits_in_memory, device_memory, gib
from movq_cli.models.emu3 import frames_per_call
from movq_cli.models.footprint import call_bytes, chunk_bytes, frame_bytes, tiled_bytes

UNKNOWN_SCALE = (
    "these CogVideoX weights came without their config.json, so how the latents are scaled is unknown "
    "(2b: 1.15258426, 5b and 1.5: 0.7): put config.json beside them, give latents already divided by it "
    "(unscaled=True), or store it: movq convert WEIGHTS OUT.safetensors config=cogvideox-2b (or -5b)"
)


@dataclass(frozen=True)
class DecodeOptions:
    """How a clip is decoded. Each family refuses what has no meaning for it."""

    chunk: int | None = None  # 2D: frames per decoder call (None: from the device's memory); Emu3: latent frames
    snap: bool = False  # 2D: snap latents to their nearest codebook rows
    unscaled: bool = False  # 3D: latents are already divided by the model's scaling_factor
    tile: tuple[int, int] | None = None  # decode each frame (3D: chunk) in spatial tiles of (rows, columns) pixels
    per_clip: bool = False  # Emu3: each latent frame is a clip of its own (BAAI's autoencode.py), nothing carried
    images: bool = False  # Emu3: each frame is an image of its own (a token stream's), frame 0 of its clip


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Decoder output (B, 3, H, W) -> (B, H, W, 3) uint8: round(clamp((x + 1) / 2, 0, 1) * 255)."""
    pixels = (images.float() + 1).div_(2).clamp_(0, 1).mul_(255).round_()
    return pixels.to(torch.uint8).permute(0, 2, 3, 1)


class Family(ABC):
    """A loaded model, seen by the pipeline."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        parameter = next(model.parameters())
        self.dtype, self.device = parameter.dtype, parameter.device

    @property
    def config(self):
        return self.model.config

    def frame_size(self, grid: tuple[int, int]) -> tuple[int, int]:
        """Pixels (height, width) of an output frame, for a `grid` of codes or latents."""
        return grid[0] * self.config.factor, grid[1] * self.config.factor

    @abstractmethod
    def independent(self, clip: Clip) -> bool:
        """Whether each output frame of `clip` is one file frame's alone (a selection then reads only those)."""

    @abstractmethod
    def output_frames(self, clip: Clip) -> int:
        """How many frames `clip` decodes to."""

    def decoding(self, clip: Clip) -> str | None:
        """How `clip` will be decoded, where the family can read it more than one way (None: one way)."""
        return None

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Decoded images (n, 3, H, W) about [-1, 1] -> uint8 (n, H, W, 3) on their device, as the
        model's own pipeline makes them (`to_pixels`, unless the family says otherwise)."""
        return to_pixels(images)

    @abstractmethod
    def chunk_sizes(self, clip: Clip, chunk: int | None) -> list[int]:
        """File frames per decoder call, covering the clip; `chunk` None: the family's choice."""

    @abstractmethod
    def check_memory(self, clip: Clip, options: DecodeOptions = DecodeOptions()) -> None:
        """Raise InputError when the device has too little memory for a chunk of `clip` (from its shape alone)."""

    def conform(self, clip: Clip, options: DecodeOptions) -> tuple[Clip, DecodeOptions]:
        """The clip in the layout the family decodes, and how to take it, where a file holds it
        another way its users know (the clip as it is, elsewhere)."""
        return clip, options

    def memory_hint(self, options: DecodeOptions) -> str | None:
        """What to try when decoding runs out of memory (None: errors.OutOfMemory's own, a smaller chunk)."""
        return None

    @abstractmethod
    def check(self, clip: Clip, options: DecodeOptions) -> None:
        """Raise InputError unless every frame of `clip` decodes with `options` (its memory is
        `check_memory`'s, asked first, so that an absurd frame size is refused before its codes are scanned)."""

    @abstractmethod
    def stream(self, blocks: Iterable[torch.Tensor], options: DecodeOptions) -> Iterator[torch.Tensor]:
        """Chunks of file frames on the device (as `chunk_sizes` cut them) -> their images, chunk by chunk."""

    def tile_latents(self, options: DecodeOptions) -> tuple[int, int]:
        """The tile, in pixels, as whole latents (at least one) per tile."""
        return tuple(max(1, pixels // self.config.factor) for pixels in options.tile)

    def to_device(self, block) -> torch.Tensor:
        """A chunk of file frames (numpy, or a tensor on any device) -> the device: codes as int64,
        latents in the model's dtype.

        On CUDA from pinned memory, so that the copy does not hold up the host; a tensor already
        there stays there."""
        tensor = block if isinstance(block, torch.Tensor) else torch.from_numpy(block)
        tensor = tensor.long() if not tensor.is_floating_point() else tensor
        if self.device.type == "cuda" and tensor.device.type == "cpu":
            tensor = tensor.pin_memory()
        tensor = tensor.to(self.device, non_blocking=True)
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor


class MovqFrames(Family):
    """The 2D MoVQ: frames decode independently, in chunks of any size."""

    def independent(self, clip: Clip) -> bool:
        return True

    def output_frames(self, clip: Clip) -> int:
        return clip.n_frames

    def chunk_sizes(self, clip: Clip, chunk: int | None) -> list[int]:
        chunk = chunk or auto_chunk(self.config, clip.grid, self.device, self.dtype)
        return [min(chunk, clip.n_frames - start) for start in range(0, clip.n_frames, chunk)]

    @cached_property
    def weight_bytes(self) -> int:
        return sum(parameter.nbytes for parameter in self.model.parameters())

    def check_memory(self, clip: Clip, options: DecodeOptions = DecodeOptions()) -> None:
        if options.tile is None:
            whole = call_bytes(frame_bytes(self.config, clip.grid, self.dtype, self.device), self.weight_bytes)
            try:
                check_fits_in_memory(whole, f"a frame of {_grid(clip)}", self.device)
            except InputError as error:
                error.hint = self.memory_hint(options, clip.grid)
                raise
            return
        tile = self.tile_latents(options)
        host, on_device = self.tiled_bytes(clip.grid, tile)
        pixels = f"{tile[0] * self.config.factor}x{tile[1] * self.config.factor}"
        if on_device:
            try:
                check_fits_in_memory(on_device, f"a tile of {pixels} pixels of {_grid(clip)}", self.device)
            except InputError as error:
                error.hint = self.memory_hint(options, clip.grid)
                raise
        check_fits_in_memory(host, f"a frame of {_grid(clip)} in tiles of {pixels} pixels", torch.device("cpu"))

    def tiled_bytes(self, grid: tuple[int, int], tile: tuple[int, int]) -> tuple[int, int]:
        """(host, device) bytes a frame of `grid` codes in tiles of `tile` latents needs (see footprint.tiled_bytes)."""
        return tiled_bytes(self.config, grid, tile, self.dtype, self.device, self.weight_bytes)

    def fitting_tile(self, grid: tuple[int, int]) -> int | None:
        """The largest square tile, in latents (a power of two), whose decode fits in memory (None: none does)."""
        side = 1 << max(grid).bit_length()
        host_memory, memory = device_memory(torch.device("cpu")), device_memory(self.device)
        while side >= 1:
            host, on_device = self.tiled_bytes(grid, (side, side))
            if (host_memory is None or host <= host_memory) and (memory is None or on_device <= memory):
                return side
            side //= 2
        return None

    def memory_hint(self, options: DecodeOptions, grid: tuple[int, int] | None = None) -> str | None:
        if grid is None:
            return None if options.tile is None else "try a smaller tile=..."
        side = self.fitting_tile(grid)
        if side is None:
            host, _ = self.tiled_bytes(grid, (1, 1))
            return f"decoded in tiles it still needs about {gib(host)} of host memory"
        host, _ = self.tiled_bytes(grid, (side, side))
        return f"tile={side * self.config.factor} decodes it in tiles, to the same pixels ({gib(host)} in host memory)"

    def check(self, clip: Clip, options: DecodeOptions) -> None:
        codes_io.check_fits(clip, self.config.embed_dim, self.config.n_codes)
        if options.snap and not self.model.has_codebook:
            raise InputError("snap=True needs a codebook, and this model has none")
        if options.unscaled:
            raise InputError("unscaled=True is for CogVideoX latents; MoVQ latents are decoded as they are")
        if options.per_clip:
            raise InputError("per_clip=True is for Emu3 codes; a 2D MoVQ decodes every frame on its own")

    def stream(self, blocks: Iterable[torch.Tensor], options: DecodeOptions) -> Iterator[torch.Tensor]:
        tile = None if options.tile is None else self.tile_latents(options)
        for block in blocks:
            with torch.inference_mode():
                if not block.is_floating_point():
                    zq = self.model.quantize.lookup(block)
                else:
                    zq = self.model.quantize.snap(block) if options.snap else block
                yield self.model(zq) if tile is None else self.model.decode_tiled(zq, tile)


class CogVideoXVideo(Family):
    """CogVideoX: latent frames decode in the model's chunk schedule, with causal state carried between chunks."""

    def independent(self, clip: Clip) -> bool:
        return False

    def output_frames(self, clip: Clip) -> int:
        return self.model.output_frames(clip.n_frames)

    def chunk_sizes(self, clip: Clip, chunk: int | None) -> list[int]:
        if chunk is not None:
            raise InputError(
                "chunk=... has no use for CogVideoX latents: the model's chunks (2 latent frames, 3 first "
                "for an odd count) define its output"
            )
        return self.model.schedule(clip.n_frames)

    def check_memory(self, clip: Clip, options: DecodeOptions = DecodeOptions()) -> None:
        schedule = self.model.schedule(clip.n_frames)
        whole = self.chunk_bytes(clip.grid, max(schedule), keeps=len(schedule) > 1)
        if options.tile is None:
            try:
                check_fits_in_memory(whole, f"a chunk of {_grid(clip)}", self.device)
            except InputError as error:
                error.hint = self.memory_hint(options)
                raise
            return
        # tiled: a tile (and its border) on the device; two whole activations in host memory
        rows, cols = (min(size, count + 2) for size, count in zip(self.tile_latents(options), clip.grid, strict=True))
        tile = f"a tile of {rows * self.config.factor}x{cols * self.config.factor} pixels"
        check_fits_in_memory(self.chunk_bytes((rows, cols), max(schedule), len(schedule) > 1), tile, self.device)
        check_fits_in_memory(2 * whole // LIVE_ACTIVATIONS, f"a tiled chunk of {_grid(clip)}", torch.device("cpu"))

    def conform(self, clip: Clip, options: DecodeOptions) -> tuple[Clip, DecodeOptions]:
        """Latents in the VAE's own layout, channels first (C, F, h, w), become (F, C, h, w).

        What `vae._encode` returns, and the CogVideoX fine-tuning scripts save as video_latents/*.pt,
        is twice the channels (2C, F, h, w): the mean and the log-variance of the latent
        distribution, not multiplied by scaling_factor. Those decode from the mean, unscaled, as a
        training step would before adding its noise."""
        channels, shape = self.config.latent_channels, clip.array.shape
        if clip.is_latents and shape[:2] == (2 * channels, channels) and len(clip.stored_shape) == 4:
            raise InputError(
                f"{clip.path}: latents {tuple(shape)} read two ways: {shape[0]} frames of {channels} channels "
                f"(F, C, h, w), or the mean and log-variance of {shape[1]} frames (2C, F, h, w) that vae._encode "
                f"returns; save a pipeline's with its batch axis, (1, F, C, h, w), or the mean alone"
            )
        if not clip.is_latents or shape[1] == channels or shape[0] not in (channels, 2 * channels):
            return clip, options
        array = np.array(clip.array) if isinstance(clip.array, StoredArray) else clip.array  # a few MB of latents
        latents = array.swapaxes(0, 1)[:, :channels]  # numpy and torch alike
        if shape[0] == 2 * channels:
            options = replace(options, unscaled=True)
        return replace(clip, array=latents), options

    def memory_hint(self, options: DecodeOptions) -> str:
        # the chunks are the model's: only tiles make them smaller
        if options.tile is None:
            return "tile=256 decodes each chunk in tiles, to the same pixels"
        return "try a smaller tile=..."

    def check(self, clip: Clip, options: DecodeOptions) -> None:
        if not clip.is_latents:
            raise InputError(
                f"{clip.path}: CogVideoX decodes latents, (F, C, h, w) or (1, F, C, h, w) floats; "
                "these are integer codes"
            )
        if self.config.scaling_factor is None and not options.unscaled:
            raise InputError(UNKNOWN_SCALE)
        codes_io.check_fits(clip, self.config.latent_channels, None)
        if options.snap:
            raise InputError("snap=True needs a codebook, and CogVideoX has none")
        if options.per_clip:
            raise InputError("per_clip=True is for Emu3 codes; CogVideoX latents are one clip")

    def chunk_bytes(self, grid: tuple[int, int], latent_frames: int, keeps: bool = False) -> int:
        """The memory one chunk of `latent_frames` needs at its peak; `keeps`: it keeps a causal
        past for a next chunk (see footprint.chunk_bytes)."""
        return chunk_bytes(self.config, grid, latent_frames, self.dtype, keeps)

    def stream(self, blocks: Iterable[torch.Tensor], options: DecodeOptions) -> Iterator[torch.Tensor]:
        def chunks() -> Iterator[torch.Tensor]:
            for latents in blocks:  # (t, C, h, w) as in the file -> (1, C, t, h, w) as the decoder takes them
                latents = latents.movedim(0, 1)[None]
                yield latents if options.unscaled else self.model.unscale(latents)

        tile = None if options.tile is None else self.tile_latents(options)
        for frames in self.model.decode_stream(chunks(), tile=tile):
            yield frames[0].movedim(1, 0)  # (1, 3, T, H, W) -> (T, 3, H, W)


class Emu3Video(Family):
    """Emu3: codes (T, h, w) are one clip's T latent frames, decoded a chunk at a time with each
    causal convolution's past carried, into 4T frames; with `per_clip` each latent frame is a
    clip of its own (what BAAI's autoencode.py encodes a video into). The images of a token
    stream decode each on its own, to frame 0 of its clip, as Emu3's image decoding does; so does
    a file of one latent frame (h, w) read as an image. Pixels are truncated, as Emu3's processor
    makes them (`Emu3.to_pixels`)."""

    def independent(self, clip: Clip) -> bool:
        return clip.images

    def output_frames(self, clip: Clip) -> int:
        return clip.n_frames if clip.images else self.model.output_frames(clip.n_frames)

    def conform(self, clip: Clip, options: DecodeOptions) -> tuple[Clip, DecodeOptions]:
        """A file of one frame (h, w) holds an image, as Emu3VQVAE.decode takes 3-d codes."""
        if len(clip.stored_shape) == 2 and not clip.is_latents:
            clip = replace(clip, images=True)
        return clip, replace(options, images=clip.images)

    def decoding(self, clip: Clip) -> str:
        if clip.images:
            return f"{clip.n_frames} image(s), each frame 0 of its clip"
        return (
            f"one clip of {clip.n_frames} latent frame(s), as Emu3VQVAE.decode takes (1, T, h, w); codes that "
            "BAAI's autoencode.py made are a clip per latent frame: decode those with per_clip=True"
        )

    def chunk_sizes(self, clip: Clip, chunk: int | None) -> list[int]:
        if clip.images:
            chunk = chunk or 1
            return [min(chunk, clip.n_frames - start) for start in range(0, clip.n_frames, chunk)]
        return self.model.schedule(clip.n_frames, chunk) if chunk else self.model.schedule(clip.n_frames)

    @cached_property
    def weight_bytes(self) -> int:
        return sum(parameter.nbytes for parameter in self.model.parameters())

    def check_memory(self, clip: Clip, options: DecodeOptions = DecodeOptions()) -> None:
        if options.tile is not None:
            raise InputError("tile=... is for 2D MoVQ and CogVideoX models; Emu3 decodes whole frames")
        # the 2D decoder takes an image, or a stream's frames_per_call frames, at a time; a chunk's frames wait
        frames = (
            1 if clip.images else self.config.temporal_downsample_factor * max(self.chunk_sizes(clip, options.chunk))
        )
        per_call = 1 if clip.images else min(frames, frames_per_call(clip.grid))
        rows, cols = self.frame_size(clip.grid)
        waiting = frames * self.config.out_ch * rows * cols * self.dtype.itemsize
        activations = per_call * frame_bytes(self.config.decoder_2d, clip.grid, self.dtype, self.device)
        whole = call_bytes(activations, self.weight_bytes)
        check_fits_in_memory(whole + waiting, f"a frame of {_grid(clip)}", self.device)

    def check(self, clip: Clip, options: DecodeOptions) -> None:
        if clip.is_latents:
            raise InputError(f"{clip.path}: Emu3 decodes integer codes, (T, h, w) or (h, w); these are latents")
        codes_io.check_fits(clip, self.config.embed_dim, self.config.codebook_size)
        if options.snap:
            raise InputError("snap=True is for a 2D MoVQ's latents; Emu3 decodes codes")
        if options.unscaled:
            raise InputError("unscaled=True is for CogVideoX latents; Emu3 decodes codes")

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.to_pixels(images)

    def stream(self, blocks: Iterable[torch.Tensor], options: DecodeOptions) -> Iterator[torch.Tensor]:
        if options.images:
            for codes in blocks:
                yield self.model.decode_image(codes)
            return
        clip = (codes[None] for codes in blocks)  # (t, h, w) -> (1, t, h, w): one clip, chunk by chunk
        for frames in self.model.decode_stream(clip, independent=options.per_clip):
            yield frames[0].transpose(0, 1)  # (1, 3, 4t, H, W) -> (4t, 3, H, W)


def family_of(model: torch.nn.Module) -> Family:
    """The family of a loaded model, as the pipeline sees it."""
    from movq_cli import families  # which knows this module's classes

    return families.of_model(model).decoding(model)


def _grid(clip: Clip) -> str:
    kind = "latents" if clip.is_latents else "codes"
    return f"{clip.grid[0]}x{clip.grid[1]} {kind}"


def selected_numbers(n_frames: int, frames: slice | Sequence[int]) -> list[int]:
    """The output frame numbers a selection picks out of `n_frames` (InputError when none, or out of range)."""
    every = range(n_frames)
    if isinstance(frames, slice):
        numbers = list(every[frames])
    else:
        try:
            numbers = [every[i] for i in frames]
        except IndexError:
            raise InputError(f"a frame number is outside the {n_frames} frame(s) of the output") from None
    if not numbers:
        raise InputError(f"the frame selection picks none of the {n_frames} frame(s) of the output")
    return numbers
