"""`movq decode` over many files: mirrored outputs, JSON lines, exit codes, nothing lost on bad input."""

from __future__ import annotations

import errno
import hashlib
import json
import pickle
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import assert_one_line_error, movq
from PIL import Image

from movq_cli.batch import find_jobs
from movq_cli.errors import InputError
from movq_cli.io import writers
from movq_cli.io.targets import MANIFEST
from movq_cli.io.writers import WriteOptions


def _codes(seed: int, frames: int = 2, grid=(4, 4)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 64, (frames, *grid))


@pytest.fixture
def tree(tmp_path):
    """codes/a.npy, codes/sub/b.npy (good), codes/sub/deeper/c.npz (good), and three bad files."""
    root = tmp_path / "codes"
    (root / "sub" / "deeper").mkdir(parents=True)
    np.save(root / "a.npy", _codes(0))
    np.save(root / "sub" / "b.npy", _codes(1, frames=3))
    np.savez(root / "sub" / "deeper" / "c.npz", codes=_codes(2, frames=1))
    np.save(root / "sub" / "out_of_range.npy", np.full((2, 4, 4), 64))
    np.save(root / "truncated.npy", _codes(3, frames=4))
    (root / "truncated.npy").write_bytes((root / "truncated.npy").read_bytes()[:-50])
    (root / "pickled.npy").write_bytes(pickle.dumps([1, 2, 3]))
    (root / "notes.txt").write_text("not codes")
    return root


def _lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def _digest(folder) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_batch_mirrors_the_tree_and_reports_every_file(tree, small_folder, tmp_path):
    before = _digest(tree)
    out = tmp_path / "videos"
    result = movq("decode", tree, out, "-w", small_folder[0], "--json")
    assert result.exit_code == 1, result.output
    outputs = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert outputs == ["a.mp4", "sub", "sub/b.mp4", "sub/deeper", "sub/deeper/c.mp4"]
    lines = {line["input"]: line for line in _lines(result)}
    assert len(lines) == 6
    done = lines[str(tree / "sub" / "b.npy")]
    assert done["status"] == "done" and done["frames"] == 3 and done["frame_size"] == [8, 8]
    assert done["output"] == str(out / "sub" / "b.mp4") and done["error"] is None and done["seconds"] > 0
    failed = {name: lines[str(tree / name)] for name in ("sub/out_of_range.npy", "truncated.npy", "pickled.npy")}
    assert all(line["status"] == "failed" and line["frames"] == 0 for line in failed.values())
    assert "code 64 at frame 0" in failed["sub/out_of_range.npy"]["error"]
    assert "truncated" in failed["truncated.npy"]["error"]
    assert "pickle" in failed["pickled.npy"]["error"]
    assert "3 done" in result.stderr and "3 failed" in result.stderr and "truncated.npy" in result.stderr
    assert _digest(tree) == before  # inputs are never modified


def test_fail_fast_stops_at_the_first_failure(tree, small_folder, tmp_path):
    result = movq("decode", tree, tmp_path / "out", "-w", small_folder[0], "--json", "--fail-fast", "-q")
    assert result.exit_code == 1
    statuses = [line["status"] for line in _lines(result)]
    assert statuses == ["done", "failed"]  # a.npy, then pickled.npy in sorted order
    assert result.stderr.strip().splitlines() == [f"error: {_lines(result)[1]['error']}"]


def test_globs_mirror_below_their_fixed_prefix_and_formats_choose_the_outputs(tree, small_folder, tmp_path):
    pattern = str(tree / "**" / "[abc].np?")
    result = movq("decode", pattern, tmp_path / "png", "-w", small_folder[0], "--format", "png-dir", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(tmp_path / "png")) for p in (tmp_path / "png").rglob("*.png")) == [
        "a/00000.png", "a/00001.png", "sub/b/00000.png", "sub/b/00001.png", "sub/b/00002.png", "sub/deeper/c/00000.png",
    ]  # fmt: skip
    one = movq(
        "decode",
        tree / "a.npy",
        tree / "sub" / "b.npy",
        tmp_path / "one",
        "-w",
        small_folder[0],
        "--format",
        "png",
        "--frames",
        ":1",
    )
    assert one.exit_code == 0, one.output
    assert iio.imread(tmp_path / "one" / "a.png").shape == (8, 8, 3) and (tmp_path / "one" / "b.png").is_file()


