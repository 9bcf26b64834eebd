"""Ctrl-C and SIGTERM on a real `movq decode` process: exit 130, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import suppress

import numpy as np
import pytest

LONG = 100_000  # frames of 16x16 pixels


def _written(out) -> bool:
    """Whether the output's temporary file has bytes in it."""
    for partial in out.glob(".long.mp4.*.partial"):
        with suppress(FileNotFoundError):
            if partial.stat().st_size > 0:
                return True
    return False


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_mp4_leaves_nothing_and_exits_130(signum, small_folder, tmp_path):
    # decoding all of it would take minutes (~130 frames/s on 2 cores): the signal lands long before
    np.save(tmp_path / "long.npy", np.random.default_rng(0).integers(0, 64, (LONG, 8, 8), dtype=np.int16))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "movq_cli", "decode", tmp_path / "long.npy", out / "long.mp4"]
    process = subprocess.Popen(
        [str(part) for part in command] + ["-w", str(small_folder[0]), "--chunk", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not _written(out):  # frames have reached ffmpeg, which has begun the output
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        os.killpg(process.pid, signum)  # the whole process group, as a terminal's Ctrl-C does
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not out.exists()  # nothing partial, nor the folder made for the output
