"""The bundled model is found from a regular (non-editable) install, not only from the source tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_installed_package_finds_its_default_weights(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    found = subprocess.run(
        [sys.executable, "-c", "from movq_cli.checkpoints.bundled import default_weights; print(default_weights())"],
        cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    path = Path(found.stdout.strip())
    assert path.is_relative_to(target) and path.name == "movq-default.safetensors"
    assert path.stat().st_size == (ROOT / "weights" / "movq-default.safetensors").stat().st_size
