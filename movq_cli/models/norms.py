"""GroupNorm on channels-last float32 CPU tensors, as an affine map for SpatialNorm to fold in.

PyTorch's CPU GroupNorm kernel for channels-last input sums each channel over the whole frame
one value after another in float32, so on large frames whose activations have a large mean its
statistics drift: 4e-4 on a 512x512 frame of mean 5, 7e-3 on one of mean 30. Here each channel
is summed in blocks of BLOCK positions in float32 and the block sums are added in float64: the
error stays near float32 rounding.

Once its statistics are known, a GroupNorm is an affine map per channel, x * a + b, so it is
returned as that map: SpatialNorm folds it into its own scale and shift, which it computes at
latent resolution anyway, and goes over the frame once instead of twice (normalize, then
modulate). The CogVideoX decoder uses it: a 16x24-latent decode moves from 3.0e-4 to 4.6e-5
of diffusers, for about 3% of its time. The 2D decoder keeps the kernel, which on 4-d tensors
is twice as fast as these sums. The plain paths keep nn.GroupNorm.
"""

from __future__ import annotations

import torch
from torch import nn

# Positions summed in float32 before the sums go to float64: smaller is more precise, larger
# faster (128: the variance within 1.4e-6 at a mean of 15 standard deviations, in 25 ms for
# 128 channels of 8x128x192, where GroupNorm's own kernel takes 32 ms and drifts by 7e-3).
BLOCK = 128


def folds(x: torch.Tensor) -> bool:
    """Whether `affine` serves x: float32, channels-last, on the CPU, outside autograd and compilation."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled():
        return False
    if torch.compiler.is_compiling():
        return False
    layout = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    return layout is not None and x.is_contiguous(memory_format=layout)


def affine(norm: nn.GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b), each (B, C) float32, with norm(x) == x * a + b channel by channel (x as `folds` takes it)."""
    batch, channels = x.shape[:2]
    blocks = _blocks(x)
    sums = blocks.sum(2).double().sum(1)
    squares = torch.linalg.vector_norm(blocks, dim=2).double().square().sum(1)
    groups = norm.num_groups
    count = x[0].numel() // groups
    mean = sums.view(batch, groups, -1).sum(-1) / count
    variance = (squares.view(batch, groups, -1).sum(-1) / count - mean**2).clamp_min(0)
    return group_affine(norm, mean, variance)


def group_affine(norm: nn.GroupNorm, mean: torch.Tensor, variance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b), each (B, C) float32, with norm(x) == x * a + b, for an x whose groups have `mean`
    and `variance` (B, groups), float64: however they were gathered (whole, or tile by tile)."""
    per_group = norm.num_channels // norm.num_groups
    rstd = torch.rsqrt(variance + norm.eps).repeat_interleave(per_group, 1)
    scale = rstd * norm.weight.double()
    return scale.float(), (norm.bias.double() - mean.repeat_interleave(per_group, 1) * scale).float()


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """x (B, C, ...) channels-last -> a view (B, n, L, C) of its positions in n blocks of L <= BLOCK."""
    batch, channels = x.shape[:2]
    positions = x[0, 0].numel()
    length = next(n for n in range(min(BLOCK, positions), 0, -1) if positions % n == 0)
    if length < BLOCK // 4:  # few divisors: a row of the frame per block
        length = x.shape[-1]
    return x.movedim(1, -1).reshape(batch, -1, length, channels)  # memory order: no copy
