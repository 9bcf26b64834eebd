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

The largest layer, times MARGIN, plus half the weights (oneDNN reorders a convolution's weights
for the shape it is given) and OVERHEAD, is the estimate. The margin covers what the walk does not
see: freed activations of 32 MiB or less stay in the allocator's heap, where the next ones do not
always fit. benchmarks/bench_large_frames.py measures the estimate against the peak resident
memory of real decodes (benchmarks/results-large-frames-cpu-epyc-2026-12-06.txt: 1.02x to 1.47x
of the measured peak, over frames of 256 to 1024 pixels, the Kandinsky 2.2 layout and the bundled
model).
"""

from __future__ import annotations

import torch

from movq_cli.models.attention import builds_matrix
from movq_cli.models.config import MovqConfig

MARGIN = 1.4
OVERHEAD = 8 << 20
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


def layer_peaks(config: MovqConfig, grid: tuple[int, int], device: torch.device, dtype: torch.dtype) -> list[int]:
    """Values held at the peak of each layer of the 2D decoder, for one frame of `grid` codes."""
    widths = config.widths
    positions = grid[0] * grid[1]
    top = widths[-1]
    peaks = [positions * (config.z_channels + top), positions * resblock(top, top)]
    if config.mid_attn:
        peaks.append(attention(top, positions, device, dtype))
    for level in reversed(range(len(widths))):
        width = widths[level]
        c_in = widths[min(level + 1, len(widths) - 1)]
        for j in range(config.num_res_blocks + 1):
            peaks.append(positions * resblock(c_in if j == 0 else width, width))
            if level in config.attn_levels:
                peaks.append(attention(width, positions, device, dtype))
        if level != 0:
            peaks.append(positions * upsample(width))
            positions *= 4
    peaks.append(positions * (2 * widths[0] + config.out_ch))
    return peaks


def frame_bytes(
    config: MovqConfig, grid: tuple[int, int], dtype: torch.dtype, device: torch.device = CPU, weight_bytes: int = 0
) -> int:
    """The peak memory one frame of `grid` codes needs while it decodes, beyond the model's
    `weight_bytes` of weights themselves."""
    walked = max(layer_peaks(config, grid, device, dtype)) * dtype.itemsize
    return int(MARGIN * walked) + weight_bytes // 2 + OVERHEAD
