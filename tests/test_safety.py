"""Nothing lost, nothing left, never a traceback: races onto one output, what --overwrite may
delete, full disks, files that change while they are read, and what killed runs leave."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import assert_one_line_error, movq

from movq_cli.errors import InputError, RunError
from movq_cli.io import codes as codes_io
from movq_cli.io import targets
from movq_cli.io.targets import MANIFEST, AtomicTarget, move_without_replacing
from movq_cli.io.writers import WriteOptions
from movq_cli.models.family import DecodeOptions
from movq_cli.pipeline import decode_to_file, prepare

DEADLINE = 120  # seconds a subprocess may take to reach an event before the test gives up


@pytest.fixture(scope="module")
def model(small_folder):
    from movq_cli import load

    return load(small_folder[0])


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    """Three frames of 6x5 codes: 12x10 pixels with the small model."""
    path = tmp_path_factory.mktemp("codes") / "clip.npy"
    np.save(path, np.random.default_rng(0).integers(0, 64, (3, 6, 5)))
    return path


def _command(*args) -> list[str]:
    return [sys.executable, "-m", "movq_cli", *(str(arg) for arg in args)]


def _start(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        _command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    )


def _wait_for(condition, process: subprocess.Popen) -> None:
    """Wait for the event `condition()` while `process` runs."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)


def _partials(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.partial"))


# ---- without --overwrite, nothing is replaced: not even what appears while decoding --------------


def test_a_file_that_appears_at_out_while_decoding_is_kept_and_so_is_the_output(model, clip_path, tmp_path):
    out = tmp_path / "clip.mp4"

    def someone_writes_out(frames: int) -> None:
        if not out.exists():
            out.write_text("another program's file")

    with pytest.raises(RunError, match="clip.mp4 appeared while this output was written") as caught:
        decode_to_file(prepare(model, codes_io.read(clip_path), options=DecodeOptions(chunk=1)), out, on_frames=someone_writes_out)
    assert out.read_text() == "another program's file"
    kept = [path for path in tmp_path.iterdir() if path != out]
    assert len(kept) == 1 and kept[0].name.startswith("clip.") and kept[0].suffix == ".mp4"
    assert str(kept[0]) in str(caught.value) and kept[0].stat().st_size > 1000


def test_a_frame_folder_that_appears_while_decoding_is_kept_and_so_is_the_output(model, clip_path, tmp_path):
    out = tmp_path / "frames"

    def someone_makes_the_folder(frames: int) -> None:
        if not out.exists():
            out.mkdir()
            (out / "00000.png").write_text("another program's frame")

    with pytest.raises(RunError, match="appeared while this output was written"):
        decode_to_file(prepare(model, codes_io.read(clip_path), options=DecodeOptions(chunk=1)), out, on_frames=someone_makes_the_folder)
    assert [path.name for path in out.iterdir()] == ["00000.png"]
    assert (out / "00000.png").read_text() == "another program's frame"
    kept = [path for path in tmp_path.iterdir() if path != out]
    assert len(kept) == 1 and sorted(p.name for p in kept[0].iterdir()) == [
        MANIFEST,
        "00000.png",
        "00001.png",
        "00002.png",
    ]


@pytest.mark.parametrize("folder", [False, True], ids=["file", "folder"])
@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "fallback"])
def test_publishing_never_replaces_what_is_there(folder, renameat2, tmp_path, monkeypatch):
    if not renameat2:
        monkeypatch.setattr(targets, "RENAMEAT2", None)
    elif targets.RENAMEAT2 is None:
        pytest.skip("no renameat2 in this C library")
    source, destination = tmp_path / "new", tmp_path / "theirs"
    if folder:
        source.mkdir()
        (source / "00000.png").write_text("ours")
        destination.mkdir()
        (destination / "notes.txt").write_text("theirs")
    else:
        source.write_text("ours")
        destination.write_text("theirs")
    with pytest.raises(FileExistsError):
        move_without_replacing(source, destination)
    assert source.exists() and (destination / "notes.txt" if folder else destination).read_text() == "theirs"
    move_without_replacing(source, tmp_path / "free")
    assert not source.exists() and (tmp_path / "free").exists()


