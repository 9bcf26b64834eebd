"""Decode speed and memory: movq against diffusers' VQModel, side by side in one run.

    python benchmarks/bench_decode.py                 # CPU, the full set (about 25 minutes on 2 cores)
    python benchmarks/bench_decode.py --quick         # fewer rounds, 256x256 only, no clip-length runs
    python benchmarks/bench_decode.py --device cuda   # the same on a GPU (adds fp16 and device memory)
    python benchmarks/bench_decode.py --device cuda --quick --sizes 256,512 --table   # benchmarks/gpu_check.sh
    python benchmarks/bench_decode.py --smoke         # one round of each section, on a tiny model: checks the script

Same weights and codes for both sides; decodes alternate between them for several rounds and
the medians are compared. Needs the test extra (diffusers). Reports, per case: seconds per
frame for each, frames/s ratio, FLOPs per frame of the plain computation (diffusers' decode,
counted by torch.utils.flop_counter) and the FLOPs movq actually executes, the effective
GFLOP/s (plain FLOPs per second) and its fraction of this machine's 3x3-convolution
throughput at the model's widths, measured in the same run; above 100% means that movq does
fewer multiplications than direct convolution. On the CPU in fp32, movq with Winograd switched
on is timed in the same rounds. Then the whole CLI (to MP4 and to PNGs) against in-process
decoding, alternating; then whole processes as a user runs them, `movq decode` against a plain
diffusers script (load, decode, write PNGs), 1 and 3 frames, alternating, with the wall time, CPU
time and peak memory of each; and the peak memory of a 6-frame and a 96-frame clip.

`--threads N` runs both sides, in this process and in every child, on N CPU threads (on a
shared machine, other processes holding a core make every multi-threaded operator wait for it).
`--table` ends with every result as one table; `--only SECTION` runs only the sections named
(decode, cli, whole-process, clip-memory).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from movq_cli.checkpoints import reading, weights
from movq_cli.checkpoints.bundled import default_weights
from movq_cli.models.config import MovqConfig, preset
from movq_cli.models.family import to_pixels
from movq_cli.models.fastconv import use_winograd

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("decode", "cli", "whole-process", "clip-memory")  # in the order they run
TABLE: list[tuple[str, ...]] = []  # rows of print_table: case, movq, diffusers, ratio, accuracy, memory

# A plain diffusers decode, as a user writes it: codes (.npy) in, one PNG per frame out.
DIFFUSERS_SCRIPT = """\
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from diffusers import VQModel
from PIL import Image

codes, folder, out, device = sys.argv[1:5]
model = VQModel.from_pretrained(folder).to(device).eval()
indices = torch.from_numpy(np.load(codes).astype(np.int64)).to(device)
with torch.no_grad():
    zq = model.quantize.embedding(indices).permute(0, 3, 1, 2)
    images = model.decode(zq, force_not_quantize=True).sample
