"""The process keeps freed memory for the next large tensor instead of mapping fresh pages."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

SCRIPT = """
import sys, torch
from movq_cli.memory import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
before = resident()
block = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, over glibc's 32 MiB mmap limit
del block
print((resident() - before) >> 20)
"""


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc on Linux only")
def test_a_freed_large_block_stays_with_the_process_only_when_asked():
    def kept_mib(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
        return int(done.stdout.strip())

    assert kept_mib("default") < 16  # unmapped on free
    assert kept_mib("keep") >= 60  # kept in the heap for the next frame
