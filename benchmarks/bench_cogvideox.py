"""CogVideoX VAE decode speed and memory: movq against diffusers' AutoencoderKLCogVideoX, in one run.

    python benchmarks/bench_cogvideox.py                          # 16x24 latents, F = 13 and 5, 3 rounds
    python benchmarks/bench_cogvideox.py --quick                  # 12x18 latents, F = 5 and 3, 1 round
    python benchmarks/bench_cogvideox.py --height 60 --width 90   # the released models' 480x720 (long)
    python benchmarks/bench_cogvideox.py --device cuda --released --height 60 --width 90 --rounds 1
                                       # CogVideoX-2b's own structure at 480x720, with peak CUDA memory

Both sides decode the same random weights and latents, in the released 2b/5b structure (4 up
blocks, 3 + 1 resnets each, time doubled twice) at half width, so that a run takes minutes on
2 cores. Every decode runs in a fresh process, which times the decode itself (frames/s, model
loading and start-up excluded) and reports its peak resident memory (VmHWM); each round decodes
every case once, alternating the sides, and the medians over rounds are compared. movq streams
the chunks and turns each into uint8 pixels as a writer would; diffusers decodes the clip whole,
as `vae.decode` does. Reports, per latent length F: frames/s of movq fp32 and bf16 against
diffusers fp32, the largest difference of movq fp32 to diffusers, the PSNR of movq bf16 pixels
against movq fp32 pixels, and the peak memory of each. For the long F, both sides also decode
in tiles of half the frame, and each tiled output is compared with the same side's untiled one (on
the CPU the activations stay in the same memory, so tiling shows its error and its cost here,
not the device memory it saves). Needs the test extra (diffusers).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from movq_cli.checkpoints import cogvideox as checkpoint
from movq_cli.checkpoints.building import build
from movq_cli.models.cogvideox import CogVideoX
from movq_cli.models.config import CogVideoXConfig

STRUCTURE = dict(block_out_channels=(64, 128, 128, 256), layers_per_block=3, norm_num_groups=32)
RELEASED = dict(block_out_channels=(128, 256, 256, 512), layers_per_block=3, norm_num_groups=32)  # --released
SIDES = ("diffusers", "movq-fp32", "movq-bf16")
# Both decode frames in tiles of about half the frame each way: diffusers with its own tiling
# (overlapping tiles, blended; overlaps 1/6 and 1/5 as released), movq with --tile's exact tiling.
TILED = ("diffusers-tiled", "movq-fp32-tiled")
TRUTH = "diffusers-fp64"  # once, for the long F: how far each float32 decode is from exact


def make_vae(structure: dict, seed: int = 0):
    """A random diffusers AutoencoderKLCogVideoX, norm affines and biases perturbed as in the tests."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(latent_channels=16, **structure)
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.2)
    return vae.eval()


def diffusers_tile(size: int, overlap: int) -> int:
    """Latents per diffusers tile along an axis of `size` latents: at least half of it, a multiple of
    1/overlap-factor (6 for rows, 5 for columns), as at the released 480x720 (30x45 of 60x90 latents).

    diffusers' tiled decode lays tiles out at the latent overlap but crops them at the pixel
    overlap; the two agree only for such sizes: at others its tiles land shifted."""
    return next(tile for tile in range(overlap, size + overlap, overlap) if 2 * tile >= size)


