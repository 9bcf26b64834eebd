"""Writers: every format reads back as written, options and suffixes are checked before any work,
folders movq did not write are never replaced, and nothing is left behind when writing fails."""

from __future__ import annotations

import errno
import os
import re
import threading

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
from conftest import assert_one_line_error, movq
from PIL import Image, ImageSequence

from movq_cli.checkpoints import weights
from movq_cli.errors import InputError, RunError
from movq_cli.io import codes as codes_io
from movq_cli.io import writers
from movq_cli.io.targets import MANIFEST
from movq_cli.io.writers import (
    GifWriter,
    JpegWriter,
    PngFolderWriter,
    WriteOptions,
    Writer,
    get_writer,
    writer_class,
)
from movq_cli.models.family import DecodeOptions
from movq_cli.pipeline import BackgroundWriter, decode_frames, decode_to_file, prepare

FORMATS_LISTED = ".mp4, .webm, .gif, .webp, .png, .jpg, or a folder of PNG frames"


def _moving_gradient(n_frames: int = 5, height: int = 24, width: int = 32) -> np.ndarray:
    y, x = np.mgrid[:height, :width]
    frames = [np.stack([x * 8 + t * 10, y * 10, (x + y) * 4 + t * 20], -1) for t in range(n_frames)]
    return np.clip(frames, 0, 255).astype(np.uint8)


def _read_video(path) -> tuple[np.ndarray, float]:
    """Every frame read back from `path` (N, H, W, 3), and the frame rate: by ffmpeg, but an animated
    WebP by Pillow, since ffmpeg decodes those only from its 8.0 (imageio-ffmpeg 0.8)."""
    if str(path).endswith(".webp"):
        with Image.open(path) as animation:
            frames = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(animation)]
            return np.stack(frames), 1000 / animation.info["duration"]
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    return np.stack([np.frombuffer(frame, np.uint8).reshape(height, width, 3) for frame in reader]), meta["fps"]


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    """Three frames of 6x5 codes: 12x10 pixels with the small model."""
    path = tmp_path_factory.mktemp("codes") / "clip.npy"
    np.save(path, np.random.default_rng(0).integers(0, 64, (3, 6, 5)))
    return path


@pytest.fixture(scope="module")
def model(small_folder):
    return weights.load(small_folder[0])


# ---- each format reads back as written ------------------------------------------------------


@pytest.mark.parametrize("suffix, tolerance", [(".mp4", 6), (".webm", 6), (".gif", 10), (".webp", 6)])
def test_each_animated_format_reads_back_every_frame(suffix, tolerance, tmp_path):
    frames = _moving_gradient()
    out = tmp_path / f"clip{suffix}"
    with get_writer(out, (24, 32), 5, WriteOptions(fps=10)) as writer:
        writer.write(frames[:3])
        writer.write(frames[3:])
    got, fps = _read_video(out)
    assert got.shape == frames.shape
    assert np.abs(got.astype(int) - frames).mean() < tolerance
    assert round(fps) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


@pytest.mark.parametrize("suffix", [".webm", ".gif", ".webp"])
def test_new_formats_through_the_command(suffix, clip_path, small_folder, tmp_path):
    out = tmp_path / f"clip{suffix}"
    result = movq("decode", clip_path, out, "-w", small_folder[0], "--fps", "8", "--chunk", "2")
    assert result.exit_code == 0, result.output
    got, _ = _read_video(out)
    assert got.shape == (3, 12, 10, 3)
    if suffix != ".webm":
        with Image.open(out) as picture:
            assert picture.n_frames == 3 and picture.is_animated and picture.info["loop"] == 0  # loops forever
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_one_frame_as_jpeg_and_a_preview_as_jpeg(model, clip_path, small_folder, tmp_path):
    result = movq("decode", clip_path, tmp_path / "two.jpg", "-w", small_folder[0], "--frames", "2:3")
    assert result.exit_code == 0, result.output
    jpeg = iio.imread(tmp_path / "two.jpg").astype(int)
    expected = next(decode_frames(prepare(model, codes_io.read(clip_path), [2])))[0]
    assert jpeg.shape == expected.shape == (12, 10, 3)
    assert np.abs(jpeg - expected).mean() < 12  # noise-like pixels, at quality 95
    sheet = movq("preview", clip_path, tmp_path / "sheet.jpeg", "-w", small_folder[0], "--count", "2")
    assert sheet.exit_code == 0, sheet.output
    assert iio.imread(tmp_path / "sheet.jpeg").shape == (12, 2 * 10 + 2, 3)


# ---- what OUT names, and which options it takes ---------------------------------------------


