"""Reading pictures to encode: one image, a folder of images, or a video, as RGB frames."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np

from movq_cli.errors import InputError, first_line

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".gif", ".mov", ".mkv", ".webm", ".avi", ".m4v"}


@dataclass(frozen=True)
class Footage:
    """Frames to encode: where they come from, how many, and their size (height, width)."""

    path: Path
    kind: str  # "image", "folder" or "video"
    n_frames: int
    size: tuple[int, int]
    files: tuple[Path, ...] = ()

    def frames(self) -> Iterator[np.ndarray]:
        """Each frame as (H, W, 3) uint8, in order, one at a time."""
        if self.kind == "video":
            yield from _video_frames(self.path, self.size)
            return
        for file in self.files:
            frame = _read_image(file)
            if frame.shape[:2] != self.size:
                raise InputError(
                    f"{file} is {frame.shape[0]}x{frame.shape[1]}; the folder's first image is "
                    f"{self.size[0]}x{self.size[1]} (all frames must have one size)"
                )
            yield frame


def open_footage(path: str | Path) -> Footage:
    """Inspect `path` (image, folder of images, or video) without decoding every frame."""
    path = Path(path)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural)
        if not files:
            raise InputError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        first = _read_image(files[0])
        return Footage(path, "folder", len(files), first.shape[:2], tuple(files))
    if not path.exists():
        raise InputError(f"input not found: {path}")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return Footage(path, "image", 1, _read_image(path).shape[:2], (path,))
    if suffix in VIDEO_SUFFIXES:
        return _open_video(path)
    raise InputError(
        f"{path}: unsupported input {suffix or '(no suffix)'}; give an image "
        f"({', '.join(sorted(IMAGE_SUFFIXES))}), a folder of them, or a video ({', '.join(sorted(VIDEO_SUFFIXES))})"
    )


def _natural(path: Path) -> list:
    """frame2.png before frame10.png."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _read_image(path: Path) -> np.ndarray:
    try:
        image = np.asarray(iio.imread(path))
    except Exception as error:  # imageio raises many kinds for a bad file
        raise InputError(f"{path}: not a readable image ({first_line(error)})") from None
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise InputError(f"{path}: expected a picture, got an array of shape {image.shape}")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.dtype != np.uint8:
        top = 65535 if image.dtype == np.uint16 else max(float(image.max()), 1.0)
        image = np.clip(image.astype(np.float64) / top * 255 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image[..., :3])


def _open_video(path: Path) -> Footage:
    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        reader.close()
        n_frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except (OSError, RuntimeError, StopIteration) as error:
        message = [line for line in str(error).splitlines() if line.strip()]
        raise InputError(f"{path}: not a readable video ({message[-1] if message else 'ffmpeg failed'})") from None
    width, height = meta["size"]
    if n_frames == 0:
        raise InputError(f"{path}: the video has no frames")
    return Footage(path, "video", n_frames, (height, width))


def _video_frames(path: Path, size: tuple[int, int]) -> Iterator[np.ndarray]:
    height, width = size
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        next(reader)  # metadata
        for raw in reader:
            yield np.frombuffer(raw, np.uint8).reshape(height, width, 3)
    finally:
        reader.close()