def test_existing_outputs_fail_unless_skipped_or_overwritten(tree, small_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.mp4").write_text("mine")
    good = (str(tree / "a.npy"), str(tree / "sub" / "b.npy"))
    result = movq("decode", *good, out, "-w", small_folder[0], "--json")
    assert result.exit_code == 1 and [line["status"] for line in _lines(result)] == ["failed", "done"]
    assert "--overwrite" in _lines(result)[0]["error"] and (out / "a.mp4").read_text() == "mine"
    skipped = movq("decode", *good, out, "-w", small_folder[0], "--json", "--skip-existing")
    assert skipped.exit_code == 0 and [line["status"] for line in _lines(skipped)] == ["skipped", "skipped"]
    assert (out / "a.mp4").read_text() == "mine"
    replaced = movq("decode", *good, out, "-w", small_folder[0], "--json", "--overwrite")
    assert replaced.exit_code == 0 and [line["status"] for line in _lines(replaced)] == ["done", "done"]
    assert (out / "a.mp4").stat().st_size > 100
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "b.mp4"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--format", "avi"], "unknown --format"),
        (["--overwrite", "--skip-existing"], "choose one"),
        (["--frames", "1:2:0"], "step cannot be zero"),
        (["--frames", "x"], "START:STOP"),
    ],
)
def test_bad_batch_usage_is_exit_2(tree, small_folder, tmp_path, args, needle):
    assert_one_line_error(movq("decode", tree, tmp_path / "out", "-w", small_folder[0], *args), 2, needle)
    assert not (tmp_path / "out").exists()


def test_bad_batch_inputs_are_exit_2(tree, small_folder, tmp_path):
    (tmp_path / "file").write_text("")
    assert_one_line_error(movq("decode", tree, tmp_path / "file", "-w", small_folder[0]), 2, "is a file")
    assert_one_line_error(movq("decode", str(tree / "*.nothing"), tmp_path / "o", "-w", small_folder[0]), 2, "no .npy")
    (tree / "sub" / "a.npz").write_bytes((tree / "a.npy").read_bytes())
    assert_one_line_error(
        movq("decode", tree / "a.npy", tree / "sub" / "a.npz", tmp_path / "o", "-w", small_folder[0]),
        2,
        "would both write",
    )


def test_frames_slice_decodes_exactly_those_frames(small_folder, tmp_path):
    codes = _codes(7, frames=10)
    np.save(tmp_path / "clip.npy", codes)
    result = movq(
        "decode", tmp_path / "clip.npy", tmp_path / "sliced", "-w", small_folder[0], "--frames", "2:8:3", "--json"
    )
    assert result.exit_code == 0, result.output
    assert _lines(result)[0]["frames"] == 2
    np.save(tmp_path / "picked.npy", codes[[2, 5]])
    assert movq("decode", tmp_path / "picked.npy", tmp_path / "picked", "-w", small_folder[0], "-q").exit_code == 0
    for name in ("00000.png", "00001.png"):
        assert np.array_equal(iio.imread(tmp_path / "sliced" / name), iio.imread(tmp_path / "picked" / name))
    assert sorted(p.name for p in (tmp_path / "sliced").iterdir()) == [MANIFEST, "00000.png", "00001.png"]


def test_frames_slice_checks_only_the_selected_frames(small_folder, tmp_path):
    codes = _codes(8, frames=6)
    codes[4, 1, 2] = 999
    np.save(tmp_path / "clip.npy", codes)
    ok = movq("decode", tmp_path / "clip.npy", tmp_path / "ok", "-w", small_folder[0], "--frames", "0:4", "-q")
    assert ok.exit_code == 0, ok.output
    bad = movq("decode", tmp_path / "clip.npy", tmp_path / "bad", "-w", small_folder[0], "--frames", "3:")
    assert_one_line_error(bad, 2, "code 999 at frame 4, row 1, column 2")  # numbered as in the file
    empty = movq("decode", tmp_path / "clip.npy", tmp_path / "e", "-w", small_folder[0], "--frames", "5:2")
    assert_one_line_error(empty, 2, "picks none of its 6 frame(s)")


