"""Emu3 decode speed and memory: movq against transformers' Emu3VQVAE.decode, side by side in one run.

    python benchmarks/bench_emu3.py            # the full set (about 50 minutes on 2 cores):
        # images of 8x8 and 32x32 codes; clips of T = 2 at 8x8, 16x16 and 32x32 codes;
        # memory at 8x8 and 16x16 codes, T = 2, 4, 8 and 16
    python benchmarks/bench_emu3.py --only speed --image-grids 16 --video-grids 16 --video-frames 2 4
    python benchmarks/bench_emu3.py --quick    # images 16x16, video 8x8 T = 2, memory 8x8 T = 2 and 16, 2 rounds
    python benchmarks/bench_emu3.py --smoke    # the released structure at an eighth of its width: checks the script

Both sides decode the same weights and codes: the released decoder (width 256, random weights
scaled to keep activations near 1, as the tests make them) built as a transformers Emu3VQVAE, and
movq's model built from its state dict renamed to native names (`transformers_to_native`), as a
checkpoint loads. Both run fp32 on the same threads in this process, each case warmed up once on
both sides, then decoded in alternating rounds; medians over rounds are compared.

movq decodes through the public API, `movq_cli.decode_frames(codes, model)`, which reads the
codes, streams them and yields uint8 frames on the host: an image is codes (h, w) (the 2D
decoder runs on frame 0 only), a video codes (T, h, w) (the clip streamed, each causal
convolution carrying its past). transformers decodes with `Emu3VQVAE.decode` (codes (1, h, w),
frame 0 of 4 decoded frames kept; codes (1, T, h, w), the clip whole) and its frames are turned
into uint8 as Emu3's processor does (`Emu3.to_pixels`, the same function movq uses).

Reports: 1. seconds per image and the ratio; 2. seconds per output frame of a video and the
ratio; 3. peak memory (VmHWM, less the resident memory before the decode) against T, each decode
in a fresh process; 4. movq bf16 against movq fp32: speed ratio and PSNR of the uint8 pixels,
for an image and a video. Every speed case also reports the largest difference between movq's and
transformers' uint8 pixels. Needs the test extra (transformers).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import movq_cli
from movq_cli.checkpoints import emu3 as checkpoint
from movq_cli.checkpoints.building import build
from movq_cli.models.emu3 import Emu3

CODEBOOK = 32768
SMOKE = dict(base_channels=32, hidden_size=128, codebook_size=64)  # --smoke: the released structure, 8x narrower


def cpu_name() -> str:
    """The CPU's model name, and whether it has AMX (bf16 matrix units), which changes bf16 speed."""
    info = Path("/proc/cpuinfo").read_text()
    found = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    amx = "AMX" if re.search(r"^flags\s*:.*\bamx_bf16\b", info, re.M) else "no AMX"
    return f"{found.group(1) if found else platform.machine()} ({amx})"


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter and buffer random, at scales that keep activations near 1: kernels by
    1/sqrt(fan in), norm scales near 1, shifts, biases and BatchNorm statistics away from 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in chain(model.named_parameters(), model.named_buffers()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif name.startswith("quantize."):
                tensor.copy_(noise)
            elif tensor.ndim >= 2:
                tensor.copy_(noise / math.sqrt(tensor[0].numel()))
            elif name.endswith(".weight"):
                tensor.copy_(1 + 0.1 * noise)
            else:
                tensor.copy_(0.1 * noise)


def reference(structure: dict, state: dict | None = None):
    """transformers' Emu3VQVAE without its encoder (decoding never reads it): random, or `state`."""
    from transformers import Emu3VQVAE, Emu3VQVAEConfig

    with torch.device("meta"):
        model = Emu3VQVAE(Emu3VQVAEConfig(**structure))
    model.encoder = model.quant_conv = None
    model.to_empty(device="cpu")
    if state is None:
        randomize(model)
    else:
        model.load_state_dict(state)
    return model.eval()


def movq_model(state: dict, dtype: torch.dtype = torch.float32) -> Emu3:
    native = checkpoint.transformers_to_native(state)
    config = checkpoint.infer_config({name: tuple(tensor.shape) for name, tensor in native.items()})
    return build(config, {name: tensor.to(dtype) for name, tensor in native.items()})


def make_codes(shape: tuple[int, ...], codebook: int) -> torch.Tensor:
    return torch.randint(0, codebook, shape, generator=torch.Generator().manual_seed(sum(shape)))


def movq_pixels(model: Emu3, codes: torch.Tensor) -> np.ndarray:
    """Codes (h, w) or (T, h, w) -> uint8 frames (n, H, W, 3), through the public API."""
    return np.stack(list(movq_cli.decode_frames(codes, model)))


def reference_pixels(model, codes: torch.Tensor) -> np.ndarray:
    """Codes (h, w) or (T, h, w) -> uint8 frames (n, H, W, 3), by Emu3VQVAE.decode."""
    with torch.no_grad():
        out = model.decode(codes[None])  # (1, 3, H, W) for an image, (1, 4T, 3, H, W) for a clip
    return Emu3.to_pixels(out.flatten(0, -4)).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255**2 / max(mse, 1e-10))


