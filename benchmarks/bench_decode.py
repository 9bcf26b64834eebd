"""Decode speed and memory: movq against diffusers' VQModel, side by side in one run.

    python benchmarks/bench_decode.py                 # CPU, the full set (about 15 minutes on 2 cores)
    python benchmarks/bench_decode.py --quick         # fewer rounds, 256x256 only
    python benchmarks/bench_decode.py --device cuda   # the same on a GPU (adds fp16)

Same weights and codes for both sides; decodes alternate between them for several rounds and
the medians are compared. Needs the test extra (diffusers). Reports, per case: seconds per
frame for each, frames/s ratio, FLOPs per frame of the plain computation (diffusers' decode,
counted by torch.utils.flop_counter) and the FLOPs movq actually executes, the effective
GFLOP/s (plain FLOPs per second) and its fraction of this machine's 3x3-convolution
throughput at the model's widths, measured in the same run; above 100% means that movq does
fewer multiplications than direct convolution. On the CPU in fp32, movq without Winograd is
timed in the same rounds. Then the whole CLI (to MP4 and to PNGs) against in-process
decoding, alternating, and the peak memory of a 6-frame and a 96-frame clip.
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from movq_cli.checkpoints import weights
from movq_cli.checkpoints.bundled import default_weights
from movq_cli.models.config import MovqConfig, preset
from movq_cli.models.fastconv import use_winograd
from movq_cli.pipeline import to_pixels

ROOT = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def kandinsky_pair(device: torch.device):
    """A random diffusers VQModel in the Kandinsky 2.2 layout, and movq loaded from its folder."""
    from diffusers import VQModel

    torch.manual_seed(0)
    reference = VQModel(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
        up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
        block_out_channels=(128, 256, 256, 512), layers_per_block=2, latent_channels=4,
        num_vq_embeddings=16384, vq_embed_dim=4, norm_type="spatial",
    ).eval()  # fmt: skip
    folder = Path(tempfile.mkdtemp()) / "movq"
    reference.save_pretrained(folder)
    model = weights.load(folder, device)
    assert model.config == MovqConfig(**{**preset("kandinsky-2.2").__dict__})
    return reference.to(device), model


def flops_per_frame(decode, zq: torch.Tensor) -> float:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        decode(zq[:1])
    return counter.get_total_flops()


def conv_throughput(config: MovqConfig, grid: int, device: torch.device, dtype: torch.dtype, rounds: int) -> float:
    """GFLOP/s of bare 3x3 convolutions at the decoder's widths and resolutions (channels_last)."""
    flops, seconds = 0.0, 0.0
    for level, width in enumerate(config.widths):
        side = grid * 2**level
        x = torch.randn(1, width, side, side, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(width, width, 3, padding=1).to(device, dtype).to(memory_format=torch.channels_last)
        with torch.inference_mode():
            conv(x)
            times = [timed(lambda conv=conv, x=x: conv(x), device) for _ in range(rounds)]
        flops += 2 * width * width * 9 * side * side
        seconds += statistics.median(times)
    return flops / seconds / 1e9


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (to_pixels(a).float() - to_pixels(b).float()).pow(2).mean().item()
    return 10 * math.log10(255**2 / max(mse, 1e-10))


def compare(name, model, reference, codes, device, dtype, rounds, conv_gflops, baseline_fp32):
    """One line: movq in `dtype` against diffusers in fp32, on the same codes."""
    zq = model.quantize.lookup(codes).float()
    fast = copy.deepcopy(model).to(dtype)  # a copy: casting in place would round the fp32 weights
    ablate = device.type == "cpu" and dtype == torch.float32
    if ablate:
        direct = copy.deepcopy(model)
        use_winograd(direct, False)
    with torch.inference_mode():
        fast(zq[:1].to(dtype))  # warm-up
        reference.decode(zq[:1], force_not_quantize=True)
        ours, theirs, without = [], [], []
        for _ in range(rounds):
            ours.append(timed(lambda: fast(zq.to(dtype)), device))
            theirs.append(timed(lambda: reference.decode(zq, force_not_quantize=True), device))
            if ablate:
                without.append(timed(lambda: direct(zq), device))
        out = fast(zq.to(dtype)).float()
        plain_out = direct(zq) if ablate else None
        expected = baseline_fp32 if baseline_fp32 is not None else reference.decode(zq, force_not_quantize=True).sample
    frames = len(codes)
    ours_s, theirs_s = statistics.median(ours) / frames, statistics.median(theirs) / frames
    plain_flops = flops_per_frame(lambda z: reference.decode(z, force_not_quantize=True), zq)
    executed = flops_per_frame(fast, zq.to(dtype))
    effective = plain_flops / ours_s / 1e9
    accuracy = f"max|diff| {(out - expected).abs().max().item():.1e}" if dtype == torch.float32 else \
        f"PSNR vs fp32 {psnr(out, expected):.1f} dB"  # fmt: skip
    print(
        f"{name:<28} {str(dtype).split('.')[-1]:<9} movq {ours_s:7.3f} s/frame  diffusers-fp32 {theirs_s:7.3f} s/frame  "
        f"ratio {theirs_s / ours_s:5.2f}x  {plain_flops / 1e9:6.1f} GFLOP/frame (movq executes {executed / 1e9:.1f})  "
        f"{effective:6.1f} effective GFLOP/s  {effective / conv_gflops:4.0%} of conv peak  {accuracy}",
        flush=True,
    )
    if ablate:
        without_s = statistics.median(without) / frames
        print(
            f"{'':<28} {'':<9} movq without Winograd {without_s:7.3f} s/frame  "
            f"ratio {theirs_s / without_s:5.2f}x  (Winograd: {without_s / ours_s:.2f}x, "
            f"max|diff| to it {(out - plain_out).abs().max().item():.1e})",
            flush=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 rounds, 256x256 only, no memory runs")
    args = parser.parse_args()
    device = torch.device(args.device)
    rounds = 3 if args.quick else args.rounds
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if device.type == "cuda" else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}", flush=True)

    reference, model = kandinsky_pair(device)
    for grid in (32,) if args.quick else (32, 64):
        codes = torch.randint(0, 16384, (1, grid, grid), generator=torch.Generator().manual_seed(grid)).to(device)
        for dtype in dtypes:
            peak = conv_throughput(model.config, grid, device, dtype, rounds)
            print(f"3x3 conv throughput at Kandinsky widths, {grid * 8}px, {dtype}: {peak:.1f} GFLOP/s", flush=True)
            baseline = None if dtype == torch.float32 else model(model.quantize.lookup(codes).float())
            compare(f"kandinsky-2.2 {grid * 8}x{grid * 8}", model, reference, codes, device, dtype, rounds, peak,
                    baseline)  # fmt: skip
    del reference, model
    default_model_and_cli(device, dtypes, rounds, quick=args.quick)
    if not args.quick:
        peak_memory(device)


def default_model_and_cli(device: torch.device, dtypes, rounds: int, quick: bool) -> None:
    model = weights.load(default_weights(), device)
    clip = np.load(ROOT / "examples" / "coffee_pan_zoom.npy")
    codes = torch.from_numpy(clip[:4].astype(np.int64)).to(device)
    with torch.inference_mode():
        fp32 = model.decode_codes(codes)
    for dtype in dtypes:
        fast = copy.deepcopy(model).to(dtype)
        with torch.inference_mode():
            fast.decode_codes(codes[:1])
            times = [timed(lambda fast=fast: fast.decode_codes(codes), device) for _ in range(rounds)]
            out = fast.decode_codes(codes).float()
        with torch.inference_mode():
            flops = flops_per_frame(model, model.quantize.lookup(codes))  # as executed
        per_frame = statistics.median(times) / len(codes)
        print(f"default model 256x256 {str(dtype).split('.')[-1]:<9} {per_frame:.3f} s/frame  {flops / 1e9:.1f} executed GFLOP/frame  "
              f"{flops / per_frame / 1e9:.1f} GFLOP/s  PSNR vs fp32 {psnr(out, fp32):.1f} dB (real photo codes)", flush=True)  # fmt: skip

    # the whole CLI against in-process decoding of the same clip, alternating so that the
    # machine's drift does not favour either side
    frames = 24 if quick else 64
    outputs = ("clip.mp4", "frames")
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "clip.npy", clip[:frames])
        chunks = torch.from_numpy(clip[:frames].astype(np.int64)).to(device).split(8)
        inprocess, cli = [], {out: [] for out in outputs}
        for _ in range(max(rounds, 3)):
            with torch.inference_mode():
                inprocess.append(
                    frames / timed(lambda: [to_pixels(model.decode_codes(c)).cpu() for c in chunks], device)
                )
            for out in outputs:
                done = subprocess.run(
                    [sys.executable, "-m", "movq_cli", "decode", str(Path(tmp) / "clip.npy"), str(Path(tmp) / out),
                     "--overwrite", "--chunk", "8", "--device", str(device)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                cli[out].append(float(re.search(r"\(([\d.]+) frames/s\)", done.stderr).group(1)))
        rate = statistics.median(inprocess)
        print(f"in-process decode to uint8, {frames} frames: {rate:.2f} frames/s", flush=True)
        for out in outputs:
            print(
                f"movq decode -> {out:<9} {statistics.median(cli[out]):.2f} frames/s  "
                f"({statistics.median(cli[out]) / rate:.2f}x in-process)",
                flush=True,
            )


def peak_memory(device: torch.device) -> None:
    """Peak resident memory of `movq decode` to MP4 (auto chunk) for a 6-frame and a 96-frame clip.

    Read from VmHWM in /proc/self/status: unlike ru_maxrss, it is not inherited from this
    (large) benchmark process through fork."""
    clip = np.load(ROOT / "examples" / "coffee_pan_zoom.npy")
    script = (
        "import re, sys; from movq_cli.cli import app\n"
        "try: app(sys.argv[1:], prog_name='movq')\n"
        "except SystemExit as e: assert not e.code, e.code\n"
        "print(re.search(r'VmHWM:\\s*(\\d+) kB', open('/proc/self/status').read()).group(1))"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for count in (6, 96):
            np.save(Path(tmp) / f"c{count}.npy", np.resize(clip, (count, *clip.shape[1:])))
            peaks = []
            for _ in range(3):  # the peak depends on thread timing: medians of three
                done = subprocess.run(
                    [sys.executable, "-c", script, "decode", str(Path(tmp) / f"c{count}.npy"),
                     str(Path(tmp) / f"m{count}.mp4"), "--quiet", "--overwrite", "--device", str(device)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                peaks.append(int(done.stdout.split()[-1]) / 1024)
            print(
                f"peak memory (VmHWM), {count:>2}-frame clip to MP4: {statistics.median(peaks):.0f} MiB "
                f"(median of {', '.join(f'{p:.0f}' for p in peaks)})",
                flush=True,
            )


if __name__ == "__main__":
    main()
