"""Writers: frames (N, H, W, 3) uint8 in, an MP4, one PNG or a folder of PNGs out.

Each writer works under a temporary name beside the target and renames it into place only
in `finish()`; `abort()` removes everything it wrote.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np

from movq_cli.errors import InputError, RunError

VIDEO_SUFFIXES = {".mp4"}
IMAGE_SUFFIXES = {".png"}
UNSUPPORTED_SUFFIXES = {".gif", ".avi", ".mov", ".mkv", ".webm", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
PNG_COMPRESSION = 1  # zlib level: fast to write, and decoding dominates anyway


def output_kind(path: Path) -> str:
    """'mp4', 'png' or 'folder', from the output path."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "mp4"
    if suffix in IMAGE_SUFFIXES:
        return "png"
    if suffix in UNSUPPORTED_SUFFIXES:
        raise InputError(f"cannot write {suffix} files; write .mp4, .png, or a folder of PNGs")
    return "folder"


class AtomicTarget:
    """A temporary path beside `target`, moved onto it when the output is complete."""

    def __init__(self, target: Path, overwrite: bool) -> None:
        self.target = target
        if target.exists() and not overwrite:
            raise InputError(f"{target} exists; pass --overwrite to replace it")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(f"cannot create the folder {target.parent}: {error.strerror}") from None
        if not os.access(target.parent, os.W_OK):
            raise InputError(f"cannot write to {target.parent}: permission denied")
        self.temp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"

    def commit(self) -> None:
        """Move the finished temporary output onto the target, replacing what was there."""
        old = None
        if self.target.is_dir() and not self.target.is_symlink():
            old = self.target.parent / f".{self.target.name}.{uuid.uuid4().hex[:8]}.old"
            os.replace(self.target, old)
        os.replace(self.temp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def remove(self) -> None:
        if self.temp.is_dir():
            shutil.rmtree(self.temp, ignore_errors=True)
        else:
            self.temp.unlink(missing_ok=True)


class Mp4Writer:
    """H.264 yuv420p at the exact frame size, through the ffmpeg that imageio-ffmpeg ships.

    ffmpeg runs as our own child so that its exit status and its error message are ours to
    read; its stderr goes to a temporary file, and the last line is what the user sees.
    It runs in a session of its own so that a Ctrl-C in the terminal does not kill it first.
    """

    def __init__(self, target: AtomicTarget, size: tuple[int, int], fps: float, crf: int) -> None:
        height, width = size
        if height % 2 or width % 2:
            raise InputError(f"H.264 yuv420p needs even frame sizes, not {width}x{height}; write PNGs instead")
        self.target = target
        self.log = tempfile.TemporaryFile()
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{fps}", "-i", "-",
            "-an", "-c:v", "libx264", "-preset", "medium", "-crf", str(crf), "-pix_fmt", "yuv420p",
            "-movflags", "+faststart", "-f", "mp4", str(target.temp),
        ]  # fmt: skip
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stderr=self.log, stdout=subprocess.DEVNULL, start_new_session=True
            )
        except OSError as error:
            self.log.close()
            raise RunError(f"cannot start ffmpeg: {error.strerror or error}") from None

    def write(self, frames: np.ndarray) -> None:
        try:
            self.process.stdin.write(np.ascontiguousarray(frames).data)
        except (BrokenPipeError, OSError):
            self.process.wait()
            raise RunError(f"ffmpeg failed: {self._ffmpeg_message()}") from None

    def finish(self) -> None:
        try:
            self.process.stdin.close()
        except OSError:
            pass
        if self.process.wait() != 0:
            raise RunError(f"ffmpeg failed: {self._ffmpeg_message()}")
        self.log.close()
        self.target.commit()

    def abort(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()
        self.target.remove()

    def _ffmpeg_message(self) -> str:
        self.log.seek(0)
        lines = [line.strip() for line in self.log.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else f"exit status {self.process.returncode}"


class PngWriter:
    """One frame into one PNG file."""

    def __init__(self, target: AtomicTarget) -> None:
        self.target = target
        self.written = False

    def write(self, frames: np.ndarray) -> None:
        if self.written or len(frames) != 1:
            raise InputError("a .png output holds one frame; give a folder to write one PNG per frame")
        _write_png(self.target.temp, frames[0])
        self.written = True

    def finish(self) -> None:
        self.target.commit()

    def abort(self) -> None:
        self.target.remove()


class PngFolderWriter:
    """Frames into a folder as 00000.png, 00001.png, ... in frame order."""

    def __init__(self, target: AtomicTarget) -> None:
        self.target = target
        self.count = 0
        target.temp.mkdir()

    def write(self, frames: np.ndarray) -> None:
        for frame in frames:
            _write_png(self.target.temp / f"{self.count:05d}.png", frame)
            self.count += 1

    def finish(self) -> None:
        self.target.commit()

    def abort(self) -> None:
        self.target.remove()


def _write_png(path: Path, frame: np.ndarray) -> None:
    try:
        iio.imwrite(path, frame, extension=".png", compress_level=PNG_COMPRESSION)
    except OSError as error:
        raise RunError(f"cannot write {path.name}: {error.strerror or error}") from None


def open_writer(path: Path, frame_size: tuple[int, int], n_frames: int, overwrite: bool, fps: float, crf: int):
    """The writer for `path`, checked against the clip before any decoding starts."""
    kind = output_kind(path)
    if kind == "png" and n_frames != 1:
        raise InputError(f"{n_frames} frames cannot go into one .png; give a folder (e.g. {path.with_suffix('')}/)")
    target = AtomicTarget(path, overwrite)
    if kind == "mp4":
        return Mp4Writer(target, frame_size, fps, crf)
    if kind == "png":
        return PngWriter(target)
    return PngFolderWriter(target)
