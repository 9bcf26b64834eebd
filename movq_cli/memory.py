"""Whether work fits in memory: refuse absurd sizes before any work starts."""

from __future__ import annotations

import os

import torch

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


def check_fits_in_memory(needed: int, what: str, device: torch.device) -> None:
    """Raise InputError when decoding `what` ("a frame of 32x32 codes") needs more than `device` has."""
    memory = device_memory(device)
    if memory is not None and needed > memory:
        raise InputError(f"{what} needs about {gib(needed)} to decode and {device} has {gib(memory)}")
