"""CogVideoX VAE decode speed and memory: movq against diffusers' AutoencoderKLCogVideoX, in one run.

    python benchmarks/bench_cogvideox.py            # 30x45 latents (240x360 frames), F = 13 and 5
    python benchmarks/bench_cogvideox.py --quick    # 20x30 latents, F = 5 and 3, one memory run each

Both sides decode the same random weights and latents, in the released 2b/5b structure (4 up
blocks, 3 + 1 resnets each, time doubled twice) at reduced width so that a run takes minutes on
2 cores. Decodes alternate between the sides for `--rounds` rounds; medians are compared.
Reports, per latent length F: frames/s of movq fp32 and bf16 against diffusers fp32, the largest
difference of movq fp32 to diffusers and the PSNR of movq bf16 pixels against movq fp32 pixels.
Then the peak resident memory (VmHWM) of fresh processes that decode one clip each (median of
`--memory-runs`): movq streaming the chunks to uint8 at two lengths, diffusers decoding whole.
Needs the test extra (diffusers).
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from movq_cli.checkpoints import cogvideox as checkpoint
from movq_cli.models.cogvideox import CogVideoX, CogVideoXConfig

STRUCTURE = dict(block_out_channels=(64, 128, 128, 256), layers_per_block=3, norm_num_groups=32)


def make_vae(seed: int = 0):
    """A random diffusers AutoencoderKLCogVideoX, norm affines and biases perturbed as in the tests."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(latent_channels=16, **STRUCTURE)
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.2)
    return vae.eval()


def make_latents(frames: int, height: int, width: int) -> torch.Tensor:
    return torch.randn(1, 16, frames, height, width, generator=torch.Generator().manual_seed(frames))


def load_movq(weights: Path, dtype: torch.dtype) -> CogVideoX:
    state = {name: tensor.to(dtype) for name, tensor in load_file(weights).items()}
    return checkpoint.build(CogVideoXConfig(**STRUCTURE), state)