@pytest.mark.slow
def test_two_runs_onto_one_output_both_keep_their_work(small_folder, tmp_path):
    """Both runs look before either publishes (the first is held still until the second has its
    temporary): one output takes the name, the other is kept beside it, and its run says so."""
    np.save(tmp_path / "long.npy", np.random.default_rng(0).integers(0, 64, (200, 8, 8)))
    out = tmp_path / "out" / "clip.mp4"
    args = ("decode", tmp_path / "long.npy", out, "-w", small_folder[0], "--chunk", "1")
    first = _start(*args)
    _wait_for(lambda: len(_partials(out.parent)) == 1, first)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = _start(*args)
        _wait_for(lambda: len(_partials(out.parent)) == 2, second)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    results = [process.communicate(timeout=DEADLINE) for process in (first, second)]
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 1], results
    failed = results[[first.returncode, second.returncode].index(1)][1]
    assert "appeared while this output was written" in failed and "Traceback" not in failed
    outputs = sorted(p.name for p in out.parent.iterdir())
    assert len(outputs) == 2 and "clip.mp4" in outputs, outputs
    assert all((out.parent / name).stat().st_size > 1000 for name in outputs)


# ---- what --overwrite may delete ---------------------------------------------------------------


@pytest.mark.parametrize("change", ["a file named like a frame", "a frame rewritten", "a frame made a link"])
def test_overwrite_keeps_a_frame_folder_holding_anything_movq_did_not_write(change, model, clip_path, tmp_path):
    out = tmp_path / "frames"
    decode_to_file(prepare(model, codes_io.read(clip_path)), out)
    if change == "a file named like a frame":
        (out / "99999.png").write_text("the user's notes")
        culprit = "99999.png"
    elif change == "a frame rewritten":
        (out / "00001.png").write_text("the user's own picture")
        culprit = "00001.png"
    else:
        (out / "00002.png").unlink()
        (out / "00002.png").symlink_to(tmp_path / "elsewhere.png")
        culprit = "00002.png"
    before = {path.name: path.read_bytes() for path in out.iterdir() if not path.is_symlink()}
    with pytest.raises(InputError, match=f"holds {culprit}, which movq did not write"):
        decode_to_file(prepare(model, codes_io.read(clip_path)), out, WriteOptions(overwrite=True))
    assert {path.name: path.read_bytes() for path in out.iterdir() if not path.is_symlink()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


def test_overwrite_replaces_a_frame_folder_movq_wrote(model, clip_path, tmp_path):
    out = tmp_path / "frames"
    decode_to_file(prepare(model, codes_io.read(clip_path), slice(0, 1)), out)
    decode_to_file(prepare(model, codes_io.read(clip_path)), out, WriteOptions(overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "00000.png", "00001.png", "00002.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


# ---- a full disk: one line, nothing left ----------------------------------------------------------


@pytest.fixture
def full_disk(tmp_path):
    """(a folder on a full disk, what a subprocess writing there needs): a tiny tmpfs filled up
    where this test may mount one (root, as in CI), else a file size limit of one byte (writes fail
    with "File too large", as they fail with "No space left on device" on a full disk)."""
    folder = tmp_path / "full"
    folder.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True)
    except OSError:  # no mount command
        mounted = None
    if mounted is not None and mounted.returncode == 0:
        with contextlib.suppress(OSError), open(folder / "filler", "wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        yield folder, None
        subprocess.run(["umount", "-l", str(folder)], check=True)
        return

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))

    yield folder, limited


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        "one .png",
        "one .jpg",
        "a folder of frames",
        "preview",
        "batch --format png",
        "two workers",
        "mp4",
        "encode",
        "convert",
    ],
)
def test_a_full_disk_is_one_line_and_leaves_nothing(case, full_disk, small_folder, tmp_path):
    folder, preexec = full_disk
    np.save(tmp_path / "one.npy", np.random.default_rng(0).integers(0, 64, (1, 64, 64)))
    np.save(tmp_path / "two.npy", np.random.default_rng(1).integers(0, 64, (1, 64, 64)))
    iio.imwrite(tmp_path / "photo.png", np.random.default_rng(2).integers(0, 256, (64, 64, 3), np.uint8))
    weights = ("-w", small_folder[0])
    batch = ("decode", tmp_path / "one.npy", tmp_path / "two.npy", folder / "out", "--format", "png", *weights)
    args = {
        "one .png": ("decode", tmp_path / "one.npy", folder / "x.png", *weights),
        "one .jpg": ("decode", tmp_path / "one.npy", folder / "x.jpg", *weights),
        "a folder of frames": ("decode", tmp_path / "one.npy", folder / "frames", *weights),
        "preview": ("preview", tmp_path / "one.npy", folder / "sheet.png", *weights),
        "batch --format png": batch,
        "two workers": (*batch, "--device", "cpu,cpu"),
        "mp4": ("decode", tmp_path / "one.npy", folder / "x.mp4", *weights),
        "encode": ("encode", tmp_path / "photo.png", folder / "x.npy", "-w", small_folder[0]),
        "convert": ("convert", small_folder[0], folder / "x.safetensors"),
    }[case]
    done = subprocess.run(_command(*args), capture_output=True, text=True, preexec_fn=preexec, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line or "failed:" in line]
    assert errors and all(".partial" not in line for line in errors), done.stderr
    if "batch" in case or "workers" in case:
        assert done.stderr.count("failed: ") == 2, done.stderr
    else:
        assert_one_line_error(_Result(done), 1, "cannot write" if case != "mp4" else "ffmpeg failed")
        assert "unexpected" not in done.stderr
    assert sorted(p.name for p in folder.iterdir()) in ([], ["filler"])  # nothing partial, no folder made