def test_a_full_disk_is_reported_and_leaves_nothing(small_folder, tmp_path, monkeypatch):
    np.save(tmp_path / "clip.npy", _codes(9, frames=5))
    calls, write_bytes = [], Path.write_bytes

    def full_disk(path, data):
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_bytes(path, data)

    monkeypatch.setattr(writers.Path, "write_bytes", full_disk)
    out = tmp_path / "out"
    result = movq("decode", tmp_path / "clip.npy", out / "frames", "-w", small_folder[0], "--chunk", "1")
    assert_one_line_error(result, 1, "cannot write 00002.png: No space left on device")
    assert len(calls) == 3 and not out.exists()  # nor the folder made for the output


def test_a_vanished_output_folder_is_reported(small_folder, tmp_path, monkeypatch):
    import shutil

    np.save(tmp_path / "clip.npy", _codes(10, frames=3))
    out, write_bytes = tmp_path / "out", Path.write_bytes

    def vanish(path, data):
        shutil.rmtree(out, ignore_errors=True)
        return write_bytes(path, data)

    monkeypatch.setattr(writers.Path, "write_bytes", vanish)
    result = movq("decode", tmp_path / "clip.npy", out / "frames", "-w", small_folder[0])
    assert_one_line_error(result, 1, "cannot write 00000.png: the directory does not exist")
    assert not out.exists()


def test_absurd_frame_sizes_are_refused_before_any_work(small_folder, tmp_path):
    path = tmp_path / "huge.npy"
    huge = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(1, 100_000, 100_000))  # sparse
    del huge
    result = movq("decode", path, tmp_path / "out.png", "-w", small_folder[0])
    assert_one_line_error(result, 2, "a frame of 100000x100000 codes needs about")
    assert "GiB" in result.stderr and not (tmp_path / "out.png").exists()
    preview = movq("preview", path, tmp_path / "sheet.png", "-w", small_folder[0])
    assert_one_line_error(preview, 2, "needs about")


def test_an_output_that_would_replace_the_input_is_refused(small_folder, tmp_path):
    np.save(tmp_path / "clip.npy", _codes(11))
    before = (tmp_path / "clip.npy").read_bytes()
    result = movq("decode", tmp_path / "clip.npy", tmp_path, "-w", small_folder[0], "--overwrite")
    assert_one_line_error(result, 2, "would replace the input")
    assert (tmp_path / "clip.npy").read_bytes() == before


def test_new_formats_in_a_batch(small_folder, tmp_path):
    (tmp_path / "codes").mkdir()
    np.save(tmp_path / "codes" / "a.npy", _codes(12, frames=3))
    np.save(tmp_path / "codes" / "b.npy", _codes(13, frames=2))
    for format, suffix in (("webp", ".webp"), ("jpg", ".jpg")):
        frames = ["--frames", ":1"] if format == "jpg" else []
        result = movq(
            "decode", tmp_path / "codes", tmp_path / format, "-w", small_folder[0], "--format", format, *frames
        )
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in (tmp_path / format).iterdir()) == [f"a{suffix}", f"b{suffix}"]
    assert iio.imread(tmp_path / "jpg" / "a.jpg").shape == (8, 8, 3)
    with Image.open(tmp_path / "webp" / "a.webp") as animation:
        assert animation.n_frames == 3


def test_a_batch_refuses_an_option_its_format_has_no_use_for_before_any_work(tree, tmp_path):
    with pytest.raises(InputError, match=r"crf=\.\.\. has no use for a folder of PNG frames"):
        find_jobs([tree], tmp_path / "out", "png-dir", WriteOptions(crf=20))
    with pytest.raises(InputError, match=r"fps=\.\.\. has no use for .jpg output"):
        find_jobs([tree], tmp_path / "out", "jpg", WriteOptions(fps=12))
    assert [job.output.suffix for job in find_jobs([tree], tmp_path / "out", "gif", WriteOptions(fps=12))] == [".gif"] * 6
    assert not (tmp_path / "out").exists()