pixels = ((images + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
Path(out).mkdir()
for i, frame in enumerate(pixels):
    Image.fromarray(frame).save(Path(out) / f"{i:06d}.png")
"""

# Runs a script (argv[1], with its arguments) in a fresh interpreter and, at exit, writes its peak
# resident memory (VmHWM; unlike ru_maxrss, not inherited from this large process through fork)
# and its peak CUDA memory to stderr.
PEAKS = """\
import atexit, re, runpy, sys

def peaks():
    status = open('/proc/self/status').read()
    print('VmHWM', re.search(r'VmHWM:\\s*(\\d+) kB', status).group(1), file=sys.stderr)
    torch = sys.modules.get('torch')
    if torch is not None and torch.cuda.is_initialized():
        print('CUDA', torch.cuda.max_memory_reserved() // 1024, file=sys.stderr)

atexit.register(peaks)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def device_peak(fn, device: torch.device) -> float | None:
    """MiB of device memory that `fn` allocates at its peak beyond what was allocated before (CUDA only)."""
    if device.type != "cuda":
        return None
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def mib(value: float | None) -> str:
    return "" if value is None else f"{value:.0f} MiB"


def random_folder(layout: str) -> tuple[object, Path]:
    """A random diffusers VQModel, in the Kandinsky 2.2 layout or a tiny one, saved as a folder."""
    from diffusers import VQModel

    torch.manual_seed(0)
    if layout == "kandinsky-2.2":
        shape = dict(widths=(128, 256, 256, 512), layers=2, n_e=16384)
    else:
        shape = dict(widths=(32, 64), layers=1, n_e=64)
    levels = len(shape["widths"])
    reference = VQModel(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * (levels - 1) + ("AttnDownEncoderBlock2D",),
        up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * (levels - 1),
        block_out_channels=shape["widths"], layers_per_block=shape["layers"], latent_channels=4,
        num_vq_embeddings=shape["n_e"], vq_embed_dim=4, norm_type="spatial",
    ).eval()  # fmt: skip
    folder = Path(tempfile.mkdtemp()) / "movq"
    reference.save_pretrained(folder)
    return reference, folder


def model_pair(layout: str, device: torch.device):
    """The diffusers reference on `device`, movq loaded from its folder, and the folder."""
    reference, folder = random_folder(layout)
    model = weights.load(folder, device)
    if layout == "kandinsky-2.2":
        assert model.config == MovqConfig(**{**preset("kandinsky-2.2").__dict__})
    return reference.to(device), model, folder


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
        winograd = copy.deepcopy(model)
        use_winograd(winograd, True)
    with torch.inference_mode():
        fast(zq[:1].to(dtype))  # warm-up
        reference.decode(zq[:1], force_not_quantize=True)
        if ablate:
            winograd(zq[:1])
        ours, theirs, with_winograd = [], [], []
        for _ in range(rounds):
            ours.append(timed(lambda: fast(zq.to(dtype)), device))
            theirs.append(timed(lambda: reference.decode(zq, force_not_quantize=True), device))
            if ablate:
                with_winograd.append(timed(lambda: winograd(zq), device))
        out = fast(zq.to(dtype)).float()
        winograd_out = winograd(zq) if ablate else None
        expected = baseline_fp32 if baseline_fp32 is not None else reference.decode(zq, force_not_quantize=True).sample
        ours_memory = device_peak(lambda: fast(zq.to(dtype)), device)
        theirs_memory = device_peak(lambda: reference.decode(zq, force_not_quantize=True), device)
    frames = len(codes)
    ours_s, theirs_s = statistics.median(ours) / frames, statistics.median(theirs) / frames
    plain_flops = flops_per_frame(lambda z: reference.decode(z, force_not_quantize=True), zq)
    executed = flops_per_frame(fast, zq.to(dtype))
    effective = plain_flops / ours_s / 1e9
    accuracy = f"max|diff| {(out - expected).abs().max().item():.1e}" if dtype == torch.float32 else \
        f"PSNR vs fp32 {psnr(out, expected):.1f} dB"  # fmt: skip
    device_memory = f"{mib(ours_memory)} / {mib(theirs_memory)}" if device.type == "cuda" else ""
    dtype_name = str(dtype).split(".")[-1]
    print(
        f"{name:<28} {dtype_name:<9} movq {ours_s:7.3f} s/frame  diffusers-fp32 {theirs_s:7.3f} s/frame  "
        f"ratio {theirs_s / ours_s:5.2f}x  {plain_flops / 1e9:6.1f} GFLOP/frame (movq executes {executed / 1e9:.1f})  "
        f"{effective:6.1f} effective GFLOP/s  {effective / conv_gflops:4.0%} of conv peak  {accuracy}"
        + (f"  device memory for the decode, movq / diffusers: {device_memory}" if device_memory else ""),
        flush=True,
    )
    accuracy = accuracy.replace("max|diff|", "max abs diff")  # a table cell
    row(f"{name} {dtype_name}", f"{ours_s:.3f} s/frame", f"{theirs_s:.3f} s/frame (fp32)", f"{theirs_s / ours_s:.2f}x",
        accuracy, device_memory)  # fmt: skip
    if ablate:
        winograd_s = statistics.median(with_winograd) / frames
        print(
            f"{'':<28} {'':<9} movq with Winograd    {winograd_s:7.3f} s/frame  "
            f"ratio {theirs_s / winograd_s:5.2f}x  (Winograd: {ours_s / winograd_s:.2f}x, "
            f"max|diff| to it {(out - winograd_out).abs().max().item():.1e})",
            flush=True,
        )
        row(f"{name} {dtype_name}, Winograd on", f"{winograd_s:.3f} s/frame", ratio=f"{theirs_s / winograd_s:.2f}x")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 rounds, 256x256 only, no clip-length memory runs")
    parser.add_argument("--smoke", action="store_true", help="one round, tiny model: checks the script")
    parser.add_argument("--sizes", help="frame sizes in pixels, e.g. 256,512 (default: 256,512; 256 with --quick)")
    parser.add_argument("--threads", type=int, help="CPU threads for both sides, here and in child processes")
    parser.add_argument("--table", action="store_true", help="end with all results as one table")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run this section (may be repeated)")
    args = parser.parse_args()
    sections = args.only or [s for s in SECTIONS if s != "clip-memory" or not (args.quick or args.smoke)]
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by the children's torch at start-up
    rounds = 1 if args.smoke else 3 if args.quick else args.rounds
    layout = "tiny" if args.smoke else "kandinsky-2.2"
    sizes = args.sizes or ("8" if args.smoke else "256" if args.quick else "256,512")
    grids = tuple(int(size) // (2 if args.smoke else 8) for size in sizes.split(","))
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if device.type == "cuda" else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}", flush=True)

    reference, model, folder = model_pair(layout, device)
    for grid in grids if "decode" in sections else ():
        codes = torch.randint(0, model.config.n_embed, (1, grid, grid), generator=torch.Generator().manual_seed(grid))
        codes = codes.to(device)
        size = grid * model.config.factor
        for dtype in dtypes:
            peak = conv_throughput(model.config, grid, device, dtype, rounds)
            print(f"3x3 conv throughput at {layout} widths, {size}px, {dtype}: {peak:.1f} GFLOP/s", flush=True)
            baseline = None if dtype == torch.float32 else model(model.quantize.lookup(codes).float())
            compare(f"{layout} {size}x{size}", model, reference, codes, device, dtype, rounds, peak, baseline)
    del reference, model
    if "cli" in sections:
        default_model_and_cli(device, dtypes, rounds, clip_frames=4 if args.smoke else 24 if args.quick else 64)
    if "whole-process" in sections:
        whole_process(folder, device, 1 if args.smoke else max(rounds, 3), grid=grids[0])
    if "clip-memory" in sections:
        peak_memory(device)
    if args.table:
        print_table()


def default_model_and_cli(device: torch.device, dtypes, rounds: int, clip_frames: int) -> None:
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
    frames = clip_frames
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
                cli[out].append(float(re.search(r"\(([\d.]+) frames/s", done.stderr).group(1)))
        rate = statistics.median(inprocess)
        print(f"in-process decode to uint8, {frames} frames: {rate:.2f} frames/s", flush=True)
        for out in outputs:
            cli_rate = statistics.median(cli[out])
            print(f"movq decode -> {out:<9} {cli_rate:.2f} frames/s  ({cli_rate / rate:.2f}x in-process)", flush=True)
            row(
                f"default model, CLI to {out}, {frames} frames",
                f"{cli_rate:.2f} frames/s",
                ratio=f"{cli_rate / rate:.2f}x in-process",
            )


def movq_command() -> Path:
    """The installed `movq` console script, or the package's __main__ when it is not installed."""
    script = Path(sys.executable).with_name("movq")
    return script if script.exists() else ROOT / "movq_cli" / "__main__.py"


class Run(NamedTuple):
    seconds: float  # wall time
    cpu_seconds: float  # user + system time of the child, less sensitive to other processes than wall time
    peak: float  # MiB resident (VmHWM)
    cuda: float | None  # MiB of CUDA memory reserved at the peak, when the child used CUDA


def run_with_peaks(command: list[str], threads: int | None = None) -> Run:
    """Run `command` (a script and its arguments) in a fresh interpreter and measure it."""
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAKS, *command], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # children run one at a time: the difference is this one
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    cuda = re.search(r"^CUDA (\d+)$", done.stderr, re.M)
    peak = int(re.search(r"^VmHWM (\d+)$", done.stderr, re.M).group(1)) / 1024
    return Run(seconds, cpu, peak, None if cuda is None else int(cuda.group(1)) / 1024)


def read_frames(folder: Path) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(path)) for path in sorted(folder.glob("*.png"))])


