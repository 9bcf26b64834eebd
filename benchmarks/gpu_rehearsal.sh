#!/usr/bin/env bash
# The GPU check rehearsed on a CPU machine as the GPU machine would run it, so that the script is
# known to work before it meets a GPU: a fresh virtualenv stands in for that machine's python3
# (Python 3.12, torch 2.11.0, its CUDA 13 build, which runs on the CPU too; the machine's versions
# of numpy, safetensors and huggingface-hub; none of diffusers, imageio-ffmpeg, importlib-metadata
# or ray), benchmarks/gpu_wheels.sh downloads the wheels, and then benchmarks/gpu_check.sh
# --rehearse runs in a network namespace of its own, with no network at all (where unshare is
# allowed; elsewhere offline only by the check's own settings).
#
#     bash benchmarks/gpu_rehearsal.sh      # about 4 minutes; VENV=FOLDER (default /tmp/movq-gpu-rehearsal)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-/tmp/movq-gpu-rehearsal}
machine=(torch==2.11.0 numpy==2.5.2 safetensors==0.8.0 huggingface-hub==1.33.0
    typer rich imageio pillow scikit-image pytest hypothesis psutil filelock regex requests)

python312=
for candidate in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
        python312=$candidate
        break
    fi
done
[ -n "$python312" ] || { echo "the rehearsal needs Python 3.12, as on the GPU machine" >&2; exit 2; }

rm -rf "$venv"
"$python312" -m venv "$venv"
"$venv/bin/python3" -m pip install --quiet "${machine[@]}"
"$venv/bin/python3" - <<'EOF'
import importlib.util
import sys

import torch

carried = [name for name in ("diffusers", "imageio_ffmpeg", "importlib_metadata", "ray") if importlib.util.find_spec(name)]
if carried:
    sys.exit(f"the stand-in for the GPU machine has {', '.join(carried)}: the check must do without it or bring its wheel")
print(f"stand-in for the GPU machine: Python {sys.version.split()[0]}, torch {torch.__version__}")
EOF

bash benchmarks/gpu_wheels.sh

offline=()
if unshare --net true 2>/dev/null; then
    offline=(unshare --net)
else
    echo "unshare --net is not allowed here: offline only through HF_HUB_OFFLINE and pip --no-index"
fi
"${offline[@]}" env PATH="$venv/bin:$PATH" bash benchmarks/gpu_check.sh --rehearse
