"""Keeping freed memory in glibc's heap, as the README says to ask for it: from the environment."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# Resident memory from /proc, in the system's own page size, around allocating and freeing 64 MiB
# (over glibc's default 32 MiB threshold for mapping a block afresh).
SCRIPT = """
import os, torch
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = resident()
block = torch.ones(64 << 20, dtype=torch.uint8)
del block
print((resident() - before) >> 20)
"""
KEEP = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"}  # the README's settings


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc on Linux only")
def test_a_freed_large_block_stays_with_the_process_only_when_asked():
    def kept_mib(settings: dict[str, str]) -> int:
        environment = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
        environment.pop("GLIBC_TUNABLES", None)
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, env=environment | settings
        )
        return int(done.stdout.strip())

    assert kept_mib({}) < 16  # unmapped on free
    assert kept_mib(KEEP) >= 60  # kept in the heap for the next frame
