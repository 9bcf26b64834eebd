"""The memory a decode needs at its peak, walked layer by layer from what each kernel holds.

Each layer's peak is the activations alive while it runs, counted as the code makes them:

- a ResBlock holds its input x, the norm's output (modulated and activated in place) and the
  convolution's output; then x, that output, the second norm's output and the second
  convolution's: max(2 c_in + c_out, c_in + 3 c_out) values per position;
- an upsampling convolution (fastconv.UpsampleConv3x3) holds its input, the input padded, the
  four phases (as large as the output) and the output;
- an attention holds x, the norm's output, q, k, v and its output, and, where the kernel
  `scaled_dot_product_attention` picks builds the matrix, one block of it (attention.py);
- the last convolution holds its input, the norm's output and the three output channels.

A CogVideoX chunk is walked the same way (chunk_peaks): its norms write into the next
convolution's input padded by two past frames, and a chunk that a next one follows keeps two
input frames of every causal convolution.

The largest layer, times MARGIN, plus a quarter of the weights, OVERHEAD and HEAP, is the
estimate. The walk does not see what the allocator and oneDNN keep aside: freed activations of
32 MiB or less stay in the allocator's heap, where the next ones do not always fit (HEAP), and
oneDNN reorders weights and keeps workspaces (OVERHEAD); at small frames this varies from run
to run (46 to 95 MiB for a 256x256 frame of the bundled model). benchmarks/bench_large_frames.py
measures the estimate against the peak resident memory of real decodes (benchmarks/results-
large-frames-cpu-epyc-2026-12-06.txt: 1.29x to 1.46x of the measured peak over frames of 512 to
2048 pixels, the Kandinsky 2.2 layout and the bundled model, 1.38x and 1.58x at 256 pixels where
the fixed terms weigh most; 1.39x for a 128x128 CogVideoX-2b chunk, 2.09x for a 64x64 one).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from movq_cli.models.attention import builds_matrix
from movq_cli.models.config import CogVideoXConfig, MovqConfig

MARGIN = 1.4
OVERHEAD = 32 << 20
# glibc serves allocations of up to 32 MiB (its largest mmap threshold) from its heap and keeps
# what is freed there mapped, for later allocations that do not always fit in the holes: a
# small frame's peak resident memory rises above its live tensors by up to this much (the
# bundled model at 256x256: peaks of 46 to 95 MiB from run to run, for 34 MiB of live activations).
HEAP = 32 << 20
CPU = torch.device("cpu")


def resblock(c_in: int, c_out: int) -> int:
    """Values per position a ResBlock holds at its peak."""
    return max(2 * c_in + c_out, c_in + 3 * c_out)


def upsample(channels: int) -> int:
    """Values per input position an upsampling convolution holds (its output has 4 per position)."""
    return channels * (2 + 4 + 4)


def attention(channels: int, positions: int, device: torch.device, dtype: torch.dtype) -> int:
    """Values an attention over `positions` holds, with one block of the matrix where it is built."""
    matrix = 2 * min(channels, positions) * positions if builds_matrix(device, dtype, channels) else 0
    return 6 * channels * positions + matrix


def layers(config: MovqConfig) -> Iterator[tuple[str, int, int, int]]:
    """The 2D decoder's layers in order: (kind, input channels, output channels, positions per
    latent at the layer's input)."""
    widths = config.widths
    top, scale = widths[-1], 4 ** (len(widths) - 1)
    yield "conv", config.z_channels, top, 1
    yield "resblock", top, top, 1
    if config.mid_attn:
        yield "attention", top, top, 1
    yield "resblock", top, top, 1
    for level in reversed(range(len(widths))):
        width = widths[level]
        positions = 4 ** (len(widths) - 1 - level)
        for j in range(config.num_res_blocks + 1):
            yield "resblock", widths[min(level + 1, len(widths) - 1)] if j == 0 else width, width, positions
            if level in config.attn_levels:
                yield "attention", width, width, positions
        if level != 0:
            yield "upsample", width, width, positions
    yield "conv_out", widths[0], config.out_ch, scale


def held(kind: str, c_in: int, c_out: int) -> int:
    """Values per input position a layer holds at its peak, run whole (attention: but its matrix)."""
    if kind == "resblock":
        return resblock(c_in, c_out)
    if kind == "upsample":
        return upsample(c_in)
    if kind == "attention":
        return 6 * c_in
    return 2 * c_in + c_out


def stored(kind: str, c_in: int, c_out: int) -> int:
    """Values per input position a tiled decode keeps whole in its store during a layer: the
    input and the output, and in a ResBlock its input, its first convolution's and its output."""
    if kind == "resblock":
        return c_in + 2 * c_out
    if kind == "upsample":
        return 5 * c_in
    return c_in + c_out


def layer_peaks(config: MovqConfig, grid: tuple[int, int], device: torch.device, dtype: torch.dtype) -> list[int]:
    """Values held at the peak of each layer of the 2D decoder, for one frame of `grid` codes."""
    latents = grid[0] * grid[1]
    peaks = []
    for kind, c_in, c_out, scale in layers(config):
        if kind == "attention":
            peaks.append(attention(c_in, latents * scale, device, dtype))
        else:
            peaks.append(latents * scale * held(kind, c_in, c_out))
    return peaks


