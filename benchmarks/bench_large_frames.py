"""Large frames: the memory estimate against measured peaks, the cost of 2D --tile, and CogVideoX at 480x720.

    python benchmarks/bench_large_frames.py                      # CPU: frames of 256 to 2048 pixels (long, heavy)
    python benchmarks/bench_large_frames.py --quick              # 256 and 512 pixels, no CogVideoX
    python benchmarks/bench_large_frames.py --device cuda        # the same on a GPU, with peak CUDA memory
    python benchmarks/bench_large_frames.py --only cogvideox --diffusers   # with diffusers at 480x720 (22.6 GiB)

Sections (`--only` picks some):

- estimate: for each model (the Kandinsky 2.2 layout with random weights, the bundled model; and
  with `--models cogvideox-2b` CogVideoX-2b's structure with random weights, a clip of 3 latent
  frames, one chunk of 9 frames) and frame size, one frame (chunk) decodes in a fresh process; its peak memory above what it held before the
  decode (peak resident memory on the CPU, VmHWM after resetting it; peak CUDA memory allocated on
  a GPU) against movq's estimate (models/footprint.py). The estimate must never be below the
  measured peak and at most 1.5x above it.
- tile: one Kandinsky 2.2 frame of `--tile-frame` pixels (1024; quick 512) decoded whole and with
  --tile (tiles of a quarter of the frame each way): seconds and peak memory, and whether the
  pixels are the same.
- cogvideox: CogVideoX-2b's structure with random weights at its real size, 60x90 latents
  (480x720 frames), F = 3 latent frames (9 frames), fp32: movq untiled and movq --tile (tiles of
  half the frame), each in its own process, with peak memory (VmHWM) and seconds; diffusers
  (untiled) with `--diffusers` only, since it peaks near 23 GiB. Pixels are compared with
  `--compare` (keeps the frames on disk).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from movq_cli.models.config import preset  # noqa: E402
from movq_cli.models.footprint import call_bytes, chunk_bytes, frame_bytes  # noqa: E402
from movq_cli.models.movq import Movq  # noqa: E402

SECTIONS = ("estimate", "tile", "cogvideox")
MODELS = ("kandinsky-2.2", "default", "cogvideox-2b")
VIDEO_FRAMES = 3  # latent frames of a CogVideoX clip in the estimate section: one chunk, 9 frames


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def load(name: str, device: torch.device) -> torch.nn.Module:
    if name == "cogvideox-2b":  # the released structure, random weights
        from bench_cogvideox import RELEASED

        from movq_cli.checkpoints.building import build
        from movq_cli.models.cogvideox import CogVideoX
        from movq_cli.models.config import CogVideoXConfig

        torch.manual_seed(0)
        config = CogVideoXConfig(**RELEASED)
        return build(config, CogVideoX(config).state_dict()).to(device)
    if name == "default":
        import movq_cli

        return movq_cli.load("default", device=str(device))
    from movq_cli.checkpoints.building import build

    torch.manual_seed(0)
    config = preset(name)
    return build(config, Movq(config).state_dict()).to(device)  # as a loaded checkpoint: weights channels_last


def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def reset_peak() -> None:
    """Start VmHWM again from the current resident memory (Linux's clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_resident() -> int:
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))


