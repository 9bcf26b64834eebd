"""What "the same outputs" means for one batch decoded in different ways (one process, several
workers, the parts of a job array, a Ray cluster): the same tree of files, byte-identical
pictures, frame-identical videos, and the same JSON rows but for `seconds`."""

from __future__ import annotations

import json
from pathlib import Path

import imageio_ffmpeg
import numpy as np


def code_tree(root: Path) -> Path:
    """Five good code files of different sizes in a tree, and one with a code out of range."""
    rng = np.random.default_rng(0)
    (root / "sub" / "deeper").mkdir(parents=True)
    for name, frames in [("a.npy", 3), ("b.npy", 1), ("sub/c.npy", 6), ("sub/d.npy", 2)]:
        np.save(root / name, rng.integers(0, 64, (frames, 4, 4)))
    np.savez(root / "sub" / "deeper" / "e.npz", codes=rng.integers(0, 64, (4, 6, 4)))
    np.save(root / "sub" / "bad.npy", np.full((2, 4, 4), 64))
    return root


def rows(result) -> list[dict]:
    """The --json rows of a run without their timings, in input order."""
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return sorted(({key: value for key, value in line.items() if key != "seconds"} for line in lines), key=_input)


def _input(row: dict) -> str:
    return row["input"]


def relative_rows(result, out: Path) -> list[dict]:
    """`rows`, with each output relative to the run's OUT, to compare runs into different folders."""
    return [{**row, "output": str(Path(row["output"]).relative_to(out))} for row in rows(result)]


def video_frames(path: Path) -> np.ndarray:
    reader = imageio_ffmpeg.read_frames(str(path))
    width, height = next(reader)["size"]
    return np.stack([np.frombuffer(frame, np.uint8).reshape(height, width, 3) for frame in reader])


def assert_same_outputs(expected: Path, got: Path) -> None:
    """The same files below both folders; pictures byte for byte, videos frame for frame."""
    tree = sorted(str(path.relative_to(expected)) for path in expected.rglob("*"))
    assert sorted(str(path.relative_to(got)) for path in got.rglob("*")) == tree
    for name in tree:
        path = expected / name
        if path.suffix == ".mp4":
            assert np.array_equal(video_frames(got / name), video_frames(path)), name
        elif path.is_file():
            assert (got / name).read_bytes() == path.read_bytes(), name