def timed_rounds(sides: dict[str, Callable[[], np.ndarray]], rounds: int) -> tuple[dict, dict]:
    """Each side once to warm up (its pixels kept), then `rounds` alternating rounds: median seconds, pixels."""
    pixels = {name: decode() for name, decode in sides.items()}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, decode in sides.items():
            start = time.perf_counter()
            decode()
            seconds[name].append(time.perf_counter() - start)
    for name, times in seconds.items():
        print(f"  {name}: {', '.join(f'{t:.2f}' for t in times)} s", file=sys.stderr, flush=True)
    return {name: statistics.median(times) for name, times in seconds.items()}, pixels


def speed(title: str, codes: torch.Tensor, ref, models: dict[str, Emu3], rounds: int) -> None:
    """One case: transformers, movq fp32 and movq bf16 on `codes`, per output frame."""
    sides = {"transformers": lambda: reference_pixels(ref, codes)}
    sides |= {name: (lambda model=model: movq_pixels(model, codes)) for name, model in models.items()}
    median, pixels = timed_rounds(sides, rounds)
    frames = len(pixels["transformers"])
    per = {name: seconds / frames for name, seconds in median.items()}
    difference = np.abs(pixels["movq fp32"].astype(int) - pixels["transformers"].astype(int)).max()
    print(
        f"{title}  transformers fp32 {per['transformers']:7.3f} s/frame  movq fp32 {per['movq fp32']:7.3f} s/frame  "
        f"{per['transformers'] / per['movq fp32']:5.2f}x  (uint8 max|diff| {difference})",
        flush=True,
    )
    print(
        f"{title}  movq bf16 {per['movq bf16']:7.3f} s/frame: {per['movq fp32'] / per['movq bf16']:5.2f}x movq fp32, "
        f"{per['transformers'] / per['movq bf16']:5.2f}x transformers; PSNR vs movq fp32 "
        f"{psnr(pixels['movq bf16'], pixels['movq fp32']):.1f} dB",
        flush=True,
    )


def resident_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def memory_job(side: str, weights: Path, frames: int, grid: int, codebook: int) -> dict:
    """In a fresh process: the peak resident memory of one decode of (T, g, g) codes, less what was resident before."""
    state = load_file(weights)
    model = movq_model(state) if side == "movq" else reference(STRUCTURE, state)
    del state
    codes = make_codes((frames, grid, grid), codebook)
    decode = movq_pixels if side == "movq" else reference_pixels
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on
    before = resident_kib("VmRSS")
    decode(model, codes)
    return {"peak_mib": (resident_kib("VmHWM") - before) / 1024}


def memory(weights: Path, frames: list[int], grid: int, codebook: int, smoke: bool) -> None:
    peaks: dict[str, dict[int, float]] = {"movq": {}, "transformers": {}}
    for length in frames:
        for side in peaks:
            command = [sys.executable, __file__, "--job", side, str(weights), str(length), str(grid), str(codebook)]
            command += ["--smoke"] if smoke else []
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"the {side} job for T={length} failed:\n{done.stderr[-3000:]}")
            peaks[side][length] = json.loads(done.stdout.splitlines()[-1])["peak_mib"]
        movq, ref = peaks["movq"][length], peaks["transformers"][length]
        print(
            f"memory  T={length:<3d} -> {4 * length:3d} frames {8 * grid}x{8 * grid}  transformers {ref:6.0f} MiB  "
            f"movq {movq:6.0f} MiB  ({movq / ref:.2f}x)",
            flush=True,
        )
    first, last = frames[0], frames[-1]
    print(
        f"memory  T={last} / T={first}: movq {peaks['movq'][last] / peaks['movq'][first]:.2f}x, "
        f"transformers {peaks['transformers'][last] / peaks['transformers'][first]:.2f}x"
    )