def frame_job(name: str, pixels: int, device: torch.device, tile: int | None, keep: Path | None) -> dict:
    """One frame of `pixels` x `pixels` in this fresh process: seconds, the peak memory above the
    memory held before (bytes) and the estimate; with `keep`, its uint8 pixels are saved there."""
    from movq_cli.models.family import DecodeOptions, family_of, to_pixels

    model = load(name, device)
    family = family_of(model)
    grid = pixels // model.config.factor
    video = name == "cogvideox-2b"
    generator = torch.Generator().manual_seed(pixels)
    if video:  # one chunk of latent frames, (t, C, h, w) as in a file
        latents = torch.randn(VIDEO_FRAMES, model.config.latent_channels, grid, grid, generator=generator)
    else:
        latents = torch.randn(1, model.config.embed_dim, grid, grid, generator=generator)
    options = DecodeOptions(tile=None if tile is None else (tile, tile), unscaled=video)
    next(family.stream([latents[..., :8, :8].to(device)], options))  # kernels and derived weights made once
    latents = latents.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = resident()
        reset_peak()
    start = time.perf_counter()
    images = to_pixels(next(family.stream([latents], options))).cpu()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        peak = peak_resident() - before
    seconds = time.perf_counter() - start
    if video:  # what Video.check_memory compares: a clip of one chunk keeps no causal past
        estimate = chunk_bytes(model.config, (grid, grid), VIDEO_FRAMES, torch.float32, keeps=False)
    else:
        weights = sum(parameter.nbytes for parameter in model.parameters())
        estimate = call_bytes(frame_bytes(model.config, (grid, grid), torch.float32, device), weights)
    if keep is not None:
        np.save(keep, images.numpy())
    return {"seconds": seconds, "peak": peak, "estimate": estimate}


def run(*arguments: str) -> dict:
    command = [sys.executable, __file__, *arguments]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def mib(size: float) -> str:
    return f"{size / 2**20:8.0f} MiB"


def estimate_section(models: list[str], sizes: list[int], device: str, rounds: int) -> None:
    print("model          frame      estimate   measured peak   estimate/peak   seconds", flush=True)
    for name in models:
        for pixels in sizes:
            jobs = [
                run("--job", "frame", "--model", name, "--pixels", str(pixels), "--device", device)
                for _ in range(rounds)
            ]
            peak = statistics.median(job["peak"] for job in jobs)
            estimate = jobs[0]["estimate"]
            seconds = statistics.median(job["seconds"] for job in jobs)
            print(
                f"{name:14} {pixels:4}x{pixels:<4} {mib(estimate)} {mib(peak)}      {estimate / peak:5.2f}x"
                f"          {seconds:7.1f}",
                flush=True,
            )


