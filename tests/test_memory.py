"""keep_freed_memory (a public helper the CLI does not call): freed large blocks stay with the process."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from movq_cli import memory

# Resident memory from /proc, in the system's own page size, around allocating and freeing 64 MiB
# (over glibc's default 32 MiB threshold for mapping a block afresh).
SCRIPT = """
import os, sys, torch
from movq_cli.memory import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = resident()
block = torch.ones(64 << 20, dtype=torch.uint8)
del block
print((resident() - before) >> 20)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc on Linux only")
def test_a_freed_large_block_stays_with_the_process_only_when_asked():
    def kept_mib(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
        return int(done.stdout.strip())

    assert kept_mib("default") < 16  # unmapped on free
    assert kept_mib("keep") >= 60  # kept in the heap for the next frame


def test_without_glibc_it_changes_nothing(monkeypatch):
    def no_library(*args, **kwargs):
        raise AssertionError("loaded a C library")

    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(memory.ctypes, "CDLL", no_library)
    memory.keep_freed_memory()