def test_the_suffix_picks_the_writer_and_folders_are_named_three_ways(tmp_path):
    (tmp_path / "frames.v1").mkdir()
    assert writer_class(tmp_path / "frames.v1") is PngFolderWriter  # an existing folder
    assert writer_class(f"{tmp_path / 'frames.v2'}{os.sep}") is PngFolderWriter  # a trailing slash
    assert writer_class(tmp_path / "frames") is PngFolderWriter  # no suffix
    assert writer_class("a.JPEG") is JpegWriter and writer_class("a.gif") is GifWriter
    with pytest.raises(InputError, match="cannot write .v2 files"):
        writer_class(tmp_path / "frames.v2")


def test_a_trailing_slash_makes_a_folder_of_any_name(model, clip_path, tmp_path):
    decode_to_file(prepare(model, codes_io.read(clip_path)), f"{tmp_path / 'take.v2'}{os.sep}")
    assert sorted(p.name for p in (tmp_path / "take.v2").iterdir()) == [MANIFEST] + [f"{i:05d}.png" for i in range(3)]


@pytest.mark.parametrize("name", ["out.npy", "out.txt", "out.json"])
def test_an_unknown_suffix_is_refused_with_the_formats_movq_writes(name, clip_path, small_folder, tmp_path):
    result = movq("decode", clip_path, tmp_path / "out" / name, "-w", small_folder[0])
    assert_one_line_error(result, 2, f"cannot write {name[3:]} files; movq writes {FORMATS_LISTED}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "option, out, what",
    [
        (["--fps", "12"], "one.png", ".png output"),
        (["--crf", "20"], "one.jpg", ".jpg output"),
        (["--fps", "12"], "frames", "a folder of PNG frames"),
        (["--crf", "20"], "clip.gif", ".gif output"),
        (["--crf", "20"], "clip.webp", ".webp output"),
    ],
)
def test_an_option_the_format_has_no_use_for_is_refused(option, out, what, clip_path, small_folder, tmp_path):
    result = movq("decode", clip_path, tmp_path / out, "-w", small_folder[0], "--frames", ":1", *option)
    assert_one_line_error(result, 2, f"{option[0]} has no use for {what}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "suffix, frame_size, n_frames, options, needle",
    [
        (".mp4", (11, 10), 2, WriteOptions(), "even frame sizes"),
        (".mp4", (10, 10), 2, WriteOptions(crf=52), "crf=... for .mp4 goes from 0 to 51"),
        (".webm", (10, 10), 2, WriteOptions(crf=64), "crf=... for .webm goes from 0 to 63"),
        (".webp", (10, 16384), 2, WriteOptions(), "at most 16383 pixels"),
        (".gif", (1024, 1024), 2000, WriteOptions(), "pick fewer with frames=..."),
        (".png", (10, 10), 3, WriteOptions(), "3 frames cannot go into one .png"),
        (
            ".jpg",
            (10, 10),
            3,
            WriteOptions(),
            "pick one with frames=N:N+1, or see several on one sheet with movq preview",
        ),
    ],
)
def test_a_clip_the_format_cannot_hold_is_refused_before_anything_is_written(
    suffix, frame_size, n_frames, options, needle, tmp_path
):
    with pytest.raises(InputError, match=re.escape(needle)):
        get_writer(tmp_path / f"out{suffix}", frame_size, n_frames, options)
    assert list(tmp_path.iterdir()) == []


def test_vp9_takes_odd_sizes_and_its_own_crf_range(tmp_path):
    frames = _moving_gradient(3, 11, 13)
    with get_writer(tmp_path / "odd.webm", (11, 13), 3, WriteOptions(crf=63)) as writer:
        writer.write(frames)
    assert _read_video(tmp_path / "odd.webm")[0].shape == (3, 11, 13, 3)


def test_many_frames_into_one_picture_suggest_what_to_do(clip_path, small_folder, tmp_path):
    for name in ("x.png", "x.jpg"):
        result = movq("decode", clip_path, tmp_path / name, "-w", small_folder[0])
        assert_one_line_error(result, 2, f"3 frames cannot go into one {name[1:]}")
        assert "--frames N:N+1" in result.stderr and "movq preview" in result.stderr
    assert list(tmp_path.iterdir()) == []


# ---- replacing what is there ----------------------------------------------------------------


def test_overwrite_never_removes_a_file_movq_did_not_write(clip_path, small_folder, tmp_path):
    out = tmp_path / "frames"
    out.mkdir()
    for name in ("00000.png", "00001.png", "notes.txt"):
        (out / name).write_text(f"the user's {name}")
    result = movq("decode", clip_path, out, "-w", small_folder[0], "--overwrite")
    assert_one_line_error(result, 2, "holds notes.txt, which movq did not write")
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        name: f"the user's {name}" for name in ("00000.png", "00001.png", "notes.txt")
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


