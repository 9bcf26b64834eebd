"""Writers: frames (N, H, W, 3) uint8 in; a video, an animation, one picture or a folder of PNGs out.

`get_writer` picks the writer from the output's suffix (`WRITERS`) and checks the clip against
it before any decoding. Each writer works under a temporary name beside the target and moves it
into place only in `finish()`; `abort()` removes everything it wrote.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
from abc import ABC, abstractmethod
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np

from movq_cli.errors import InputError, RunError, reason
from movq_cli.io.targets import AtomicTarget

DEFAULT_FPS = 24.0
MAX_FPS = 1000.0  # ffmpeg's frame rates are fractions of 32-bit integers; 1e308 fails only after the decode
PNG_COMPRESSION = 1  # zlib level: fast to write, and decoding dominates anyway
JPEG_QUALITY = 95
WEBP_QUALITY = 90
GIF_MEMORY = 4 * 2**30  # bytes of frames ffmpeg may hold while it builds a GIF's palette


@dataclass(frozen=True)
class WriteOptions:
    """How frames are written; None means "not given": the format's default (a video's 24 fps)."""

    fps: float | None = None
    crf: int | None = None
    encoder: str | None = None  # an MP4's H.264 encoder, from ENCODERS (None: default_encoder's)
    numbers: tuple[int, ...] | None = None  # a folder of PNG frames: each frame's file number (None: 0, 1, ...)
    overwrite: bool = False  # replace an output movq wrote before
    source_numbers: bool = False  # a folder's frames named by their number in the whole output (sets `numbers`)


FORMAT_OPTIONS = ("fps", "crf", "encoder", "numbers")  # the WriteOptions a format may have no use for


class ManyFrames(InputError):
    """More frames than a one-picture format holds."""


class Writer(ABC):
    """Frames in, one output out: `write()` chunks in order, then `finish()`, or `abort()` on failure.

    As a context manager it finishes when its block succeeds and aborts when the block raises.
    """

    suffix: ClassVar[str]  # "" for a folder
    uses: ClassVar[frozenset[str]] = frozenset()  # the WriteOptions fields it has a use for
    one_frame: ClassVar[bool] = False
    max_side: ClassVar[int | None] = None

    def __init__(self, target: AtomicTarget, frame_size: tuple[int, int], options: WriteOptions) -> None:
        self.target = target

    @classmethod
    def what(cls) -> str:
        return f"{cls.suffix} output" if cls.suffix else "a folder of PNG frames"

    @classmethod
    def check_options(cls, options: WriteOptions) -> None:
        """Raise InputError for an option given that this format has no use for."""
        if options.source_numbers and "numbers" not in cls.uses:
            raise InputError(f"source_numbers=True names the files of a folder of PNG frames, not {cls.what()}")
        for name in FORMAT_OPTIONS:
            if getattr(options, name) is not None and name not in cls.uses:
                raise InputError(f"{name}=... has no use for {cls.what()}")
        if options.fps is not None and not 0 < options.fps <= MAX_FPS:  # also NaN and infinity
            raise InputError(f"fps=... must be more than 0 and at most {MAX_FPS:g}, not {options.fps}")

    @classmethod
    def check_frames(cls, frame_size: tuple[int, int], n_frames: int) -> None:
        """Raise InputError unless `n_frames` frames of `frame_size` (height, width) fit this format."""
        height, width = frame_size
        if cls.one_frame and n_frames != 1:
            raise ManyFrames(
                f"{n_frames} frames cannot go into one {cls.suffix}; write them to a folder of PNG frames, "
                f"pick one with frames=N:N+1, or see several on one sheet with movq preview"
            )
        if cls.max_side is not None and max(height, width) > cls.max_side:
            raise InputError(f"{cls.suffix} pictures are at most {cls.max_side} pixels a side, not {height}x{width}")

    @abstractmethod
    def write(self, frames: np.ndarray) -> None:
        """Append frames (n, H, W, 3) uint8."""

    def finish(self) -> None:
        """Complete the output and move it onto the target."""
        self.target.commit()

    def abort(self) -> None:
        """Stop and remove everything written; safe to call more than once."""
        self.target.remove()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None:
            self.abort()
            return
        try:
            self.finish()
        except BaseException:
            self.abort()
            raise


class FfmpegWriter(Writer):
    """Frames piped as raw RGB into the ffmpeg that imageio-ffmpeg ships; subclasses name the encoding.

    ffmpeg runs as our own child so that its exit status and its error message are ours to
    read; its stderr goes to a temporary file, and the last line is what the user sees.
    It runs in a session of its own so that a Ctrl-C in the terminal does not kill it first.
    """

    uses = frozenset({"fps"})
    muxer: ClassVar[str]

    def __init__(self, target: AtomicTarget, frame_size: tuple[int, int], options: WriteOptions) -> None:
        super().__init__(target, frame_size, options)
        height, width = frame_size
        fps = DEFAULT_FPS if options.fps is None else options.fps
        output, kept = str(target.temp), ()
        if os.path.isdir("/proc/self/fd"):
            # ffmpeg opens the temporary through a descriptor it inherits, not by its name: if the
            # temporary is removed while ffmpeg starts (its worker died), ffmpeg cannot create it again
            descriptor = os.open(target.temp, os.O_WRONLY)
            output, kept = f"/proc/self/fd/{descriptor}", (descriptor,)
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{fps}", "-i", "-",
            "-an", *self.encoding(options), "-f", self.muxer, output,
        ]  # fmt: skip
        self.log = tempfile.TemporaryFile()
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stderr=self.log, stdout=subprocess.DEVNULL, start_new_session=True,
                pass_fds=kept,
            )  # fmt: skip
        except OSError as error:
            self.log.close()
            raise RunError(f"cannot start ffmpeg: {error.strerror or error}") from None
        finally:
            for descriptor in kept:
                os.close(descriptor)

    @abstractmethod
    def encoding(self, options: WriteOptions) -> list[str]:
        """ffmpeg's output arguments for this format, up to the muxer."""

    def write(self, frames: np.ndarray) -> None:
        try:
            self.process.stdin.write(np.ascontiguousarray(frames).data)
        except OSError:
            self.process.wait()
            raise RunError(f"ffmpeg failed: {self._ffmpeg_message()}") from None

    def finish(self) -> None:
        with suppress(OSError):
            self.process.stdin.close()
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


