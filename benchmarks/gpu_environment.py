"""What the GPU check runs with, printed before its first step; exit 1 where it is not what the check needs.

    python3 benchmarks/gpu_environment.py cuda SITE   # on the GPU machine: a CUDA device must be there
    python3 benchmarks/gpu_environment.py cpu SITE    # the rehearsal

SITE is the folder the carried wheels were installed into. movq must come from this working tree,
the carried packages from SITE, and the carried ffmpeg must run; the versions of what the machine
already had are printed for the record.
"""

from __future__ import annotations

import importlib
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRIED = ("diffusers", "imageio_ffmpeg")  # benchmarks/gpu_wheels.sh
# what movq, its tests and the benchmarks use of what the machine has (distribution names)
THERE = (
    "numpy",
    "safetensors",
    "huggingface-hub",
    "typer",
    "rich",
    "imageio",
    "pillow",
    "scikit-image",
    "pytest",
    "hypothesis",
)


def main() -> int:
    device, site = sys.argv[1], Path(sys.argv[2]).resolve()
    import torch

    problems = []
    print(
        f"python {platform.python_version()} ({sys.executable}), torch {torch.__version__}, CUDA {torch.version.cuda}"
    )
    if device == "cuda":
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_properties(0)
            print(f"{gpu.name}: {gpu.total_memory / 2**30:.1f} GiB, {gpu.multi_processor_count} multiprocessors, "
                  f"compute capability {gpu.major}.{gpu.minor}")  # fmt: skip
        else:
            problems.append(f"torch {torch.__version__} sees no CUDA device")
    for name, home in (("movq_cli", ROOT / "movq_cli"), *((name, site) for name in CARRIED)):
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            problems.append(f"{name} does not import: {error}")
            continue
        folder = Path(module.__file__).resolve().parent
        print(f"{name} {getattr(module, '__version__', '?')} from {folder}")
        if not folder.is_relative_to(home):
            problems.append(f"{name} comes from {folder}, not from {home}")
    versions = []
    for name in THERE:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed")
    print("already there: " + ", ".join(versions))
    if "imageio_ffmpeg" in sys.modules:
        ffmpeg = subprocess.run(
            [sys.modules["imageio_ffmpeg"].get_ffmpeg_exe(), "-version"], capture_output=True, text=True
        )
        print(ffmpeg.stdout.splitlines()[0] if ffmpeg.returncode == 0 else f"ffmpeg fails: {ffmpeg.stderr.strip()}")
        if ffmpeg.returncode:
            problems.append("the carried ffmpeg does not run")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
