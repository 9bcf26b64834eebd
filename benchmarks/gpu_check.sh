#!/usr/bin/env bash
# The GPU check, on a fresh CUDA machine with nothing but pip's index to reach: a virtualenv with
# PyPI's default (CUDA) build of torch and movq with its test extra, the tests that need CUDA,
# then a short benchmark ending in one table: the Kandinsky 2.2 layout at 256x256 and 512x512 in
# fp32, bf16 and fp16 against diffusers with the device memory of each decode, the CLI to MP4 in
# frames/s, and whole `movq decode` processes against a plain diffusers script. About 5 minutes.
# With COGVIDEOX=1, then CogVideoX-2b's structure at 480x720 (13 latent frames -> 49 frames),
# movq against diffusers, whole and tiled, with peak CUDA memory: a few minutes more.
#
#     bash benchmarks/gpu_check.sh        # the virtualenv goes to /tmp/movq-gpu (VENV=... to choose)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-/tmp/movq-gpu}
results=benchmarks/results-cuda-$(date -u +%Y-%m-%d).txt

python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch  # PyPI's Linux wheel is the CUDA build
python -m pip install --quiet -e ".[test]"
python -c 'import torch; assert torch.cuda.is_available(), f"torch {torch.__version__} sees no CUDA device"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")'

tests=0
timeout 150 python -m pytest -q -p no:cacheprovider -k cuda || tests=$?
timeout 360 python benchmarks/bench_decode.py --device cuda --quick --sizes 256,512 --table | tee "$results"
if [ "${COGVIDEOX:-0}" = 1 ]; then
    timeout 420 python benchmarks/bench_cogvideox.py --device cuda --released --height 60 --width 90 \
        --rounds 1 --short 1 | tee -a "$results"
fi
exit "$tests"