def describe(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def make_latents(frames: int, height: int, width: int) -> torch.Tensor:
    return torch.randn(1, 16, frames, height, width, generator=torch.Generator().manual_seed(frames))


def to_pixels(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in about [-1, 1] -> uint8, as the CogVideoX pipelines do."""
    return torch.round(torch.clamp(frames.float() / 2 + 0.5, 0, 1) * 255).to(torch.uint8)


class Setup(NamedTuple):
    """What every job of a run shares: the weights' folder, the structure and the device."""

    files: Path
    structure: dict
    device: torch.device

    def arguments(self) -> list[str]:
        return ["--files", str(self.files), "--device", str(self.device)] + (
            ["--released"] if self.structure == RELEASED else []
        )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_job(
    side: str, setup: Setup, frames: int, height: int, width: int, keep: Path | None, tile: int | None = None
) -> dict:
    """One decode in this fresh process: seconds, output frame count and peak memory in MiB (and
    on CUDA the peak of device memory allocated).

    With `keep`, the float frames are appended to that file chunk by chunk as they come.
    """
    if keep is None:
        return decode(side, setup, make_latents(frames, height, width), sink=None, tile=tile)
    with open(keep, "wb") as sink:
        return decode(side, setup, make_latents(frames, height, width), sink, tile=tile)


def decode(side: str, setup: Setup, latents: torch.Tensor, sink: BinaryIO | None, tile: int | None = None) -> dict:
    """`tile`: movq's tiles in pixels (None: half the frame each way)."""
    frames, height, width = latents.shape[2:]
    tiled, device = side.endswith("-tiled"), setup.device
    latents = latents.to(device)
    if side.startswith("diffusers"):
        from diffusers import AutoencoderKLCogVideoX

        vae = AutoencoderKLCogVideoX.from_pretrained(setup.files / "diffusers").to(device).eval()
        if side == TRUTH:
            vae, latents = vae.double(), latents.double()
        if tiled:
            factor = 2 ** (len(setup.structure["block_out_channels"]) - 1)
            rows, cols = diffusers_tile(height, 6), diffusers_tile(width, 5)
            vae.enable_tiling(tile_sample_min_height=rows * factor, tile_sample_min_width=cols * factor)
        sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            video = vae.decode(latents).sample
        to_pixels(video)
        sync(device)
        seconds = time.perf_counter() - start
        if sink:
            sink.write(video.float().cpu().numpy().tobytes())
        count = video.shape[2]
    else:
        dtype = torch.bfloat16 if side == "movq-bf16" else torch.float32
        # no other reference to the file's tensors: the model holds the weights once, as movq's loader leaves them
        state = {name: tensor.to(device, dtype) for name, tensor in load_file(setup.files / "movq.safetensors").items()}
        model: CogVideoX = build(CogVideoXConfig(**setup.structure), state)
        del state
        chunks = (chunk.to(dtype) for chunk in torch.split(latents, model.schedule(frames), dim=2))
        count, seconds = 0, 0.0
        sync(device)
        start = time.perf_counter()
        factor = 2 ** (len(setup.structure["block_out_channels"]) - 1)
        tiles = ((height + 1) // 2, (width + 1) // 2) if tile is None else (max(1, tile // factor),) * 2
        for video in model.decode_stream(chunks, tile=tiles if tiled else None):
            to_pixels(video).cpu()  # as a writer takes them
            sync(device)
            seconds += time.perf_counter() - start
            count += video.shape[2]
            if sink:  # keeping the frames for comparison is not part of the decode
                sink.write(video.float().contiguous().cpu().numpy().tobytes())
            start = time.perf_counter()
    status = Path("/proc/self/status").read_text()
    peak = next(int(line.split()[1]) // 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
    cuda = torch.cuda.max_memory_allocated(device) // 2**20 if device.type == "cuda" else None
    return {"seconds": seconds, "frames": count, "peak_mib": peak, "cuda_peak_mib": cuda}


def run_job(
    side: str, setup: Setup, frames: int, height: int, width: int, keep: Path | None, tile: int | None = None
) -> dict:
    command = [sys.executable, __file__, "--job", side, *setup.arguments()]
    command += ["--frames", str(frames), "--height", str(height), "--width", str(width)]
    if tile is not None:
        command += ["--tile", str(tile)]
    if keep:
        command += ["--keep", str(keep)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:  # the job's own error (out of device memory, say), not only its exit status
        raise RuntimeError(f"the {side} job for F={frames} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.splitlines()[-1])
    # as each job ends, so that a run cut short still shows the jobs it finished
    cuda = "" if result["cuda_peak_mib"] is None else f", CUDA {result['cuda_peak_mib']} MiB"
    print(f"  {side} F={frames}: {result['frames']} frames in {result['seconds']:.2f} s, peak {result['peak_mib']} MiB{cuda}",
          file=sys.stderr, flush=True)  # fmt: skip
    return result


def read_frames(path: Path, structure: dict, latent_frames: int, height: int, width: int) -> torch.Tensor:
    """The float frames (1, 3, T, H, W) a job kept; movq's chunks were written one after another."""
    flat = torch.from_numpy(np.fromfile(path, dtype=np.float32))
    if path.stem.startswith("diffusers"):
        return flat.view(1, 3, -1, height, width)
    chunks, offset = [], 0
    for length in chunk_lengths(structure, latent_frames):
        size = 3 * length * height * width
        chunks.append(flat[offset : offset + size].view(1, 3, length, height, width))
        offset += size
    return torch.cat(chunks, dim=2)


def chunk_lengths(structure: dict, latent_frames: int) -> list[int]:
    with torch.device("meta"):
        model = CogVideoX(CogVideoXConfig(**structure))
    return [model.chunk_frames(t) for t in model.schedule(latent_frames)]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (to_pixels(a).float() - to_pixels(b).float()).pow(2).mean().item()
    return 10 * math.log10(255**2 / max(mse, 1e-10))


def compare(
    setup: Setup, frames: int, height: int, width: int, rounds: int, tiles: bool
) -> tuple[list[str], dict[str, int]]:
    """Every side (and with `tiles` the tiled ones) `rounds` times for one latent length: report
    lines and median peak memory per side."""
    sides = SIDES + TILED if tiles else SIDES
    factor = 2 ** (len(setup.structure["block_out_channels"]) - 1)
    size = (sum(chunk_lengths(setup.structure, frames)), height * factor, width * factor)
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for round_ in range(rounds):
        for side in sides:
            keep = setup.files / f"{side}.f32" if round_ == 0 else None
            runs[side].append(run_job(side, setup, frames, height, width, keep))
    kept = sides
    if tiles:
        run_job(TRUTH, setup, frames, height, width, setup.files / f"{TRUTH}.f32")
        kept += (TRUTH,)
    outputs = {side: read_frames(setup.files / f"{side}.f32", setup.structure, frames, *size[1:]) for side in kept}
    rate = {side: size[0] / statistics.median(run["seconds"] for run in runs[side]) for side in sides}
    peak = {side: int(statistics.median(run["peak_mib"] for run in runs[side])) for side in sides}
    peaks = {side: ", ".join(str(run["peak_mib"]) for run in runs[side]) for side in sides}
    if setup.device.type == "cuda":  # the device's peak is what limits a GPU: report it instead
        peak = {side: int(statistics.median(run["cuda_peak_mib"] for run in runs[side])) for side in sides}
        peaks = {side: "CUDA, " + ", ".join(str(run["cuda_peak_mib"]) for run in runs[side]) for side in sides}
    head = f"F={frames:<3d} -> {size[0]} frames {size[1]}x{size[2]}"
    max_diff = (outputs["movq-fp32"] - outputs["diffusers"]).abs().max().item()
    if tiles:
        exact = outputs[TRUTH]
        truth = (
            f"; to float64: diffusers {(outputs['diffusers'] - exact).abs().max().item():.1e}, "
            f"movq {(outputs['movq-fp32'] - exact).abs().max().item():.1e}"
        )
    else:
        truth = ""
    lines = [
        f"{head}  diffusers fp32 {rate['diffusers']:6.3f} frames/s  peak {peak['diffusers']:5d} MiB ({peaks['diffusers']})",
        f"{head}  movq float32   {rate['movq-fp32']:6.3f} frames/s  peak {peak['movq-fp32']:5d} MiB ({peaks['movq-fp32']})  "
        f"speed {rate['movq-fp32'] / rate['diffusers']:4.2f}x diffusers  memory {peak['movq-fp32'] / peak['diffusers']:4.2f}x  "
        f"max|diff| {max_diff:.1e}{truth}",
        f"{head}  movq bfloat16  {rate['movq-bf16']:6.3f} frames/s  peak {peak['movq-bf16']:5d} MiB ({peaks['movq-bf16']})  "
        f"speed {rate['movq-bf16'] / rate['diffusers']:4.2f}x diffusers  memory {peak['movq-bf16'] / peak['diffusers']:4.2f}x  "
        f"PSNR vs movq fp32 {psnr(outputs['movq-bf16'], outputs['movq-fp32']):.1f} dB",
    ]
    for side, untiled in zip(TILED, ("diffusers", "movq-fp32"), strict=True) if tiles else ():
        difference = (outputs[side] - outputs[untiled]).abs()
        pixels = (to_pixels(outputs[side]) != to_pixels(outputs[untiled])).float().mean().item()
        lines.append(
            f"{head}  {side:<15s} {rate[side]:6.3f} frames/s  peak {peak[side]:5d} MiB ({peaks[side]})  "
            f"tiled: max|diff| to untiled {difference.max().item():.1e}, mean {difference.mean().item():.1e}, "
            f"{100 * pixels:.2f}% of pixel values changed, PSNR {psnr(outputs[side], outputs[untiled]):.1f} dB"
            + (f"; max|diff| to diffusers untiled {(outputs[side] - outputs['diffusers']).abs().max().item():.1e}"
               if side.startswith("movq") else "")
        )  # fmt: skip
    return lines, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="12x18 latents, F = 5 and 3, one round")
    parser.add_argument("--height", type=int, help="latent rows (16; quick 12)")
    parser.add_argument("--width", type=int, help="latent columns (24; quick 18)")
    parser.add_argument("--frames", type=int, help="the long latent length (13; quick 5)")
    parser.add_argument("--short", type=int, help="the short latent length (5; quick 3)")
    parser.add_argument("--rounds", type=int, help="decodes of each case, in fresh processes (3; quick 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (on CUDA, peak device memory is reported)")
    parser.add_argument("--released", action="store_true", help="the released 2b/5b widths, not half of them")
    parser.add_argument("--job", choices=(*SIDES, *TILED, TRUTH), help=argparse.SUPPRESS)
    parser.add_argument("--files", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--keep", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    height = args.height or (12 if args.quick else 16)
    width = args.width or (18 if args.quick else 24)
    frames = args.frames or (5 if args.quick else 13)
    structure = RELEASED if args.released else STRUCTURE
    if args.job:
        setup = Setup(args.files, structure, torch.device(args.device))
        print(json.dumps(decode_job(args.job, setup, frames, height, width, args.keep, args.tile)))
        return
    short = args.short or (3 if args.quick else 5)
    rounds = args.rounds or (1 if args.quick else 3)

    print(f"# python benchmarks/bench_cogvideox.py {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {describe(torch.device(args.device))}; "
        f"block_out_channels {structure['block_out_channels']}, layers_per_block 3; latents {height}x{width}; "
        f"medians of {rounds} fresh processes per figure",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as folder:
        setup = Setup(Path(folder), structure, torch.device(args.device))
        files = setup.files
        vae = make_vae(structure)
        native = checkpoint.diffusers_to_native(vae.state_dict())
        save_file({name: tensor.contiguous() for name, tensor in native.items()}, str(files / "movq.safetensors"))
        vae.save_pretrained(files / "diffusers")
        del vae, native
        peaks = {}
        for length in (frames, short):
            lines, peaks[length] = compare(setup, length, height, width, rounds, tiles=length == frames)
            print("\n".join(lines), flush=True)
    print(
        f"movq fp32 peak memory F={frames} / F={short}: {peaks[frames]['movq-fp32'] / peaks[short]['movq-fp32']:.2f}x; "
        f"diffusers F={frames} / F={short}: {peaks[frames]['diffusers'] / peaks[short]['diffusers']:.2f}x"
    )


if __name__ == "__main__":
    main()
