"""Whether work fits in memory: refuse absurd sizes before any work starts."""

from __future__ import annotations

import os

import torch

from movq_cli.config import MovqConfig
from movq_cli.device import frame_bytes
from movq_cli.errors import InputError


def gib(size: int) -> str:
    return f"{size / (1 << 30):.1f} GiB"


def host_memory() -> int | None:
    """Physical memory of this machine in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def device_memory(device: torch.device) -> int | None:
    """Memory a decode may use on `device`: free memory on CUDA, physical memory elsewhere."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    return host_memory()


def check_frame_fits(config: MovqConfig, grid: tuple[int, int], device: torch.device, dtype: torch.dtype) -> None:
    """Raise InputError when decoding one frame of `grid` codes would need more memory than `device` has."""
    needed, memory = frame_bytes(config, grid, dtype), device_memory(device)
    if memory is not None and needed > memory:
        raise InputError(
            f"a frame of {grid[0]}x{grid[1]} codes needs about {gib(needed)} to decode and {device} has {gib(memory)}"
        )
