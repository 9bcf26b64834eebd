#!/usr/bin/env bash
# The GPU check, on the GPU machine as it is: no network, its own python3 (3.12) with torch
# (2.11, CUDA 13) and most of what movq needs already installed. What it lacks (diffusers,
# imageio-ffmpeg) travels as wheels that benchmarks/gpu_wheels.sh downloads here into .gpu-wheels/;
# they are installed without an index into a folder in /tmp, and movq runs from this working tree
# (both on PYTHONPATH). Nothing is fetched: huggingface_hub and pip are told to stay offline too.
#
# Steps, each under its own timeout, all of them within BUDGET seconds (460, under 8 minutes):
#   tests         the CUDA tests (pytest -k cuda)
#   decode        the short benchmark table: the Kandinsky 2.2 layout at 256x256 and 512x512 in
#                 fp32, bf16 and fp16 against diffusers with device memory, the CLI to MP4, whole
#                 `movq decode` processes against a diffusers script
#   cogvideox     CogVideoX-2b's structure at 480x720, 49 frames, against diffusers, whole and tiled
#   large-frames  large frames and tiling (benchmarks/bench_large_frames.py; in a rehearsal one
#                 small size), with what the budget leaves
# Everything goes to $OUT/log.txt as it runs, and each step's output to $OUT/STEP.txt, so a step
# that times out leaves the earlier ones; the last lines (also $OUT/summary.txt) say how each ended.
#
#     bash benchmarks/gpu_wheels.sh              # here, once: the wheels, to send with the tree
#     bash benchmarks/gpu_check.sh               # on the GPU machine
#     bash benchmarks/gpu_check.sh --rehearse    # the same steps on the CPU at small sizes;
#                                                # benchmarks/gpu_rehearsal.sh runs it as that machine would
# OUT (default /tmp/movq-gpu-check), WHEELS (default .gpu-wheels) and BUDGET may be set.
set -uo pipefail
case "${1:-}" in
    "") rehearse=0 device=cuda ;;
    --rehearse) rehearse=1 device=cpu ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--rehearse]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.." || exit 2
root=$PWD
out=${OUT:-/tmp/movq-gpu-check}
wheels=${WHEELS:-$root/.gpu-wheels}
budget=${BUDGET:-460}
mkdir -p "$out" || exit 2
log=$out/log.txt
: >"$log"
site=$(mktemp -d /tmp/movq-carried.XXXXXX) || exit 2
trap 'rm -rf "$site"' EXIT

export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH=$root:$site${PYTHONPATH:+:$PYTHONPATH}

summary=()
small=
failures=0

say() {
    echo "$*" | tee -a "$log"
}

ended() {  # ended STEP HOW [failed]
    summary+=("$(printf '%-13s %s' "$1" "$2")")
    [ "${3:-}" = failed ] && failures=$((failures + 1))
    say "-- $1: $2"
}

step() {  # step NAME SECONDS COMMAND...: COMMAND under its own timeout, cut to what the budget leaves
    local name=$1 limit=$2
    shift 2
    local left=$((budget - SECONDS - 15))
    if ((left < 20)); then
        ended "$name" "not run: the check's $budget s are spent" failed
        return 1
    fi
    ((limit > left)) && limit=$left
    say "== $name, at most $limit s, at $SECONDS s: $*"
    local began=$SECONDS keep=$out/$name.txt
    [[ $name = install || $name = environment ]] && keep=/dev/null  # in the log only: the GPU machine returns 8 files of $OUT
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log" "$keep"
    local status=${PIPESTATUS[0]}
    local took=$((SECONDS - began))
    if ((status == 0)); then
        ended "$name" "passed in $took s"
    elif ((took >= limit)) && ((status == 124 || status == 137)); then
        ended "$name" "timed out after $took s (limit $limit s)" failed
    else
        ended "$name" "failed with exit $status after $took s" failed
    fi
    return "$status"
}

finish() {
    say ""
    say "GPU check$( ((rehearse)) && echo ", rehearsal on the CPU"), $(date -u '+%Y-%m-%d %H:%M UTC'), $SECONDS s:"
    printf '%s\n' "${summary[@]}" | tee "$out/summary.txt" | tee -a "$log"
    exit $((failures > 0))
}

say "movq GPU check$( ((rehearse)) && echo ", rehearsal on the CPU"): $(git log -1 --format='%h %s' 2>/dev/null)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$log"
if ! compgen -G "$wheels/*.whl" >/dev/null; then
    say "no wheels in $wheels: run bash benchmarks/gpu_wheels.sh first and send .gpu-wheels with the tree"
    exit 2
fi
step install 60 python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl ||
    finish
step environment 60 python3 benchmarks/gpu_environment.py "$device" "$site" || finish

step tests 90 python3 -m pytest -q -rs -p no:cacheprovider -k cuda tests

if ((rehearse)); then
    step decode 210 python3 benchmarks/bench_decode.py --device cpu --smoke --table
else
    step decode 210 python3 benchmarks/bench_decode.py --device cuda --quick --sizes 256,512 --table
fi

if ((rehearse)); then  # half widths, 32x48-pixel frames, F = 3 (9 frames) and 1
    step cogvideox 200 python3 benchmarks/bench_cogvideox.py --device cpu --height 4 --width 6 --frames 3 --short 1 \
        --rounds 1
else  # the released 2b structure at 480x720, F = 13 (49 frames) and 1
    step cogvideox 200 python3 benchmarks/bench_cogvideox.py --device cuda --released --height 60 --width 90 \
        --frames 13 --short 1 --rounds 1
fi

large=(python3 benchmarks/bench_large_frames.py --device "$device")
if ((rehearse)); then  # one small frame size and a small tiled frame: the paths, not the figures
    large+=(--quick --sizes 256 --tile-frame 256)
fi
step large-frames 90 "${large[@]}"
finish