class VideoWriter(FfmpegWriter):
    """A video whose quality is a constant rate factor: --crf, from `crfs` (lower is better)."""

    uses = frozenset({"fps", "crf"})
    crfs: ClassVar[range]
    default_crf: ClassVar[int]

    @classmethod
    def check_options(cls, options: WriteOptions) -> None:
        super().check_options(options)
        if options.crf is not None and options.crf not in cls.crfs:
            raise InputError(f"crf=... for {cls.suffix} goes from {cls.crfs.start} to {cls.crfs.stop - 1}")

    def crf(self, options: WriteOptions) -> str:
        return str(self.default_crf if options.crf is None else options.crf)


X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
# --encoder -> ffmpeg's video codec and its speed setting; --crf is x264's -crf and NVENC's -cq
ENCODERS = {**{f"x264-{preset}": ("libx264", preset) for preset in X264_PRESETS}, "nvenc": ("h264_nvenc", "p4")}
CPU_ENCODER = "x264-medium"  # next to a CPU decoder, encoding takes a small share of the time
GPU_ENCODER = "x264-veryfast"  # next to a GPU decoder, medium would set the pace (README, "Many GPUs and clusters")


def default_encoder(device_type: str) -> str:
    """The MP4 encoder when none is given: x264 medium on the CPU, veryfast beside a GPU."""
    return GPU_ENCODER if device_type == "cuda" else CPU_ENCODER