class _Result:
    """A finished subprocess as assert_one_line_error reads a CliRunner result."""

    def __init__(self, done: subprocess.CompletedProcess) -> None:
        self.exit_code, self.stderr, self.output = done.returncode, done.stderr, done.stdout + done.stderr


def test_a_worker_stopped_while_it_exits_prints_no_traceback(small_folder, tmp_path, capfd):
    """The parent stops every worker when one cannot load the model; a worker that is already
    exiting then ends quietly, however late the SIGTERM comes."""
    import torch

    from movq_cli.batch import BatchOptions
    from movq_cli.workers import _Starter

    (tmp_path / "bad.safetensors").write_bytes(b"not weights")
    worker = _Starter(str(tmp_path / "bad.safetensors"), "fp32", 1, BatchOptions())(torch.device("cpu"))
    kind, _ = worker.connection.recv()
    assert kind == "error"
    while worker.process.is_alive():  # SIGTERM after SIGTERM, until one lands in the middle of its exit
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.process.pid, signal.SIGTERM)
        time.sleep(0.001)
    worker.process.join()
    assert "Traceback" not in capfd.readouterr().err
    assert worker.process.exitcode in (0, -signal.SIGTERM)


# ---- code files that change while they are read ----------------------------------------------------


def test_a_code_file_cut_short_after_it_was_opened_is_an_input_error(tmp_path):
    path = tmp_path / "clip.npy"
    np.save(path, np.zeros((8, 4, 4), np.int64))
    clip = codes_io.read(path)
    os.truncate(path, path.stat().st_size - 100)
    with pytest.raises(InputError, match="clip.npy changed while it was being read"):
        clip.frames(0, 8)


def test_a_code_file_rewritten_after_it_was_opened_is_an_input_error(tmp_path):
    path = tmp_path / "clip.npy"
    np.save(path, np.zeros((8, 4, 4), np.int64))
    clip = codes_io.read(path)
    os.utime(path, ns=(0, 1))  # np.save over it: same size, a new time
    with pytest.raises(InputError, match="changed while it was being read"):
        list(clip.chunks(2))


