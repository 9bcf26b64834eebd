#!/usr/bin/env bash
# The wheels that benchmarks/gpu_check.sh needs on the GPU machine, downloaded here into the
# git-ignored .gpu-wheels/, for that machine's Python 3.12 on x86-64. That machine reaches no
# registry; its own python3 already holds torch and most of what movq, its tests and the
# benchmarks import (numpy, safetensors, huggingface-hub, typer, rich, imageio, pillow,
# scikit-image, pytest, hypothesis, filelock, regex, requests, ...). It lacks:
#
#   diffusers       the reference every comparison runs against. On Python 3.12 it needs nothing
#                   more than the machine has: huggingface-hub >= 1.32 and safetensors >= 0.8 are
#                   there, and importlib-metadata is imported only before Python 3.8.
#   imageio-ffmpeg  the ffmpeg binary that writes MP4, WebM, GIF and WebP. 0.7.0: its wheel (ffmpeg
#                   7.0.2 with libx264, libvpx-vp9 and libwebp) is 28 MiB, 0.8's is 65 MiB, more
#                   than may be sent to the GPU machine.
#
# ray is not needed: its tests skip without it. The folder goes to the GPU machine with the tree,
# and the two together must stay under 64 MiB: the last lines give both sizes.
#
#     bash benchmarks/gpu_wheels.sh        # WHEELS=FOLDER to put them elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."
folder=${WHEELS:-.gpu-wheels}
wheels=(diffusers==0.42.1 imageio-ffmpeg==0.7.0)

rm -rf "$folder"
mkdir -p "$folder"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --dest "$folder" "${wheels[@]}"

# What goes to the GPU machine: tracked files and untracked ones git does not ignore, plus the carried wheels.
git ls-files -z --cached --others --exclude-standard | python3 -c '
import sys
from pathlib import Path

folder = Path(sys.argv[1])
wheels = sorted(folder.glob("*.whl"))
for wheel in wheels:
    print(f"{wheel.stat().st_size / 2**20:6.1f} MiB  {wheel}")
carried = sum(wheel.stat().st_size for wheel in wheels)
tree = sum(path.stat().st_size for path in map(Path, sys.stdin.read().split("\0")) if path.is_file())
print(f"wheels: {len(wheels)} files, {carried / 2**20:.1f} MiB in {folder}/")
print(f"the tree with them: {(tree + carried) / 2**20:.1f} MiB of 64 MiB")
' "$folder"
