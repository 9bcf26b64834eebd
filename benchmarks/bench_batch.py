"""Batch throughput: files/s in one process, with 2 CPU workers and on Ray; frames/s of decoding
alone, encoding alone (x264 presets, NVENC where it works) and both together.

    python benchmarks/bench_batch.py                  # CPU: about 4 minutes on 2 cores
    python benchmarks/bench_batch.py --skip-ray       # without Ray (pip install 'movq[ray]')
    python benchmarks/bench_batch.py --device cuda    # one GPU: Kandinsky 2.2 layout, frames/s

On the CPU the batch is 16 clips of 8 frames cut from the two example clips (64x64 codes,
256x256 frames, the bundled model, fp32), decoded to MP4 three ways: in one process (torch's
threads on every core), by one worker process per core (`--device cpu,cpu`), and by as many Ray
actors on a local Ray started here (its start is timed apart). Each figure includes loading the
model (and, for workers and actors, starting their processes): what a user waits for.

Frames/s: decoding alone (frames to memory, nothing written), encoding alone (decoded frames
piped to ffmpeg, at 256x256 and, as 2x2 mosaics of them, at 512x512), and both (`movq decode`'s
pipeline: the writer thread encodes while the next chunk decodes). On `--device cuda` the model
is a random one in the Kandinsky 2.2 layout (the published decoder's size and speed; its pictures
are noise, which is the hardest case for the encoder), in bf16, on random codes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import movq_cli
from movq_cli.batch import BatchOptions, decode_batch, plan
from movq_cli.checkpoints import weights
from movq_cli.io.codes import read
from movq_cli.io.writers import WriteOptions, get_writer
from movq_cli.models.config import preset
from movq_cli.models.movq import Movq
from movq_cli.pipeline import decode_frames, decode_to_file, model_device
from movq_cli.workers import decode_on_workers

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [ROOT / "examples" / "coffee_pan_zoom.npy", ROOT / "examples" / "hubble_pan.npy"]
X264 = ["x264-medium", "x264-veryfast", "x264-ultrafast"]


def cut_clips(folder: Path, count: int, frames: int) -> Path:
    """`count` clips of `frames` frames, cut in turn from the example clips, as a folder of code files."""
    sources = [np.load(path) for path in EXAMPLES]
    for number in range(count):
        source = sources[number % len(sources)]
        start = (number // len(sources)) * frames % (len(source) - frames + 1)
        np.save(folder / f"clip{number:02d}.npy", source[start : start + frames])
    return folder


def timed(run) -> tuple[object, float]:
    started = time.perf_counter()
    result = run()
    return result, time.perf_counter() - started


def batch_line(name: str, seconds: float, files: int, frames: int, note: str = "") -> str:
    return f"  {name:<30} {files / seconds:6.3f} files/s  {frames / seconds:6.2f} frames/s  ({seconds:.1f} s{note})"


def batch_throughput(folder: Path, workers: int, ray: bool) -> None:
    (folder / "codes").mkdir()
    codes = cut_clips(folder / "codes", 16, 8)
    files, frames = 16, 16 * 8

    def jobs(out: str):
        return plan([codes], folder / out, "mp4")

    print(f"batch: {files} clips x 8 frames, 256x256, bundled model, fp32, to MP4 (x264-medium), {cores()} cores")

    def in_process():
        model = movq_cli.load("default", "cpu", "fp32")
        return decode_batch(model, jobs("one"), model_device(model), BatchOptions())

    reports, seconds = timed(in_process)
    assert all(report.status == "done" for report in reports)
    print(batch_line(f"1 process, {torch.get_num_threads()} threads", seconds, files, frames), flush=True)

    devices = [torch.device("cpu")] * workers
    (reports, _), local = timed(lambda: decode_on_workers(jobs("workers"), "default", devices, "fp32", BatchOptions()))
    assert all(report.status == "done" for report in reports)
    print(
        batch_line(f"{workers} workers, {max(1, cores() // workers)} thread(s) each", local, files, frames), flush=True
    )
    if not ray:
        return
    import ray as ray_module

    from movq_cli.cluster import decode_on_ray

    _, start = timed(lambda: ray_module.init(num_cpus=cores(), include_dashboard=False, log_to_driver=False))
    (reports, _), on_ray = timed(lambda: decode_on_ray(jobs("ray"), "default", "cpu", "fp32", BatchOptions(), workers))
    ray_module.shutdown()
    assert all(report.status == "done" for report in reports)
    print(batch_line(f"Ray, {workers} actors of 1 CPU", on_ray, files, frames, f"; ray.init {start:.1f} s before"))
    print(f"  Ray's overhead against local workers: {(on_ray - local) / files:+.2f} s/file", flush=True)


def frame_rates(model: Movq, clip_path: Path, device: torch.device, folder: Path, encoders: list[str]) -> None:
    """Decoding alone, encoding alone (256x256 and 512x512), and both, in frames/s."""
    clip = read(clip_path)
    height, width = (side * model.config.factor for side in clip.grid)
    sync(device)
    list(decode_frames(model, clip.select(slice(0, 2)), device, 2))  # warm-up
    rates = []
    for _ in range(2):
        sync(device)
        decoded, seconds = timed(lambda: np.concatenate(list(decode_frames(model, clip, device, chunk(device)))))
        rates.append(clip.n_frames / seconds)
    print(f"  decode alone:  {statistics.median(rates):8.1f} frames/s  ({clip.n_frames} frames, median of 2)")
    quarter = len(decoded) // 4
    mosaic = np.concatenate(
        [np.concatenate([decoded[:quarter], decoded[quarter : 2 * quarter]], axis=2),
         np.concatenate([decoded[2 * quarter : 3 * quarter], decoded[3 * quarter : 4 * quarter]], axis=2)], axis=1,
    )  # fmt: skip
    for frames in (decoded, mosaic):
        rates = {encoder: encode_rate(frames, encoder, folder) for encoder in encoders}
        listed = ", ".join(f"{encoder} {rate:.0f}" for encoder, rate in rates.items())
        print(f"  encode alone at {frames.shape[2]}x{frames.shape[1]}: {listed} frames/s ({len(frames)} frames)")
    for encoder in encoders[:2]:
        output = folder / f"both-{encoder}.mp4"
        result = decode_to_file(model, clip, output, device, encoder=encoder, overwrite=True)
        print(f"  decode + encode ({encoder}): {result.frames / result.seconds:8.1f} frames/s at {width}x{height}")
    print(flush=True)


def encode_rate(frames: np.ndarray, encoder: str, folder: Path) -> float:
    """Frames/s of ffmpeg encoding `frames` to an MP4 (median of 3), from the first frame piped to the file closed."""
    rates = []
    for _ in range(3):
        writer = get_writer(folder / "encoded.mp4", frames.shape[1:3], len(frames), WriteOptions(encoder=encoder), True)
        _, seconds = timed(lambda: (writer.write(frames), writer.finish()))  # noqa: B023
        rates.append(len(frames) / seconds)
    return statistics.median(rates)


def nvenc_works() -> bool:
    from movq_cli.errors import InputError
    from movq_cli.io.writers import Mp4Writer

    try:
        Mp4Writer.check_options(WriteOptions(encoder="nvenc"))
    except InputError:
        return False
    return True


def chunk(device: torch.device) -> int:
    return 16 if device.type == "cuda" else 8


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cores() -> int:
    return len(os.sched_getaffinity(0))


def kandinsky(folder: Path, device: torch.device) -> Movq:
    """A random model in the Kandinsky 2.2 layout, saved and loaded as any checkpoint is."""
    torch.manual_seed(0)
    path = folder / "kandinsky-2.2-random.safetensors"
    weights.save(Movq(preset("kandinsky-2.2")), path)
    return movq_cli.load(path, str(device), "bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for one GPU")
    parser.add_argument("--skip-ray", action="store_true", help="no Ray run")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {cores()} cores, {device}")
    encoders = X264 + (["nvenc"] if nvenc_works() else [])
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if device.type == "cpu":
            batch_throughput(folder, workers=cores(), ray=not args.skip_ray)
            print("\nframes/s, bundled model, fp32, 64 frames of 256x256 (the coffee example):")
            frame_rates(movq_cli.load("default", "cpu"), EXAMPLES[0], device, folder, encoders)
            return
        model = kandinsky(folder, device)
        for side in (32, 64):
            path = folder / f"random-{side}.npy"
            np.save(path, np.random.default_rng(0).integers(0, 16384, (256, side, side)).astype(np.int16))
            print(f"frames/s, Kandinsky 2.2 layout, bf16, 256 frames of {side * 8}x{side * 8}, {device}:")
            frame_rates(model, path, device, folder, encoders)


if __name__ == "__main__":
    main()