def test_overwrite_never_replaces_a_folder_with_a_file(clip_path, small_folder, tmp_path):
    (tmp_path / "clip.mp4").mkdir()
    (tmp_path / "clip.mp4" / "00000.png").write_bytes(b"not really")
    result = movq("decode", clip_path, tmp_path / "clip.mp4", "-w", small_folder[0], "--overwrite")
    assert_one_line_error(result, 2, "clip.mp4 is a folder")
    assert (tmp_path / "clip.mp4" / "00000.png").read_bytes() == b"not really"


@pytest.mark.parametrize(
    "place", ["current folder", "parent of the current folder", "home folder", "parent of the input"]
)
def test_overwrite_never_replaces_a_folder_the_user_stands_in(place, small_folder, tmp_path, monkeypatch):
    frames = tmp_path / "work" / "frames"
    frames.mkdir(parents=True)
    (frames / "00000.png").write_bytes(b"an old frame")
    codes = (frames if place == "parent of the input" else tmp_path) / "clip.npy"
    np.save(codes, np.zeros((2, 4, 4), np.int64))
    monkeypatch.setenv("HOME", str(frames if place == "home folder" else tmp_path / "home"))
    monkeypatch.chdir(frames if "current folder" in place else tmp_path)
    out, needle = {
        "current folder": (".", "it is the current folder"),
        "parent of the current folder": ("..", "it holds the current folder"),
        "home folder": (frames, "it is your home folder"),
        "parent of the input": (frames, "would replace the input"),
    }[place]
    result = movq("decode", codes, out, "-w", small_folder[0], "--overwrite")
    assert_one_line_error(result, 2, needle)
    assert (frames / "00000.png").read_bytes() == b"an old frame"
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["work", "frames", "00000.png", "clip.npy"])


