"""Batch throughput: files/s in one process, with 2 CPU workers and on Ray; frames/s of decoding
alone, encoding alone (x264 presets, NVENC where it works) and both together.

    python benchmarks/bench_batch.py                  # CPU: about 6 minutes on 2 cores
    python benchmarks/bench_batch.py --skip-ray       # without Ray (pip install 'movq[ray]')
    python benchmarks/bench_batch.py --device cuda    # one GPU: Kandinsky 2.2 layout, frames/s

On the CPU the batch is 16 clips of 8 frames cut from the two example clips (64x64 codes,
256x256 frames, the bundled model, fp32), decoded to MP4 three ways: in one process (torch's
threads on every core), by one worker process per core (`--device cpu,cpu`), and by as many Ray
actors on a local Ray started here (its start is timed apart). Each figure includes loading the
model (and, for workers and actors, starting their processes): what a user waits for. Then each
way's start-up and cost per file, from batches of 8 and 64 one-frame files that take
milliseconds to decode: the difference between Ray and local workers is Ray's overhead per file.

Frames/s: decoding alone (frames to memory, nothing written) and both (`movq decode`'s pipeline:
the writer thread encodes while the next chunk decodes), alternating for 3 rounds, medians; then
encoding alone (decoded frames piped to ffmpeg, at 256x256 and, as 2x2 mosaics of them, at
512x512; PNG frames for comparison). On `--device cuda` the model
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
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import movq_cli
from movq_cli.batch import BatchOptions, decode_batch, find_jobs
from movq_cli.checkpoints import weights
from movq_cli.io.codes import read
from movq_cli.io.writers import WriteOptions, get_writer
from movq_cli.models.config import preset
from movq_cli.models.family import DecodeOptions
from movq_cli.models.movq import Movq
from movq_cli.pipeline import decode_frames, decode_to_file, prepare
from movq_cli.workers import decode_on_workers

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [ROOT / "examples" / "coffee_pan_zoom.npy", ROOT / "examples" / "hubble_pan.npy"]
X264 = ["x264-medium", "x264-veryfast", "x264-ultrafast"]


def cut_clips(folder: Path, count: int, frames: int) -> Path:
    """`count` clips of `frames` frames, cut in turn from the example clips, as a folder of code files."""
    folder.mkdir()
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


def ways(workers: int, ray: bool) -> dict:
    """Each way to decode a batch, as `run(codes folder, out folder) -> reports`."""
    devices = [torch.device("cpu")] * workers

    def in_process(codes: Path, out: Path):
        model = movq_cli.load("default", "cpu", "fp32")
        return decode_batch(model, find_jobs([codes], out, "mp4"), BatchOptions())

    def on_workers(codes: Path, out: Path):
        return decode_on_workers(find_jobs([codes], out, "mp4"), "default", devices, "fp32", BatchOptions())[0]

    def on_ray(codes: Path, out: Path):
        from movq_cli.cluster import decode_on_ray

        return decode_on_ray(find_jobs([codes], out, "mp4"), "default", "cpu", "fp32", BatchOptions(), workers)[0]

    found = {
        f"1 process, {torch.get_num_threads()} threads": in_process,
        f"{workers} workers, {max(1, cores() // workers)} thread(s) each": on_workers,
    }
    if ray:
        found[f"Ray, {workers} actors of 1 CPU"] = on_ray
    return found


def run(way, codes: Path, out: Path) -> float:
    reports, seconds = timed(lambda: way(codes, out))
    assert reports and all(report.status == "done" for report in reports), reports
    return seconds


def batch_throughput(folder: Path, workers: int, ray: bool) -> None:
    """Files/s of a batch of 16 clips, each way; then each way's start-up and cost per file, from
    batches of 8 and of 64 one-frame files (64x64 pixels: decoding them takes milliseconds)."""
    clips = cut_clips(folder / "clips", 16, 8)
    tiny = {count: folder / f"tiny-{count}" for count in (8, 64)}
    codes = np.load(EXAMPLES[0])[:1, :16, :16]
    for count, place in tiny.items():
        place.mkdir()
        for number in range(count):
            np.save(place / f"{number:02d}.npy", codes)
    if ray:
        import ray as ray_module

        _, start = timed(lambda: ray_module.init(num_cpus=cores(), include_dashboard=False, logging_level="ERROR"))
        print(f"ray.init (a local Ray of {cores()} CPUs): {start:.1f} s, counted in no figure below")
    print(f"batch: 16 clips x 8 frames, 256x256, bundled model, fp32, to MP4 (x264-medium), {cores()} cores")
    for number, (name, way) in enumerate(ways(workers, ray).items()):
        seconds = run(way, clips, folder / f"videos-{number}")
        print(
            f"  {name:<30} {16 / seconds:6.3f} files/s  {16 * 8 / seconds:6.2f} frames/s  ({seconds:.1f} s)", flush=True
        )
    print("start-up and cost per file, from batches of 8 and 64 one-frame files (64x64 pixels):")
    costs = {}
    for number, (name, way) in enumerate(ways(workers, ray).items()):
        few, many = (
            min(run(way, tiny[count], folder / f"tiny-{number}-{count}-{again}") for again in range(2))
            for count in (8, 64)
        )  # the quicker of two runs: less of the noise of a shared machine
        costs[name] = per_file = (many - few) / (64 - 8)
        print(f"  {name:<30} start-up {few - 8 * per_file:5.2f} s, then {1000 * per_file:6.1f} ms/file", flush=True)
    if ray:
        ray_module.shutdown()
        local, on_ray = list(costs.values())[1:]
        print(f"  Ray's overhead against local workers: {1000 * (on_ray - local):+.1f} ms/file")


def frame_rates(model: Movq, clip_path: Path, device: torch.device, folder: Path, encoders: list[str]) -> None:
    """Decoding alone and decoding into an MP4 (alternating, 3 rounds, medians), then encoding
    alone at 256x256 and 512x512, in frames/s."""
    clip = read(clip_path)
    height, width = (side * model.config.factor for side in clip.grid)
    list(decode_frames(prepare(model, clip, slice(0, 2), DecodeOptions(chunk=2))))  # warm-up

    def decode_alone() -> np.ndarray:
        return np.concatenate(
            list(decode_frames(prepare(model, clip, options=DecodeOptions(chunk=chunk(device)))))
        )  # on the host: waited for

    def both(encoder: str):
        plan = prepare(model, clip, options=DecodeOptions(chunk=chunk(device)))
        return lambda: decode_to_file(plan, folder / "both.mp4", WriteOptions(encoder=encoder, overwrite=True))

    kinds = {"decode alone": decode_alone} | {f"decode + encode ({encoder})": both(encoder) for encoder in encoders[:2]}
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(3):
        for kind, run_kind in kinds.items():
            sync(device)
            result, seconds = timed(run_kind)
            rates[kind].append(clip.n_frames / seconds)
            if kind == "decode alone":
                decoded = result
    for kind, measured in rates.items():
        print(f"  {kind + ':':<32} {statistics.median(measured):8.1f} frames/s at {width}x{height}")
    for frames in (decoded, mosaics(decoded)):
        frames = np.concatenate([frames] * max(1, 96 // len(frames)))  # enough frames to time ffmpeg, not its start
        rates = {encoder: encode_rate(frames, encoder, folder) for encoder in [*encoders, "png"]}
        listed = ", ".join(f"{encoder} {rate:.0f}" for encoder, rate in rates.items())
        print(f"  encode alone at {frames.shape[2]}x{frames.shape[1]}: {listed} frames/s ({len(frames)} frames)")
    print(flush=True)


def mosaics(frames: np.ndarray) -> np.ndarray:
    """Frames twice the size: frame t is frames t, t + n/4, t + n/2 and t + 3n/4 (mod n) in a 2x2 grid."""
    quarter = len(frames) // 4
    top = np.concatenate([frames, np.roll(frames, -quarter, axis=0)], axis=2)
    bottom = np.concatenate([np.roll(frames, -2 * quarter, axis=0), np.roll(frames, -3 * quarter, axis=0)], axis=2)
    return np.concatenate([top, bottom], axis=1)


def encode_rate(frames: np.ndarray, encoder: str, folder: Path) -> float:
    """Frames/s of writing `frames` to an MP4 with `encoder`, or with "png" to a folder of PNG frames
    (median of 3), from the first frame handed over to the output in place."""
    rates = []
    for _ in range(3):
        output, options = (
            (folder / "frames/", WriteOptions())
            if encoder == "png"
            else (folder / "encoded.mp4", WriteOptions(encoder=encoder))
        )
        writer = get_writer(output, frames.shape[1:3], len(frames), replace(options, overwrite=True))
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
    print(f"load average before: {os.getloadavg()[0]:.1f} (other processes share these cores)")
    encoders = X264 + (["nvenc"] if nvenc_works() else [])
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if device.type == "cpu":
            batch_throughput(folder, workers=cores(), ray=not args.skip_ray)
            np.save(folder / "coffee-24.npy", np.load(EXAMPLES[0])[:24])
            print("\nframes/s, bundled model, fp32, 24 frames of the coffee example, 3 rounds:")
            frame_rates(movq_cli.load("default", "cpu"), folder / "coffee-24.npy", device, folder, encoders)
            print(f"load average after: {os.getloadavg()[0]:.1f}")
            return
        model = kandinsky(folder, device)
        for side in (32, 64):
            path = folder / f"random-{side}.npy"
            np.save(path, np.random.default_rng(0).integers(0, 16384, (256, side, side)).astype(np.int16))
            print(f"frames/s, Kandinsky 2.2 layout, bf16, 256 frames of {side * 8}x{side * 8}, {device}, 3 rounds:")
            frame_rates(model, path, device, folder, encoders)


if __name__ == "__main__":
    main()