@pytest.mark.slow
@pytest.mark.parametrize("batch", [False, True], ids=["one file", "a batch"])
def test_a_code_file_cut_short_while_decoding_fails_that_file_with_one_line(batch, small_folder, tmp_path):
    """With a memory map this was SIGBUS: exit 135, no line, the partial left behind."""
    codes = tmp_path / "codes"
    codes.mkdir()
    np.save(codes / "long.npy", np.random.default_rng(0).integers(0, 64, (300, 8, 8)))
    np.save(codes / "short.npy", np.random.default_rng(1).integers(0, 64, (2, 8, 8)))
    out = tmp_path / "out"
    if batch:
        process = _start("decode", codes, out, "--format", "png-dir", "-w", small_folder[0], "--chunk", "1")
    else:
        process = _start("decode", codes / "long.npy", out / "long", "-w", small_folder[0], "--chunk", "1")
    _wait_for(lambda: out.is_dir() and any(p.name.startswith(".long") for p in _partials(out)), process)
    with open(codes / "long.npy", "r+b") as file:  # as np.save over it begins: the file emptied
        file.truncate(0)
    _, stderr = process.communicate(timeout=DEADLINE)
    assert "Traceback" not in stderr
    if batch:
        assert process.returncode == 1, stderr
        assert "long.npy changed while it was being read" in stderr and "1 done" in stderr and "1 failed" in stderr
        assert sorted(p.name for p in out.iterdir()) == ["short"]
    else:
        assert process.returncode == 2, stderr
        assert_one_line_error(
            _Result(subprocess.CompletedProcess([], 2, "", stderr)), 2, "changed while it was being read"
        )
        assert not out.exists()


def test_big_endian_codes_and_latents_decode_as_native_ones(model, tmp_path):
    codes = np.random.default_rng(0).integers(0, 64, (2, 4, 4))
    latents = np.random.default_rng(0).standard_normal((2, 4, 4, 4)).astype(np.float32)
    for name, array in (("codes", codes), ("latents", latents)):
        np.save(tmp_path / f"{name}.npy", array)
        np.save(tmp_path / f"{name}-big.npy", array.astype(array.dtype.newbyteorder(">")))
        decode_to_file(prepare(model, codes_io.read(tmp_path / f"{name}.npy")), tmp_path / f"{name}")
        decode_to_file(prepare(model, codes_io.read(tmp_path / f"{name}-big.npy")), tmp_path / f"{name}-big")
        for frame in ("00000.png", "00001.png"):
            assert (tmp_path / name / frame).read_bytes() == (tmp_path / f"{name}-big" / frame).read_bytes()


def test_float128_latents_are_refused_as_input(small_folder, tmp_path):
    np.save(tmp_path / "wide.npy", np.zeros((1, 4, 4, 4), np.longdouble))
    if np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("long double is 64 bits here")
    assert_one_line_error(
        movq("decode", tmp_path / "wide.npy", tmp_path / "x.png", "-w", small_folder[0]), 2, "128-bit floats"
    )


def test_a_compressed_npz_is_inflated_a_piece_at_a_time(tmp_path, monkeypatch):
    import tracemalloc

    monkeypatch.setattr(codes_io, "SCAN_BYTES", 8 << 20)

    frames = np.zeros((2048, 128, 128), np.int64)  # 256 MiB of codes, a few hundred KiB compressed
    frames[-1, -1, -1] = 7
    np.savez_compressed(tmp_path / "codes.npz", codes=frames)
    del frames
    tracemalloc.start()
    try:
        clip = codes_io.read(tmp_path / "codes.npz")
        codes_io.check_fits(clip, 4, 64)
        last = clip.frames(2047, 2048)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert last[0, -1, -1] == 7 and clip.n_frames == 2048
    assert peak < 64 * 2**20, peak  # an 8 MiB piece at a time, not the whole 256 MiB


