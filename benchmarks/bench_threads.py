"""CPU threads and OpenMP's wait policy: decoding speed on a quiet machine and beside a second decode.

    python benchmarks/bench_threads.py                 # about 6 minutes on 2 cores
    python benchmarks/bench_threads.py --frames 64 --rounds 5

Each case decodes the first FRAMES frames of the example clip (64x64 codes, 256x256 frames, the
bundled model, fp32) to an MP4 with `movq_cli.decode`, what `movq decode` runs, in a fresh
process, with N torch threads (or torch's own choice, one per core) and OMP_WAIT_POLICY set in
its environment before torch is imported (PASSIVE: waiting threads sleep; unset: the OpenMP
runtime's default, where they spin a while first). The library leaves the environment as it
finds it, so each case gets exactly what it sets. The figure is frames over the seconds of
decoding and writing, model loading left out.

"loaded" runs the same command twice at once, from two processes with the same settings (two
users or two jobs sharing the cores), and reports the slower one's frames/s. The cases take
turns within each round, so slow drift of the shared machine hits them all alike; each figure
is the median of the rounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "coffee_pan_zoom.npy"
# (label, --threads or None, OMP_WAIT_POLICY or None)
CASES = [
    ("threads=cores, policy unset", None, None),
    ("threads=cores, PASSIVE", None, "PASSIVE"),
    ("threads=1, policy unset", 1, None),
    ("threads=1, PASSIVE", 1, "PASSIVE"),
]


# one decode in a process of its own: threads, frames, output -> frames/s on stdout
DECODE = """
import sys, torch, movq_cli
threads, frames, out = sys.argv[1:]
if threads != "default":
    torch.set_num_threads(int(threads))
model = movq_cli.load()
result = movq_cli.decode({example!r}, out, model, frames=slice(0, int(frames)), overwrite=True)
print(result.frames / result.seconds)
"""


def command(out: Path, frames: int, threads: int | None) -> list[str]:
    script = DECODE.format(example=str(EXAMPLE))
    return [sys.executable, "-c", script, str(threads or "default"), str(frames), str(out)]


def environment(policy: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    return env


def frames_per_second(process: subprocess.Popen) -> float:
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"movq decode failed ({process.returncode}): {stderr.strip()}")
    return float(stdout.strip().splitlines()[-1])


def run(folder: Path, frames: int, threads: int | None, policy: str | None, copies: int) -> float:
    """The slowest frames/s of `copies` decodes started together."""
    processes = [
        subprocess.Popen(
            command(folder / f"out{copy}.mp4", frames, threads),
            env=environment(policy),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for copy in range(copies)
    ]
    return min(frames_per_second(process) for process in processes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch

    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    print(
        f"# python benchmarks/bench_threads.py --frames {args.frames} --rounds {args.rounds}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu}, {os.cpu_count()} cores, torch {torch.__version__}",
        flush=True,
    )
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.rounds):
            for label, threads, policy in CASES:
                for load, copies in (("quiet", 1), ("loaded", 2)):
                    speed = run(Path(folder), args.frames, threads, policy, copies)
                    results.setdefault((label, load), []).append(speed)
                    print(f"round {round_ + 1}  {label:28s} {load:6s} {speed:5.2f} frames/s", flush=True)
    print("\nmedians (frames/s; loaded: the slower of two decodes side by side)")
    base = {load: statistics.median(results[(CASES[0][0], load)]) for load in ("quiet", "loaded")}
    for label, _, _ in CASES:
        cells = []
        for load in ("quiet", "loaded"):
            median = statistics.median(results[(label, load)])
            cells.append(f"{load} {median:5.2f} ({median / base[load]:.2f}x)")
        print(f"{label:28s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
