"""Whether work fits in memory: refuse absurd sizes before any work starts."""

from __future__ import annotations

import ctypes
import os
import platform
import sys

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


def keep_freed_memory() -> None:
    """Let glibc's malloc hand freed memory back to the next large tensor (Linux with glibc).

    By default glibc maps every block over 32 MiB afresh and unmaps it on free, so each large
    activation of each frame pays zero-filled page faults again: on 2 cores, decoding a
    256x256 Kandinsky frame was ~1.5x faster with this call. The price is memory: the heap
    keeps what it grew to and fragments, and a 96-frame clip peaked 1.3-1.4x higher than a
    6-frame one (against ~1.0x without), so the CLI does not call it; long-running scripts
    that decode large frames may. Elsewhere than Linux with glibc this does nothing.
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)  # the largest int: never give the heap's top back