def pixel_difference(a: Path, b: Path) -> str:
    """Largest difference between two folders of PNG frames, and how many of their values differ."""
    difference = np.abs(read_frames(a).astype(int) - read_frames(b).astype(int))
    return f"max {difference.max()}, {np.count_nonzero(difference)} of {difference.size} values"


def whole_process(folder: Path, device: torch.device, rounds: int, grid: int, counts=(1, 3)) -> None:
    """The job as a user runs it, in fresh processes: `movq decode CODES OUT/ -w FOLDER` against a
    plain diffusers script, codes to PNG frames, alternating; wall time and peak memory, medians."""
    config = reading.locate(folder).config
    codes = np.random.default_rng(0).integers(0, config.n_embed, (max(counts), grid, grid))
    size = grid * config.factor
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "diffusers_decode.py").write_text(DIFFUSERS_SCRIPT)
        for count in counts:
            np.save(tmp / f"codes{count}.npy", codes[:count])
            runs = {"movq": [], "diffusers": []}
            for round_ in range(rounds):
                for side, results in runs.items():
                    out = tmp / f"{side}-{count}-{round_}"
                    if side == "movq":
                        command = [str(movq_command()), "decode", str(tmp / f"codes{count}.npy"), f"{out}/",
                                   "-w", str(folder), "--device", str(device), "--quiet"]  # fmt: skip
                    else:
                        command = [str(tmp / "diffusers_decode.py"), str(tmp / f"codes{count}.npy"), str(folder),
                                   str(out), str(device)]  # fmt: skip
                    results.append(run_with_peaks(command))
            # Yardstick for "identical": diffusers against itself on one thread (a different summation order).
            one_thread = tmp / f"diffusers-{count}-one-thread"
            run_with_peaks([str(tmp / "diffusers_decode.py"), str(tmp / f"codes{count}.npy"), str(folder),
                            str(one_thread), str(device)], threads=1)  # fmt: skip
            difference = pixel_difference(tmp / f"movq-{count}-{rounds - 1}", tmp / f"diffusers-{count}-{rounds - 1}")
            yardstick = pixel_difference(one_thread, tmp / f"diffusers-{count}-{rounds - 1}")
            seconds, cpu, peak = ({side: statistics.median(getattr(r, field) for r in results) for side, results in runs.items()}
                                  for field in ("seconds", "cpu_seconds", "peak"))  # fmt: skip
            cuda = {side: results[-1].cuda for side, results in runs.items()}
            every = "; ".join(f"{side} " + ", ".join(f"{r.seconds:.1f} s/{r.peak:.0f} MiB" for r in results) for side, results in runs.items())  # fmt: skip
            device_memory = "" if cuda["movq"] is None else \
                f"  peak CUDA memory movq {mib(cuda['movq'])}, diffusers {mib(cuda['diffusers'])}"  # fmt: skip
            case = f"whole process, {count} frame(s) {size}x{size} fp32 to PNGs"
            print(
                f"{case}: movq decode {seconds['movq']:.2f} s (CPU {cpu['movq']:.2f} s) {peak['movq']:.0f} MiB, "
                f"diffusers script {seconds['diffusers']:.2f} s (CPU {cpu['diffusers']:.2f} s) {peak['diffusers']:.0f} MiB: "
                f"{seconds['diffusers'] / seconds['movq']:.2f}x as fast ({cpu['diffusers'] / cpu['movq']:.2f}x in CPU time), "
                f"{peak['movq'] / peak['diffusers']:.2f}x the memory, pixels differ by {difference} "
                f"(diffusers on 1 thread against itself: {yardstick}){device_memory} "
                f"(medians of {rounds}: {every})",
                flush=True,
            )  # fmt: skip
            memory = f"{peak['movq']:.0f} / {peak['diffusers']:.0f} MiB peak RSS"
            if cuda["movq"] is not None:
                memory += f", {mib(cuda['movq'])} / {mib(cuda['diffusers'])} peak CUDA"
            row(case, f"{seconds['movq']:.2f} s", f"{seconds['diffusers']:.2f} s",
                f"{seconds['diffusers'] / seconds['movq']:.2f}x ({cpu['diffusers'] / cpu['movq']:.2f}x CPU time)",
                f"pixels differ {difference} (diffusers 1 vs N threads: {yardstick})", memory)  # fmt: skip