def to_pixels(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in about [-1, 1] -> uint8, as the CogVideoX pipelines do."""
    return torch.round(torch.clamp(frames.float() / 2 + 0.5, 0, 1) * 255).to(torch.uint8)


def movq_decode(model: CogVideoX, latents: torch.Tensor, keep: bool) -> torch.Tensor | None:
    """Stream the chunks through the model; keep the float frames or drop each chunk's pixels."""
    dtype = next(model.parameters()).dtype
    chunks = (chunk.to(dtype) for chunk in torch.split(latents, model.schedule(latents.shape[2]), dim=2))
    kept = []
    for frames in model.decode_stream(chunks):
        kept.append(frames.float() if keep else to_pixels(frames)[:0])
    return torch.cat(kept, dim=2) if keep else None


def diffusers_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(latents).sample


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (to_pixels(a).float() - to_pixels(b).float()).pow(2).mean().item()
    return 10 * math.log10(255**2 / max(mse, 1e-10))


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def speed(vae, weights: Path, frames: int, height: int, width: int, rounds: int) -> list[str]:
    fp32, bf16 = load_movq(weights, torch.float32), load_movq(weights, torch.bfloat16)
    latents = make_latents(frames, height, width)
    out_frames = fp32.output_frames(frames)
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": [], "diffusers": []}
    for _ in range(rounds):
        took, expected = timed(lambda: diffusers_decode(vae, latents))
        seconds["diffusers"].append(took)
        took, got = timed(lambda: movq_decode(fp32, latents, keep=True))
        seconds["fp32"].append(took)
        took, half = timed(lambda: movq_decode(bf16, latents, keep=True))
        seconds["bf16"].append(took)
    rate = {side: out_frames / statistics.median(times) for side, times in seconds.items()}
    size = f"{height * fp32.factor}x{width * fp32.factor}"
    head = f"F={frames:<3d} -> {out_frames} frames {size}"
    return [
        f"{head}  float32   movq {rate['fp32']:6.3f} frames/s  diffusers-fp32 {rate['diffusers']:6.3f} frames/s  "
        f"ratio {rate['fp32'] / rate['diffusers']:5.2f}x  max|diff| {(got - expected).abs().max().item():.1e}",
        f"{head}  bfloat16  movq {rate['bf16']:6.3f} frames/s  diffusers-fp32 {rate['diffusers']:6.3f} frames/s  "
        f"ratio {rate['bf16'] / rate['diffusers']:5.2f}x  PSNR vs movq fp32 {psnr(half, got):.1f} dB",
    ]


def peak_memory(job: str, files: Path, frames: int, height: int, width: int, runs: int) -> tuple[int, list[int]]:
    """Median VmHWM in MiB of `runs` fresh processes decoding one clip, and each run's figure."""
    command = [sys.executable, __file__, "--job", job, "--files", str(files)]
    command += ["--frames", str(frames), "--height", str(height), "--width", str(width)]
    peaks = []
    for _ in range(runs):
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        peaks.append(int(result.stdout.split()[-1]))
    return int(statistics.median(peaks)), peaks


def run_job(job: str, files: Path, frames: int, height: int, width: int) -> None:
    """One decode in this (fresh) process, then its peak resident memory in MiB on stdout."""
    latents = make_latents(frames, height, width)
    if job == "movq":
        with torch.inference_mode():
            movq_decode(load_movq(files / "movq.safetensors", torch.float32), latents, keep=False)
    else:
        from diffusers import AutoencoderKLCogVideoX

        vae = AutoencoderKLCogVideoX.from_pretrained(files / "diffusers").eval()
        to_pixels(diffusers_decode(vae, latents))
    status = Path("/proc/self/status").read_text()
    print(next(int(line.split()[1]) // 1024 for line in status.splitlines() if line.startswith("VmHWM:")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20x30 latents, F = 5 and 3, one memory run")
    parser.add_argument("--height", type=int, help="latent rows (30; quick 20)")
    parser.add_argument("--width", type=int, help="latent columns (45; quick 30)")
    parser.add_argument("--frames", type=int, help="the long latent length (13; quick 5)")
    parser.add_argument("--short", type=int, help="the short latent length (5; quick 3)")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds per case (each side once a round)")
    parser.add_argument("--memory-runs", type=int, help="fresh processes per memory figure (3; quick 1)")
    parser.add_argument("--job", choices=["movq", "diffusers"], help=argparse.SUPPRESS)
    parser.add_argument("--files", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    height = args.height or (20 if args.quick else 30)
    width = args.width or (30 if args.quick else 45)
    frames = args.frames or (5 if args.quick else 13)
    if args.job:
        run_job(args.job, args.files, frames, height, width)
        return
    short = args.short or (3 if args.quick else 5)
    runs = args.memory_runs or (1 if args.quick else 3)

    print(f"# python benchmarks/bench_cogvideox.py {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu; block_out_channels "
        f"{STRUCTURE['block_out_channels']}, layers_per_block 3, latents {height}x{width}",
        flush=True,
    )
    vae = make_vae()
    with tempfile.TemporaryDirectory() as folder:
        files = Path(folder)
        save_file(
            {k: v.contiguous() for k, v in checkpoint.diffusers_to_native(vae.state_dict()).items()},
            str(files / "movq.safetensors"),
        )
        vae.save_pretrained(files / "diffusers")
        for length in (frames, short):
            for line in speed(vae, files / "movq.safetensors", length, height, width, args.rounds):
                print(line, flush=True)
        del vae
        memory = {}
        for job, length in (("movq", short), ("movq", frames), ("diffusers", frames)):
            memory[job, length], peaks = peak_memory(job, files, length, height, width, runs)
            print(
                f"peak memory (VmHWM) {job:9s} fp32 F={length:<3d} {memory[job, length]:6d} MiB "
                f"(median of {', '.join(map(str, peaks))})",
                flush=True,
            )
    print(
        f"memory: movq F={frames} / movq F={short} {memory['movq', frames] / memory['movq', short]:.2f}x, "
        f"movq / diffusers at F={frames} {memory['movq', frames] / memory['diffusers', frames]:.2f}x"
    )


if __name__ == "__main__":
    main()