# ---- what killed runs leave ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_rerun_removes_what_a_killed_run_left_and_nothing_of_a_live_one(small_folder, clip_path, tmp_path):
    np.save(tmp_path / "long.npy", np.random.default_rng(0).integers(0, 64, (300, 8, 8)))
    out = tmp_path / "out"
    for name in ("clip.mp4", "frames"):
        process = _start("decode", tmp_path / "long.npy", out / name, "-w", small_folder[0], "--chunk", "1")
        _wait_for(lambda name=name: any(p.name.startswith(f".{name}.") for p in _partials(out)), process)
        os.killpg(process.pid, signal.SIGKILL)  # what the out-of-memory killer does
        process.communicate()
    dead = _partials(out)
    assert len(dead) == 2
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_TEMPORARIES, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )  # a live run with temporaries for both outputs
    live = sorted(Path(holder.stdout.readline().strip()) for _ in range(2))
    assert movq("decode", clip_path, out / "clip.mp4", "-w", small_folder[0]).exit_code == 0
    assert movq("decode", clip_path, out / "frames", "-w", small_folder[0], "--skip-existing").exit_code == 0
    assert movq("decode", clip_path, out / "frames", "-w", small_folder[0], "--skip-existing").exit_code == 0
    assert _partials(out) == live
    holder.communicate("")
    assert holder.returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip.mp4", "frames"]


HOLD_TEMPORARIES = """
import sys
from pathlib import Path
from movq_cli.io.targets import AtomicTarget
out = Path(sys.argv[1])
targets = [AtomicTarget(out / "clip.mp4", overwrite=False), AtomicTarget(out / "frames", overwrite=False, folder=True)]
for target in targets:
    print(target.temp, flush=True)
sys.stdin.read()
for target in targets:
    target.remove()
"""


def test_skip_existing_removes_what_killed_runs_left(small_folder, clip_path, tmp_path):
    out = tmp_path / "clip.mp4"
    assert movq("decode", clip_path, out, "-w", small_folder[0]).exit_code == 0
    (tmp_path / ".clip.mp4.0123abcd.partial").write_bytes(b"half a video")  # unlocked: its run is gone
    (tmp_path / ".clip.mp4.4567cdef.partial").mkdir()
    live = AtomicTarget(out, overwrite=True)
    result = movq("decode", clip_path, out, "-w", small_folder[0], "--skip-existing")
    assert result.exit_code == 0 and "skipped" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".clip")) == [live.temp.name]
    live.remove()