def test_a_shorter_overwrite_leaves_no_stale_frames(model, clip_path, tmp_path):
    clip, out = codes_io.read(clip_path), tmp_path / "frames"
    decode_to_file(prepare(model, clip), out)
    last = iio.imread(out / "00002.png")
    decode_to_file(prepare(model, clip, slice(2, None)), out, WriteOptions(overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "00000.png"]
    assert np.array_equal(iio.imread(out / "00000.png"), last)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


@pytest.mark.parametrize("code, words", [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied")])
@pytest.mark.parametrize("name", ["clip.mp4", "frames"])
def test_an_unwritable_place_says_why(code, words, name, clip_path, small_folder, tmp_path, monkeypatch):
    real_open, real_mkdir = os.open, os.mkdir

    def refused(real):
        def call(path, *args, **kwargs):
            if str(path).endswith(".partial"):
                raise OSError(code, os.strerror(code), str(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "open", refused(real_open))
    monkeypatch.setattr(os, "mkdir", refused(real_mkdir))
    result = movq("decode", clip_path, tmp_path / name, "-w", small_folder[0])
    assert_one_line_error(result, 2, f"cannot write to {tmp_path}: {words}")
    assert list(tmp_path.iterdir()) == []


# ---- nothing is left behind when writing fails ----------------------------------------------


@pytest.fixture
def ffmpeg_children(monkeypatch):
    """Every ffmpeg process the writers start."""
    started, popen = [], writers.subprocess.Popen

    def recorded(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(writers.subprocess, "Popen", recorded)
    return started


@pytest.mark.parametrize("name, writer", [("clip.gif", writers.FfmpegWriter), ("frames", PngFolderWriter)])
def test_a_writer_failing_midway_leaves_nothing(name, writer, model, clip_path, tmp_path, monkeypatch, ffmpeg_children):
    calls, write = [], writer.write

    def fails_second_time(self, frames):
        calls.append(len(frames))
        if len(calls) == 2:
            raise RunError("the disk caught fire")
        write(self, frames)

    monkeypatch.setattr(writer, "write", fails_second_time)
    with pytest.raises(RunError, match="the disk caught fire"):
        decode_to_file(prepare(model, codes_io.read(clip_path), options=DecodeOptions(chunk=2)), tmp_path / name)
    assert calls == [2, 1] and list(tmp_path.iterdir()) == []
    assert all(child.poll() is not None for child in ffmpeg_children)


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm", "clip.gif", "clip.webp", "frames"])
def test_an_interrupted_decode_leaves_nothing_and_no_ffmpeg(name, model, clip_path, tmp_path, ffmpeg_children):
    def interrupt(frames: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        plan = prepare(model, codes_io.read(clip_path), options=DecodeOptions(chunk=1))
        decode_to_file(plan, tmp_path / name, on_frames=interrupt)
    assert list(tmp_path.iterdir()) == []
    assert all(child.poll() is not None for child in ffmpeg_children)


# ---- the writer thread ----------------------------------------------------------------------


class Recorder(Writer):
    """A writer that remembers what it was asked to do; `fail_at` chunk raises, `hold` blocks writes."""

    suffix = ".test"

    def __init__(self, fail_at: int | None = None, hold: threading.Event | None = None) -> None:
        self.chunks: list[int] = []
        self.calls: list[str] = []
        self.fail_at, self.hold = fail_at, hold

    def write(self, frames: np.ndarray) -> None:
        if len(self.chunks) == self.fail_at:
            raise RunError("cannot write chunk")
        if self.hold is not None:
            released = self.hold.wait(timeout=60)  # a bound on a hang, not a measurement
            self.calls.append("write released" if released else "write never released")
        self.chunks.append(int(frames[0, 0, 0, 0]))

    def finish(self) -> None:
        self.calls.append("finish")

    def abort(self) -> None:
        self.calls.append("abort")
        if self.hold is not None:
            self.hold.set()  # as killing ffmpeg ends a write into its pipe


def _chunk(number: int) -> np.ndarray:
    return np.full((1, 2, 2, 3), number, np.uint8)


def test_the_background_writer_writes_every_chunk_in_order_then_finishes():
    recorder = Recorder()
    with BackgroundWriter(recorder) as background:
        for number in range(20):
            background.put(_chunk(number))
    assert recorder.chunks == list(range(20)) and recorder.calls == ["finish"]


def test_what_the_writer_raised_reaches_the_decoding_thread_and_aborts_the_output():
    recorder = Recorder(fail_at=2)
    with pytest.raises(RunError, match="cannot write chunk"), BackgroundWriter(recorder) as background:
        for number in range(20):
            background.put(_chunk(number))
    assert recorder.chunks == [0, 1] and "finish" not in recorder.calls and "abort" in recorder.calls


def test_an_interruption_drops_queued_chunks_and_unblocks_a_stuck_write(monkeypatch):
    monkeypatch.setattr("movq_cli.pipeline.UNBLOCK_AFTER", 0.05)
    recorder = Recorder(hold=threading.Event())
    with pytest.raises(KeyboardInterrupt), BackgroundWriter(recorder) as background:
        for number in range(3):  # one in the stuck write, two queued
            background.put(_chunk(number))
        raise KeyboardInterrupt
    assert recorder.chunks == [0]  # the queued chunks were dropped
    # the stuck write ended because the output was aborted (as killing ffmpeg ends it), then aborted for good
    assert recorder.calls == ["abort", "write released", "abort"]
    assert not any(thread.name == "movq-writer" and thread.is_alive() for thread in threading.enumerate())


def test_an_abandoned_writer_thread_ends_even_if_its_end_marker_is_lost(monkeypatch):
    """An interruption can land inside the queue's own code and lose the marker that ends the
    writer thread (a Ctrl-C hung `movq decode` that way): the thread also ends on seeing itself abandoned."""
    recorder = Recorder()
    background = BackgroundWriter(recorder).__enter__()
    background.put(_chunk(0))
    monkeypatch.setattr(background._queue, "put_nowait", lambda item: None)  # the marker, lost
    leaving = threading.Thread(target=background.__exit__, args=(KeyboardInterrupt, KeyboardInterrupt(), None))
    leaving.daemon = True  # a hang fails the test instead of holding it
    leaving.start()
    leaving.join(timeout=10)
    assert not leaving.is_alive() and not background._thread.is_alive()
    assert recorder.calls[-1] == "abort"


def test_an_output_folder_made_by_another_worker_meanwhile_is_used(tmp_path, monkeypatch):
    """Two workers writing into the same new folder: the one that finds it made between its look
    and its mkdir writes there too (it used to fail its file with "File exists")."""
    from pathlib import Path

    from movq_cli.io.targets import AtomicTarget

    folder = tmp_path / "new" / "deeper"
    folder.mkdir(parents=True)
    is_dir, looks = Path.is_dir, []

    def looked_too_early(self):  # the first look came before the other worker made the folder
        looks.append(self)
        return len(looks) > 1 and is_dir(self)

    monkeypatch.setattr(Path, "is_dir", looked_too_early)
    target = AtomicTarget(folder / "clip.mp4", overwrite=False)
    monkeypatch.undo()
    assert target.temp.parent == folder and target.temp.exists()
    target.remove()