class Mp4Writer(VideoWriter):
    """H.264 yuv420p at the exact frame size, by x264 at a preset (--encoder x264-PRESET) or NVENC."""

    suffix, muxer = ".mp4", "mp4"
    uses = frozenset({"fps", "crf", "encoder"})
    crfs, default_crf = range(52), 18

    @classmethod
    def check_options(cls, options: WriteOptions) -> None:
        super().check_options(options)
        if options.encoder is not None and options.encoder not in ENCODERS:
            raise InputError(f"unknown encoder={options.encoder!r}; use {', '.join(ENCODERS)}")
        if options.encoder == "nvenc":
            _check_nvenc()

    @classmethod
    def check_frames(cls, frame_size: tuple[int, int], n_frames: int) -> None:
        super().check_frames(frame_size, n_frames)
        height, width = frame_size
        if height % 2 or width % 2:
            raise InputError(f"H.264 yuv420p needs even frame sizes, not {height}x{width}; write .webm or PNGs instead")

    def encoding(self, options: WriteOptions) -> list[str]:
        codec, speed = ENCODERS[options.encoder or CPU_ENCODER]
        quality = (
            ["-crf", self.crf(options)] if codec == "libx264" else ["-rc", "vbr", "-cq", self.crf(options), "-b:v", "0"]
        )
        return ["-c:v", codec, "-preset", speed, *quality, "-pix_fmt", "yuv420p", "-movflags", "+faststart"]


@functools.cache
def _check_nvenc() -> None:
    """Raise InputError unless the bundled ffmpeg can encode with NVENC here: it is built with
    h264_nvenc, but NVENC needs an NVIDIA GPU and its driver, which only a trial encode shows."""
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi",
        "-i", "color=size=256x256:duration=0.1", "-c:v", "h264_nvenc", "-f", "null", "-",
    ]  # fmt: skip
    try:
        trial = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise InputError(f"encoder=nvenc: cannot run ffmpeg: {error}") from None
    if trial.returncode != 0:
        lines = [line.strip() for line in trial.stderr.splitlines() if line.strip()]
        own = [line for line in lines if line.startswith("[h264_nvenc")]  # the encoder's, not ffmpeg's aftermath
        why = re.sub(r"^\[[^]]*\]\s*", "", own[0]) if own else lines[0] if lines else f"exit status {trial.returncode}"
        raise InputError(f"encoder=nvenc needs an NVIDIA GPU with its driver, and ffmpeg says: {why}")


class WebmWriter(VideoWriter):
    """VP9 yuv420p in constant quality mode (its crf with no bitrate target)."""

    suffix, muxer = ".webm", "webm"
    crfs, default_crf = range(64), 24

    def encoding(self, options: WriteOptions) -> list[str]:
        return ["-c:v", "libvpx-vp9", "-crf", self.crf(options), "-b:v", "0", "-row-mt", "1", "-pix_fmt", "yuv420p"]


class GifWriter(FfmpegWriter):
    """An endlessly looping GIF with one 256-colour palette made from the whole clip.

    ffmpeg holds every frame until the palette is known, so the clip's size is checked first.
    The palette is counted from colours rounded to 5 bits a channel: palettegen takes seconds
    a frame over millions of distinct colours, and 32768 give the same 256.
    """

    suffix, muxer = ".gif", "gif"
    max_side = 65535
    palette = (
        "split[frames][counted];"
        "[counted]lutrgb=r=bitand(val\\,248)+4:g=bitand(val\\,248)+4:b=bitand(val\\,248)+4,"
        "palettegen=reserve_transparent=0[palette];"
        "[frames][palette]paletteuse"
    )

    @classmethod
    def check_frames(cls, frame_size: tuple[int, int], n_frames: int) -> None:
        super().check_frames(frame_size, n_frames)
        height, width = frame_size
        if n_frames * height * width * 3 > GIF_MEMORY:
            raise InputError(
                f"a .gif of {n_frames} frames of {height}x{width} is made in memory, over "
                f"{GIF_MEMORY // 2**30} GiB; pick fewer with frames=..., or write .webm or .mp4"
            )

    def encoding(self, options: WriteOptions) -> list[str]:
        return ["-vf", self.palette, "-loop", "0"]


class WebpWriter(FfmpegWriter):
    """An endlessly looping animated WebP, lossy at high quality."""

    suffix, muxer = ".webp", "webp"
    max_side = 16383

    def encoding(self, options: WriteOptions) -> list[str]:
        return ["-c:v", "libwebp_anim", "-quality", str(WEBP_QUALITY), "-loop", "0"]