def test_a_failed_output_removes_the_folders_made_for_it_and_only_those(model, clip_path, tmp_path, monkeypatch):
    (tmp_path / "there").mkdir()
    out = tmp_path / "there" / "new" / "deeper" / "frames"

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(RunError, match="cannot write 00000.png: No space left on device"):
        decode_to_file(prepare(model, codes_io.read(clip_path)), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there"] and list((tmp_path / "there").iterdir()) == []


# ---- what is not a file, and folders that loop ----------------------------------------------------


@pytest.mark.parametrize("what", ["weights", "config.json in a weights folder", "codes"])
def test_a_fifo_is_refused_before_it_is_opened(what, small_folder, clip_path, tmp_path):
    """Opening a FIFO blocks until someone writes to it, and then SIGINT and SIGTERM went unheard."""
    fifo = tmp_path / ("codes.npy" if what == "codes" else "movq.safetensors")
    if what == "config.json in a weights folder":
        (tmp_path / "weights").mkdir()
        fifo = tmp_path / "weights" / "config.json"
        (tmp_path / "weights" / "diffusion_pytorch_model.safetensors").symlink_to(
            small_folder[0] / "diffusion_pytorch_model.safetensors"
        )
    os.mkfifo(fifo)
    codes, weights = (fifo, small_folder[0]) if what == "codes" else (clip_path, fifo)
    if what == "config.json in a weights folder":
        weights = fifo.parent
    done = subprocess.run(
        _command("decode", codes, tmp_path / "x.png", "-w", weights), capture_output=True, text=True, timeout=DEADLINE
    )
    assert_one_line_error(_Result(done), 2, "is a pipe")


def test_a_pipe_of_codes_is_refused_with_why(small_folder, tmp_path):
    """`movq decode <(cat codes.npy) ...`: a pipe can be read once, and a .npy is read in pieces."""
    read, write = os.pipe()
    try:
        done = subprocess.run(
            _command("decode", f"/dev/fd/{read}", tmp_path / "x.png", "-w", small_folder[0]),
            capture_output=True, text=True, pass_fds=(read,), timeout=DEADLINE,
        )  # fmt: skip
    finally:
        os.close(read)
        os.close(write)
    assert_one_line_error(_Result(done), 2, "is a pipe, not a file; save the codes to a file first")


def test_globs_and_folders_follow_each_real_folder_once(small_folder, tmp_path, monkeypatch):
    codes = tmp_path / "codes"
    (codes / "a" / "b").mkdir(parents=True)
    np.save(codes / "a" / "b" / "x.npy", np.zeros((1, 4, 4), np.int64))
    (codes / "a" / "b" / "up").symlink_to("../..")  # a loop: codes/a/b/up/a/b/up/...
    (codes / "a" / "again").symlink_to("b")
    (codes / "a" / "b" / "up2").symlink_to("..")  # two loops made planning exponential
    monkeypatch.chdir(tmp_path)
    for source, out in (("codes/**/*.npy", "out-glob"), ("codes", "out-folder")):
        result = movq("decode", source, tmp_path / out, "--format", "png", "-w", small_folder[0], "--json")
        assert result.exit_code == 0, result.output
        inputs = [json.loads(line)["input"] for line in result.stdout.splitlines()]
        assert len(inputs) == 1 and inputs[0].endswith("x.npy"), inputs  # once, whichever way it was reached


def test_a_batch_reports_unreadable_folders_and_broken_links(small_folder, tmp_path, monkeypatch):
    codes = tmp_path / "codes"
    (codes / "locked").mkdir(parents=True)
    np.save(codes / "good.npy", np.zeros((1, 4, 4), np.int64))
    np.save(codes / "locked" / "hidden.npy", np.zeros((1, 4, 4), np.int64))
    (codes / "dangling.npy").symlink_to("gone.npy")
    (codes / "looping.npy").symlink_to("looping.npy")
    scandir = os.scandir

    def refused(path):  # as chmod 000 would, for a user who is not root
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refused)
    result = movq("decode", codes, tmp_path / "out", "--format", "png", "-w", small_folder[0], "--json")
    assert result.exit_code == 1, result.output
    rows = {Path(row["input"]).name: row for row in map(json.loads, result.stdout.splitlines())}
    assert rows["good.npy"]["status"] == "done"
    assert "cannot read the folder" in rows["locked"]["error"] and "permission denied" in rows["locked"]["error"]
    assert "gone.npy, which does not exist" in rows["dangling.npy"]["error"]
    assert "Too many levels of symbolic links" in rows["looping.npy"]["error"]
    assert "1 done" in result.stderr and "3 failed" in result.stderr


# ---- weights that decode to garbage, and other lines that said the wrong thing ----------------------


def _weights(small_folder, tmp_path, config=None, change=None) -> Path:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "weights"
    folder.mkdir()
    original = small_folder[0] / "config.json"
    (folder / "config.json").write_text(original.read_text() if config is None else config)
    tensors = load_file(small_folder[0] / "diffusion_pytorch_model.safetensors")
    save_file(
        {name: change(tensor) if change else tensor for name, tensor in tensors.items()},
        folder / "diffusion_pytorch_model.safetensors",
    )
    return folder


