"""Scaled dot-product attention in memory linear in the number of positions.

`F.scaled_dot_product_attention` picks a kernel by device, dtype, head size and layout. The
fused ones (flash attention, on the CPU for any head size; memory-efficient attention and cuDNN
on CUDA) never hold the (queries x keys) matrix, but the math kernel, which PyTorch falls back to
where no fused kernel takes the inputs (MPS, a strided head dimension, a GPU too old), builds it
whole: 1 GiB in float32 for a 1024x1024 Kandinsky frame (128x128 latents), 16 GiB at 2048x2048.
There the
attention is computed in blocks of queries instead. Each query's softmax spans all keys and no
other query, so the blocks give the same numbers as one call, and a block's matrix is no larger
than the attention's own input.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

FUSED = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION)


@functools.cache
def builds_matrix(device: torch.device, dtype: torch.dtype, channels: int) -> bool:
    """Whether the kernel `scaled_dot_product_attention` picks for one head of `channels` (rows of
    contiguous channels) on `device` in `dtype` makes the whole (queries x keys) matrix."""
    probe = torch.zeros(1, 1, 8, channels, dtype=dtype, device=device)
    try:
        backend = SDPBackend(torch._fused_sdp_choice(probe, probe, probe))
    except (AttributeError, RuntimeError, ValueError):  # a torch without the query, or a device it does not know
        return True
    return backend not in FUSED


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(C)) v for (B, heads, N, C) rows, without the whole matrix where the
    chosen kernel would make it."""
    channels = q.shape[-1]
    if torch.compiler.is_compiling() or q.stride(-1) == 1 and not builds_matrix(q.device, q.dtype, channels):
        return F.scaled_dot_product_attention(q, k, v)
    return blocked_attention(q, k, v, block=channels)


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int) -> torch.Tensor:
    """scaled_dot_product_attention(q, k, v), `block` queries at a time: the matrix of one block,
    (block x N), is the largest thing it makes."""
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    for start in range(0, q.shape[-2], block):
        rows = slice(start, start + block)
        out[..., rows, :] = F.scaled_dot_product_attention(q[..., rows, :], k, v)
    return out