STRUCTURE: dict = {}  # the released decoder; --smoke sets SMOKE


def main() -> None:
    global STRUCTURE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="images 16x16, video 8x8 T = 2, memory T = 2 and 16, 2 rounds"
    )
    parser.add_argument("--smoke", action="store_true", help="an 8x narrower model, tiny sizes, one round")
    parser.add_argument("--image-grids", type=int, nargs="+", help="codes per side of the images (32; quick 16)")
    parser.add_argument("--video-grids", type=int, nargs="+", help="codes per side of the videos (8 16 32; quick 8)")
    parser.add_argument("--video-frames", type=int, nargs="+", help="latent frames T of the videos (2)")
    parser.add_argument("--memory-grids", type=int, nargs="+", help="codes per side of the memory runs (8 16; quick 8)")
    parser.add_argument("--memory-frames", type=int, nargs="+", help="latent frames T of the memory runs (2 4 8 16)")
    parser.add_argument("--rounds", type=int, help="timed rounds per case after the warm-up (3; quick 2; smoke 1)")
    parser.add_argument(
        "--only", choices=("speed", "memory"), help="run only the speed cases (1, 2, 4) or the memory runs (3)"
    )
    parser.add_argument("--job", nargs=5, help=argparse.SUPPRESS)  # side weights T grid codebook: one memory run
    args = parser.parse_args()
    STRUCTURE = SMOKE if args.smoke else {}
    if args.job:
        side, weights, frames, grid, codebook = args.job
        print(json.dumps(memory_job(side, Path(weights), int(frames), int(grid), int(codebook))))
        return
    quick, smoke = args.quick, args.smoke
    image_grids = args.image_grids or ([4] if smoke else [16] if quick else [8, 32])
    video_grids = args.video_grids or ([4] if smoke else [8] if quick else [8, 16, 32])
    video_frames = args.video_frames or [2]
    memory_grids = args.memory_grids or ([4] if smoke else [8] if quick else [8, 16])
    memory_frames = args.memory_frames or ([2, 4] if smoke else [2, 16] if quick else [2, 4, 8, 16])
    rounds = args.rounds or (1 if smoke else 2 if quick else 3)
    codebook = SMOKE["codebook_size"] if smoke else CODEBOOK

    print(
        f"# python benchmarks/bench_emu3.py {' '.join(sys.argv[1:])}".rstrip()
        + f"; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_name()}"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads (both sides); "
        f"{'Emu3 decoder at 1/8 width' if smoke else 'released Emu3 decoder (ch 256)'}, random weights; "
        f"medians of {rounds} alternating rounds after a warm-up of each side",
        flush=True,
    )
    ref = reference(STRUCTURE)
    state = ref.state_dict()
    models = {"movq fp32": movq_model(state), "movq bf16": movq_model(state, torch.bfloat16)}
    for grid in image_grids if args.only != "memory" else ():
        speed(
            f"image {8 * grid}x{8 * grid} ({grid}x{grid} codes)",
            make_codes((grid, grid), codebook),
            ref,
            models,
            rounds,
        )
    for grid in video_grids if args.only != "memory" else ():
        for frames in video_frames:
            title = f"video T={frames} -> {4 * frames} frames {8 * grid}x{8 * grid} ({grid}x{grid} codes)"
            speed(title, make_codes((frames, grid, grid), codebook), ref, models, rounds)
    del models, ref
    if args.only == "speed":
        return
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "transformers.safetensors"
        save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(weights))
        del state
        for grid in memory_grids:
            memory(weights, memory_frames, grid, codebook, smoke)


if __name__ == "__main__":
    main()