@pytest.mark.parametrize(
    "case, needle",
    [
        ("config.json a list", "holds a JSON object, not [1, 2]"),
        ("config.json null", "holds a JSON object, not null"),
        ("channels that overflow", "is over 65536"),
        ("integer weights", "holds int64; weights are floats"),
        ("bool weights", "holds bool; weights are floats"),
        ("NaN weights", "holds NaN or infinite values"),
    ],
)
def test_weights_that_cannot_decode_are_input_errors(case, needle, small_folder, clip_path, tmp_path):
    import torch

    config = json.loads((small_folder[0] / "config.json").read_text())
    folder = _weights(
        small_folder, tmp_path,
        config={"config.json a list": "[1, 2]", "config.json null": "null",
                "channels that overflow": json.dumps({**config, "block_out_channels": [2**70, 2**71]})}.get(case),
        change={"integer weights": lambda t: t.to(torch.int64), "bool weights": lambda t: t.bool(),
                "NaN weights": lambda t: torch.full_like(t, float("nan"))}.get(case),
    )  # fmt: skip
    assert_one_line_error(movq("decode", clip_path, tmp_path / "x.png", "-w", folder), 2, needle)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("fps", ["inf", "1e308", "nan"])
def test_an_absurd_frame_rate_is_refused_before_decoding(fps, small_folder, clip_path, tmp_path):
    result = movq("decode", clip_path, tmp_path / "x.mp4", "-w", small_folder[0], "--fps", fps)
    assert result.exit_code == 2 and "--fps" in result.stderr and not (tmp_path / "x.mp4").exists(), result.output


def test_thousands_of_threads_are_refused(small_folder, clip_path, tmp_path):
    assert_one_line_error(
        movq("decode", clip_path, tmp_path / "x.png", "-w", small_folder[0], "--threads", "10000"), 2, "too many"
    )


@pytest.mark.parametrize("length", [238, 255])
def test_an_output_name_of_up_to_255_bytes_is_written(length, model, clip_path, tmp_path):
    out = tmp_path / ("n" * (length - 4) + ".mp4")
    decode_to_file(prepare(model, codes_io.read(clip_path)), out)
    assert out.stat().st_size > 1000 and sorted(tmp_path.iterdir()) == [out]


def test_names_and_paths_too_long_for_the_system_are_one_line(small_folder, clip_path, tmp_path):
    assert_one_line_error(
        movq("decode", clip_path, tmp_path / ("n" * 256 + ".mp4"), "-w", small_folder[0]), 2, "over 255 bytes"
    )
    deep = "d/" * 2100 + "codes.npy"
    assert_one_line_error(
        movq("decode", tmp_path / deep, tmp_path / "x.png", "-w", small_folder[0]), 2, "longer than this system takes"
    )
    assert_one_line_error(
        movq("decode", clip_path, tmp_path / deep, "-w", small_folder[0]), 2, "longer than this system takes"
    )


def test_a_newline_in_a_path_stays_on_the_error_line(small_folder, tmp_path):
    result = movq("decode", tmp_path / "two\nlines.npy", tmp_path / "x.png", "-w", small_folder[0])
    assert_one_line_error(result, 2, "two\\nlines.npy")


def test_a_picture_that_cannot_be_written_is_named_as_asked_not_by_its_temporary(
    model, clip_path, tmp_path, monkeypatch
):
    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    for name in ("x.png", "x.jpg"):
        with pytest.raises(RunError, match=f"cannot write {tmp_path / name}: No space left on device"):
            decode_to_file(prepare(model, codes_io.read(clip_path), slice(0, 1)), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_weights_file_says_so(small_folder, clip_path, tmp_path, monkeypatch):
    weights = tmp_path / "movq.safetensors"
    weights.write_bytes((small_folder[0] / "diffusion_pytorch_model.safetensors").read_bytes())
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == weights else access(path, mode))
    assert_one_line_error(movq("decode", clip_path, tmp_path / "x.png", "-w", weights), 2, "permission denied")