def tile_section(pixels: int, device: str) -> None:
    tile = str(pixels // 4)
    with tempfile.TemporaryDirectory() as folder:
        kept = [Path(folder) / "whole.npy", Path(folder) / "tiled.npy"]
        frame = ("--job", "frame", "--model", MODELS[0], "--pixels", str(pixels), "--device", device)
        whole = run(*frame, "--keep", str(kept[0]))
        tiled = run(*frame, "--tile", tile, "--keep", str(kept[1]))
        difference = np.abs(np.load(kept[0]).astype(int) - np.load(kept[1]).astype(int))
    print(
        f"kandinsky-2.2 {pixels}x{pixels}: whole {whole['seconds']:.1f} s, peak {mib(whole['peak'])}; "
        f"--tile {tile}: {tiled['seconds']:.1f} s ({tiled['seconds'] / whole['seconds']:.2f}x), "
        f"peak {mib(tiled['peak'])} ({tiled['peak'] / whole['peak']:.2f}x); pixels: max|diff| {difference.max()}, "
        f"{(difference > 0).mean():.4%} of values differ",
        flush=True,
    )


def cogvideox_section(
    device: str,
    latents: tuple[int, int],
    frames: int,
    tile: int,
    with_diffusers: bool,
    compare: bool,
    whole: bool = True,
) -> None:
    """CogVideoX-2b's structure (at 480x720: 60x90 latents): movq whole, movq in tiles (and
    diffusers), each in a fresh process."""
    import bench_cogvideox as video
    from safetensors.torch import save_file

    from movq_cli.checkpoints import cogvideox as checkpoint

    height, width = latents
    sides = ["movq-fp32"] * whole + ["movq-fp32-tiled"] + ["diffusers"] * with_diffusers
    with tempfile.TemporaryDirectory() as folder:
        setup = video.Setup(Path(folder), video.RELEASED, torch.device(device))
        vae = video.make_vae(video.RELEASED)
        native = checkpoint.diffusers_to_native(vae.state_dict())
        save_file({name: tensor.contiguous() for name, tensor in native.items()}, str(setup.files / "movq.safetensors"))
        vae.save_pretrained(setup.files / "diffusers")
        del vae, native
        kept = {}
        for side in sides:
            keep = setup.files / f"{side}.f32" if compare else None
            job = video.run_job(side, setup, frames, height, width, keep, tile=tile)
            kept[side] = keep
            cuda = f", CUDA peak {job['cuda_peak_mib']} MiB" if job["cuda_peak_mib"] is not None else ""
            print(
                f"CogVideoX-2b structure, {8 * height}x{8 * width}, F={frames} -> {job['frames']} frames, fp32, {side}: "
                f"{job['seconds']:.0f} s, peak {job['peak_mib']} MiB ({job['peak_mib'] / 1024:.1f} GiB){cuda}",
                flush=True,
            )
        if compare:
            whole = video.read_frames(kept[sides[0]], video.RELEASED, frames, 8 * height, 8 * width)
            for side in sides[1:]:
                other = video.read_frames(kept[side], video.RELEASED, frames, 8 * height, 8 * width)
                pixels = (video.to_pixels(other).int() - video.to_pixels(whole).int()).abs().max().item()
                print(
                    f"{side} against movq-fp32: max|diff| {(other - whole).abs().max().item():.1e}, pixels within {pixels}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--quick", action="store_true", help="256 and 512 pixels, one round, no CogVideoX")
    parser.add_argument("--sizes", help="frame sizes in pixels (default 256,512,1024,2048; quick 256,512)")
    parser.add_argument("--tile-frame", type=int, help="frame size of the tile section (1024; quick 512)")
    parser.add_argument("--rounds", type=int, default=1, help="fresh processes per figure (medians)")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run this section (may be repeated)")
    parser.add_argument("--diffusers", action="store_true", help="cogvideox: decode with diffusers too (~23 GiB)")
    parser.add_argument("--latents", default="60x90", help="cogvideox: latent rows x columns (60x90: 480x720)")
    parser.add_argument("--frames", type=int, default=3, help="cogvideox: latent frames (3: 9 frames)")
    parser.add_argument("--video-tile", type=int, default=128, help="cogvideox: movq's --tile in pixels")
    parser.add_argument("--tiled-only", action="store_true", help="cogvideox: movq --tile alone (not untiled)")
    parser.add_argument("--compare", action="store_true", help="cogvideox: keep the frames and compare the pixels")
    parser.add_argument("--models", help=f"estimate: models, of {','.join(MODELS)} (default: the first two)")
    parser.add_argument("--job", choices=("frame",), help=argparse.SUPPRESS)
    parser.add_argument("--keep", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--pixels", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.job:
        print(json.dumps(frame_job(args.model, args.pixels, device, args.tile, args.keep)))
        return
    sizes = (
        [int(size) for size in args.sizes.split(",")]
        if args.sizes
        else ([256, 512] if args.quick else [256, 512, 1024, 2048])
    )
    sections = args.only or (("estimate", "tile") if args.quick else SECTIONS)
    print(f"# python benchmarks/bench_large_frames.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"# torch {torch.__version__}, {describe(device)}", flush=True)
    if "estimate" in sections:
        estimate_section(args.models.split(",") if args.models else list(MODELS[:2]), sizes, args.device, args.rounds)
    if "tile" in sections:
        tile_section(args.tile_frame or (512 if args.quick else 1024), args.device)
    if "cogvideox" in sections:
        latents = tuple(int(size) for size in args.latents.split("x"))
        cogvideox_section(
            args.device, latents, args.frames, args.video_tile, args.diffusers, args.compare, not args.tiled_only
        )


if __name__ == "__main__":
    main()