class PictureWriter(Writer):
    """One frame into one picture file."""

    one_frame = True
    saving: ClassVar[dict]  # what imageio's writer is told

    def __init__(self, target: AtomicTarget, frame_size: tuple[int, int], options: WriteOptions) -> None:
        super().__init__(target, frame_size, options)
        self.written = False

    def write(self, frames: np.ndarray) -> None:
        if self.written or len(frames) != 1:
            raise InputError(f"a {self.suffix} output holds one frame; give a folder to write one PNG per frame")
        _write_image(self.target.temp, frames[0], self.suffix, self.saving, self.target.target)
        self.written = True


class PngWriter(PictureWriter):
    suffix = ".png"
    saving = {"compress_level": PNG_COMPRESSION}


class JpegWriter(PictureWriter):
    suffix = ".jpg"
    max_side = 65535
    saving = {"quality": JPEG_QUALITY}


class PngFolderWriter(Writer):
    """Frames into a folder as 00000.png, 00001.png, ... in frame order."""

    suffix = ""
    uses = frozenset({"numbers"})

    def __init__(self, target: AtomicTarget, frame_size: tuple[int, int], options: WriteOptions) -> None:
        super().__init__(target, frame_size, options)
        self.count = 0
        self.numbers = options.numbers

    def write(self, frames: np.ndarray) -> None:
        for frame in frames:
            number = self.count if self.numbers is None else self.numbers[self.count]
            name = f"{number:05d}.png"
            _write_image(self.target.temp / name, frame, ".png", PngWriter.saving, name)
            self.count += 1


def _write_image(path: Path, frame: np.ndarray, suffix: str, saving: dict, shown: str | Path) -> None:
    """Encode `frame` in memory, then write it to `path`: a failed write (a full disk) is one
    error that names `shown`, what the user asked for, and leaves no encoder to fail again when
    it is collected."""
    picture = iio.imwrite("<bytes>", frame, extension=suffix, plugin="pillow", **saving)
    try:
        path.write_bytes(picture)
    except FileNotFoundError:
        raise RunError(f"cannot write {shown}: the directory does not exist (removed while writing?)") from None
    except OSError as error:
        raise RunError(f"cannot write {shown}: {reason(error)}") from None


WRITERS: dict[str, type[Writer]] = {
    ".mp4": Mp4Writer, ".webm": WebmWriter, ".gif": GifWriter, ".webp": WebpWriter,
    ".png": PngWriter, ".jpg": JpegWriter, ".jpeg": JpegWriter, "": PngFolderWriter,
}  # fmt: skip
WRITTEN = ", ".join(dict.fromkeys(cls.suffix for cls in WRITERS.values() if cls.suffix)) + ", or a folder of PNG frames"


def names_a_folder(path: str | Path) -> bool:
    """Whether `path` means a folder of frames: a name ending in a slash, with no suffix, or an
    existing folder whose suffix is no format's (a trailing slash survives only in a str)."""
    text = str(path)
    suffix = Path(text).suffix.lower()
    return text.endswith(("/", os.sep)) or suffix == "" or (suffix not in WRITERS and Path(text).is_dir())


def writer_class(path: str | Path) -> type[Writer]:
    """The writer for `path`, from its suffix; InputError, listing what movq writes, for any other."""
    if names_a_folder(path):
        return PngFolderWriter
    suffix = Path(path).suffix.lower()
    if suffix not in WRITERS:
        raise InputError(f"cannot write {suffix} files; movq writes {WRITTEN}")
    return WRITERS[suffix]


def get_writer(
    path: str | Path,
    frame_size: tuple[int, int],
    n_frames: int,
    options: WriteOptions = WriteOptions(),
    device_type: str = "cpu",
) -> Writer:
    """The writer for `n_frames` frames of `frame_size` (height, width) into `path`, decoded on a
    device of `device_type` ("cpu", "cuda", ...), which chooses an MP4's default encoder.

    Everything that can be known before decoding is checked first (the format, its options,
    the frame count and size, the target and its folder); InputError says what is wrong.
    """
    kind = writer_class(path)
    kind.check_options(options)
    kind.check_frames(frame_size, n_frames)
    if options.encoder is None and "encoder" in kind.uses:
        options = replace(options, encoder=default_encoder(device_type))
    target = AtomicTarget(path, options.overwrite, folder=kind is PngFolderWriter)
    try:
        return kind(target, frame_size, options)
    except BaseException:
        target.remove()
        raise
