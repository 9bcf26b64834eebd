"""The GPU check's script stops before its first measurement when the machine is not what it needs,
and says how each step ended (benchmarks/gpu_rehearsal.sh runs it whole)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils' timeout"
)


def check(tmp_path: Path, wheels: Path, *args: str) -> subprocess.CompletedProcess:
    """benchmarks/gpu_check.sh with this interpreter as its python3, writing to tmp_path/out."""
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "WHEELS": str(wheels),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    script = ROOT / "benchmarks" / "gpu_check.sh"
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, cwd=tmp_path)


def placeholder_wheel(folder: Path) -> None:
    """The smallest wheel pip installs: one empty package, carried in place of the real ones."""
    folder.mkdir()
    files = {
        "placeholder/__init__.py": "",
        "placeholder-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: placeholder\nVersion: 1.0\n",
        "placeholder-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files["placeholder-1.0.dist-info/RECORD"] = "".join(
        f"{name},,\n" for name in [*files, "placeholder-1.0.dist-info/RECORD"]
    )
    with zipfile.ZipFile(folder / "placeholder-1.0-py3-none-any.whl", "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)


def test_an_unknown_option_is_a_usage_error(tmp_path):
    done = check(tmp_path, tmp_path, "--cpu")
    assert done.returncode == 2
    assert done.stderr.strip() == "usage: bash benchmarks/gpu_check.sh [--rehearse]"
    assert not (tmp_path / "out").exists()


def test_without_the_wheels_the_check_says_how_to_get_them_and_runs_nothing(tmp_path):
    done = check(tmp_path, tmp_path / "no-wheels")
    assert done.returncode == 2
    assert f"no wheels in {tmp_path / 'no-wheels'}: run bash benchmarks/gpu_wheels.sh first" in done.stdout
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["log.txt"]


@pytest.mark.slow
def test_a_machine_unlike_the_one_the_check_needs_stops_it_before_the_first_measurement(tmp_path):
    """The carried wheel installs; the environment step then finds diffusers and imageio-ffmpeg
    missing from what was carried (and, on a machine without one, no CUDA device), and nothing
    after it runs."""
    placeholder_wheel(tmp_path / "wheels")
    done = check(tmp_path, tmp_path / "wheels")
    assert done.returncode == 1, done.stdout + done.stderr
    out = tmp_path / "out"
    summary = (out / "summary.txt").read_text().splitlines()
    assert [line.split()[:2] for line in summary] == [["install", "passed"], ["environment", "failed"]]
    assert "failed with exit 1" in summary[1]
    log = (out / "log.txt").read_text()
    assert "error: diffusers " in log and "error: imageio_ffmpeg " in log
    assert "== tests" not in log and "== decode" not in log
    assert sorted(path.name for path in out.iterdir()) == ["log.txt", "summary.txt"]