def peak_memory(device: torch.device) -> None:
    """Peak resident memory of `movq decode` to MP4 (auto chunk) for a 6-frame and a 96-frame clip."""
    clip = np.load(ROOT / "examples" / "coffee_pan_zoom.npy")
    with tempfile.TemporaryDirectory() as tmp:
        for count in (6, 96):
            np.save(Path(tmp) / f"c{count}.npy", np.resize(clip, (count, *clip.shape[1:])))
            peaks = []
            for _ in range(3):  # the peak depends on thread timing: medians of three
                command = [str(movq_command()), "decode", str(Path(tmp) / f"c{count}.npy"),
                           str(Path(tmp) / f"m{count}.mp4"), "--quiet", "--overwrite", "--device", str(device)]  # fmt: skip
                peaks.append(run_with_peaks(command).peak)
            print(
                f"peak memory (VmHWM), {count:>2}-frame clip to MP4: {statistics.median(peaks):.0f} MiB "
                f"(median of {', '.join(f'{p:.0f}' for p in peaks)})",
                flush=True,
            )
            row(f"default model, {count}-frame clip to MP4", memory=f"{statistics.median(peaks):.0f} MiB peak RSS")


def row(case: str, movq: str = "", diffusers: str = "", ratio: str = "", accuracy: str = "", memory: str = "") -> None:
    TABLE.append((case, movq, diffusers, ratio, accuracy, memory))


def print_table() -> None:
    header = ("case", "movq", "diffusers", "ratio", "accuracy", "memory (movq / diffusers)")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in TABLE:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