def tiled_peaks(
    config: MovqConfig, grid: tuple[int, int], tile: tuple[int, int], device: torch.device, dtype: torch.dtype
) -> list[tuple[int, int]]:
    """(values in the store, values on the device) at the peak of each layer of a tiled decode of
    a frame of `grid` codes in tiles of `tile` latents: a tile and its border at a time on the
    device, but an attention over the whole frame."""
    latents = grid[0] * grid[1]
    bordered = math.prod(min(size, count + 2) for size, count in zip(tile, grid, strict=True))
    peaks = []
    for kind, c_in, c_out, scale in layers(config):
        store = latents * scale * stored(kind, c_in, c_out)
        if kind == "attention":
            peaks.append((store, attention(c_in, latents * scale, device, dtype)))
        else:
            peaks.append((store, bordered * scale * held(kind, c_in, c_out)))
    return peaks


def frame_bytes(config: MovqConfig, grid: tuple[int, int], dtype: torch.dtype, device: torch.device = CPU) -> int:
    """The activation memory one frame of `grid` codes needs at its peak (a chunk of n frames: n times it)."""
    return int(MARGIN * max(layer_peaks(config, grid, device, dtype)) * dtype.itemsize)


def call_bytes(activations: int, weight_bytes: int) -> int:
    """The peak memory of one decoder call whose activations need `activations` bytes, beyond
    the model's `weight_bytes` of weights themselves: what torch keeps aside besides, and what
    the C allocator's heap holds beyond the live tensors."""
    return activations + weight_bytes // 4 + OVERHEAD + HEAP


def largest_activation(config: MovqConfig, grid: tuple[int, int]) -> int:
    """Values of the largest activation of the 2D decoder (the upsampled input of level 0's first ResBlock)."""
    widths = config.widths
    return max(width * grid[0] * grid[1] * 4 ** (len(widths) - 1 - level) for level, width in enumerate(widths))


def tiled_bytes(
    config: MovqConfig,
    grid: tuple[int, int],
    tile: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device = CPU,
    weight_bytes: int = 0,
) -> tuple[int, int]:
    """(host bytes, device bytes) that decoding a frame of `grid` codes in tiles of `tile` latents
    needs at its peak; on the CPU, where both are one memory, the host bytes are the whole need."""
    peaks = tiled_peaks(config, grid, tile, device, dtype)
    if device.type == "cpu":
        return call_bytes(int(MARGIN * max(map(sum, peaks)) * dtype.itemsize), weight_bytes), 0
    host = int(MARGIN * max(store for store, _ in peaks) * dtype.itemsize)
    return host, call_bytes(int(MARGIN * max(tile for _, tile in peaks) * dtype.itemsize), weight_bytes)


def video_resblock(c_in: int, c_out: int, frames: int) -> int:
    """Values per position (of one frame) a CogVideoX ResBlock holds at its peak, over `frames`
    frames: x, its norm's output padded by two past frames and the convolution's output; then x,
    that output, the second norm's padded output and the second convolution's."""
    first = c_in * frames + c_in * (frames + 2) + c_out * frames
    second = c_in * frames + c_out * frames + c_out * (frames + 2) + c_out * frames
    return max(first, second)


def chunk_peaks(config: CogVideoXConfig, grid: tuple[int, int], latent_frames: int, keeps: bool = True) -> list[int]:
    """Values held at the peak of each layer of the CogVideoX decoder, for one chunk of
    `latent_frames` latent frames of `grid` latents decoded whole; with `keeps` (a chunk that a
    next one follows), also the two input frames each causal convolution keeps for the next chunk.

    Each norm's scale and shift (SpatialNorm3D.scale_shift) are made at latent resolution: four
    values per channel and frame of the latents, which count at the lowest resolution only.
    """
    widths = tuple(reversed(config.block_out_channels))  # decode order: lowest resolution first
    frames, area, latent_area = latent_frames, grid[0] * grid[1], grid[0] * grid[1]
    kept = 0  # the past frames kept so far
    peaks = [area * (config.latent_channels * (frames + 2) + widths[0] * frames)]  # conv_in
    kept += keeps * 2 * config.latent_channels * area

    def resblock(c_in: int, c_out: int) -> int:
        nonlocal kept
        kept += keeps * 2 * (c_in + c_out) * area
        return area * video_resblock(c_in, c_out, frames) + 4 * max(c_in, c_out) * frames * latent_area + kept

    peaks += [resblock(widths[0], widths[0]) for _ in range(2)]  # the middle block
    for level, width in enumerate(widths):
        for j in range(config.layers_per_block + 1):
            peaks.append(resblock(widths[max(level - 1, 0)] if j == 0 else width, width))
        if level == len(widths) - 1:
            break
        # per frame: the input, the input padded, four phases and the output (fastconv.UpsampleConv3x3);
        # doubling time, the frames' outputs are then copied into the doubled chunk
        doubled = frames if level >= config.time_doublings or frames == 1 else 2 * frames - frames % 2
        peaks.append(area * width * max(upsample(1) * frames, frames + 4 * frames + 4 * doubled) + kept)
        frames, area = doubled, 4 * area
    kept += keeps * 2 * widths[-1] * area
    peaks.append(area * (widths[-1] * (2 * frames + 2) + config.out_channels * frames) + kept)  # norm_out, conv_out
    return peaks


def chunk_bytes(
    config: CogVideoXConfig, grid: tuple[int, int], latent_frames: int, dtype: torch.dtype, keeps: bool = True
) -> int:
    """The memory one CogVideoX chunk of `latent_frames` latent frames of `grid` latents needs at
    its peak, decoded whole, beyond its weights (`keeps`: see chunk_peaks): the largest layer
    times MARGIN, and what torch keeps aside besides (call_bytes)."""
    return call_bytes(int(MARGIN * max(chunk_peaks(config, grid, latent_frames, keeps)) * dtype.itemsize), 0)
