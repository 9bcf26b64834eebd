"""Choosing the device, the compute dtype and the chunk size."""

from __future__ import annotations

import re

import torch

from movq_cli.errors import InputError
from movq_cli.models.config import MovqConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BUDGET_BYTES = 512 << 20  # activations one chunk may use on the CPU: larger chunks are no faster there
MAX_CHUNK = 64


def resolve_device(name: str) -> torch.device:
    """'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' -> a usable torch.device (InputError if not)."""
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise InputError("--device mps: Apple MPS is not available on this machine")
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise InputError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise InputError(f"unknown --dtype {name!r}; use {', '.join(DTYPES)}")
    return DTYPES[name]


def frame_bytes(config: MovqConfig, grid: tuple[int, int], dtype: torch.dtype) -> int:
    """A generous estimate of the activation memory one frame needs while decoding."""
    rows, cols = grid
    itemsize = dtype.itemsize
    largest = max(
        width * rows * cols * 4 ** (len(config.widths) - 1 - level) for level, width in enumerate(config.widths)
    )
    attention = (rows * cols) ** 2 if (config.attn_levels or config.mid_attn) else 0
    return (4 * largest + attention) * itemsize


def auto_chunk(config: MovqConfig, grid: tuple[int, int], device: torch.device, dtype: torch.dtype) -> int:
    """Frames per chunk: as many as fit in half the free device memory (512 MiB on the CPU)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 2
    else:
        budget = CPU_BUDGET_BYTES
    return max(1, min(MAX_CHUNK, budget // frame_bytes(config, grid, dtype)))
