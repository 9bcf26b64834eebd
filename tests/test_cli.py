"""`movq decode` end to end, and every kind of bad input answered with one line."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, codes_to_zq, diffusers_decode, movq, to_pixels

from movq_cli.io.targets import MANIFEST


@pytest.fixture(scope="module")
def clip(tmp_path_factory, small_folder):
    """Seven 6x5-code frames, and diffusers' pixels for them."""
    _, reference = small_folder
    codes = np.random.default_rng(0).integers(0, 64, (7, 6, 5))
    path = tmp_path_factory.mktemp("codes") / "clip.npy"
    np.save(path, codes)
    pixels = to_pixels(diffusers_decode(reference, codes_to_zq(reference, torch.from_numpy(codes))))
    return path, pixels


def test_png_frames_equal_the_reference_pixels(clip, small_folder, tmp_path):
    path, expected = clip
    result = movq("decode", path, tmp_path / "frames", "--weights", small_folder[0], "--chunk", "3")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "frames").glob("*.png"))
    assert names == [f"{i:05d}.png" for i in range(7)]
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [MANIFEST, *names]
    frames = np.stack([iio.imread(tmp_path / "frames" / name) for name in names])
    assert frames.shape == expected.shape == (7, 12, 10, 3)
    assert np.abs(frames.astype(int) - expected).max() <= 1  # float tolerance may flip a rounding
    assert (frames == expected).mean() > 0.999
    assert "wrote 7 frame(s) of 12x10" in result.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "frames"]  # no temporary left behind


def test_chunk_size_does_not_change_the_frames(clip, small_folder, tmp_path):
    path, _ = clip
    for chunk in ("1", "7"):
        assert movq("decode", path, tmp_path / chunk, "-w", small_folder[0], "--chunk", chunk, "-q").exit_code == 0
    for i in range(7):
        one, seven = (iio.imread(tmp_path / c / f"{i:05d}.png").astype(int) for c in ("1", "7"))
        assert np.abs(one - seven).max() <= 1


def test_mp4_has_every_frame_at_the_exact_size(clip, small_folder, tmp_path):
    path, expected = clip
    out = tmp_path / "clip.mp4"
    result = movq("decode", path, out, "--weights", small_folder[0], "--fps", "12", "--crf", "0")
    assert result.exit_code == 0, result.output
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    assert meta["size"] == (10, 12) and meta["fps"] == 12
    frames = np.stack([np.frombuffer(f, np.uint8).reshape(12, 10, 3) for f in reader])
    assert len(frames) == 7
    # yuv420p halves the colour resolution, so compare loosely but frame by frame
    errors = np.abs(frames.astype(int) - expected).mean(axis=(1, 2, 3))
    assert errors.max() < 12, errors


def test_single_png_for_a_single_frame(small_folder, tmp_path):
    _, reference = small_folder
    codes = np.random.default_rng(3).integers(0, 64, (1, 1, 4, 4))  # leading size-1 axes
    np.save(tmp_path / "one.npy", codes)
    assert movq("decode", tmp_path / "one.npy", tmp_path / "one.png", "-w", small_folder[0]).exit_code == 0
    expected = to_pixels(diffusers_decode(reference, codes_to_zq(reference, torch.from_numpy(codes[0]))))[0]
    assert np.abs(iio.imread(tmp_path / "one.png").astype(int) - expected).max() <= 1


def test_flat_token_rows_with_grid_and_npz_keys(small_folder, tmp_path):
    _, reference = small_folder
    codes = np.random.default_rng(4).integers(0, 64, (3, 4, 6))
    np.savez(tmp_path / "tokens.npz", tokens=codes.reshape(3, 24), other=np.zeros(2))
    result = movq(
        "decode", tmp_path / "tokens.npz", tmp_path / "f", "-w", small_folder[0], "--key", "tokens", "--grid", "4x6"
    )
    assert result.exit_code == 0, result.output
    expected = to_pixels(diffusers_decode(reference, codes_to_zq(reference, torch.from_numpy(codes))))
    got = np.stack([iio.imread(tmp_path / "f" / f"{i:05d}.png") for i in range(3)])
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_latents_decode_without_snapping_and_snap_on_request(small_folder, tmp_path):
    _, reference = small_folder
    latents = np.random.default_rng(5).standard_normal((2, 4, 3, 3)).astype(np.float32)
    np.save(tmp_path / "latents.npy", latents)
    assert movq("decode", tmp_path / "latents.npy", tmp_path / "plain", "-w", small_folder[0]).exit_code == 0
    assert movq("decode", tmp_path / "latents.npy", tmp_path / "snap", "-w", small_folder[0], "--snap").exit_code == 0
    plain_expected = to_pixels(diffusers_decode(reference, torch.from_numpy(latents)))
    codebook = reference.quantize.embedding.weight.detach()
    flat = torch.from_numpy(latents).permute(0, 2, 3, 1)
    nearest = torch.cdist(flat.reshape(-1, 4), codebook).argmin(-1).reshape(2, 3, 3)
    snap_expected = to_pixels(diffusers_decode(reference, codes_to_zq(reference, nearest)))
    for i in range(2):
        plain = iio.imread(tmp_path / "plain" / f"{i:05d}.png").astype(int)
        snapped = iio.imread(tmp_path / "snap" / f"{i:05d}.png").astype(int)
        assert np.abs(plain - plain_expected[i]).max() <= 1
        assert np.abs(snapped - snap_expected[i]).max() <= 1
        assert np.abs(plain - snapped).max() > 5


def test_existing_output_is_kept_unless_overwrite(clip, small_folder, tmp_path):
    path, _ = clip
    out = tmp_path / "frames"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    result = movq("decode", path, out, "-w", small_folder[0])
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert (out / "mine.txt").read_text() == "keep"
    # --overwrite replaces only what movq writes: a folder holding anything else is refused, naming it
    result = movq("decode", path, out, "-w", small_folder[0], "--overwrite")
    assert_one_line_error(result, 2, "holds mine.txt")
    assert (out / "mine.txt").read_text() == "keep"
    (out / "mine.txt").unlink()
    # a file named like a frame is not movq's either unless movq's manifest there lists it
    (out / "00009.png").write_bytes(b"the user's own file, named like a frame")
    assert_one_line_error(movq("decode", path, out, "-w", small_folder[0], "--overwrite"), 2, "holds 00009.png")
    assert (out / "00009.png").read_bytes() == b"the user's own file, named like a frame"
    (out / "00009.png").unlink()
    assert movq("decode", path, out, "-w", small_folder[0], "--overwrite").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST] + [f"{i:05d}.png" for i in range(7)]
    assert [p.name for p in tmp_path.iterdir()] == ["frames"]


def test_version_and_module_entry_point():
    assert movq("--version").stdout.strip().startswith("movq ")
    done = subprocess.run([sys.executable, "-m", "movq_cli", "decode", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "Examples" in done.stdout


# ---- bad input: one line on stderr, the right exit code, nothing written -------------------


def _write_bytes(data: bytes):
    return lambda path: path.write_bytes(data)


def _save(array):
    return lambda path: np.save(path, array, allow_pickle=True)


def _truncated(path):
    np.save(path, np.zeros((4, 8, 8), np.int64))
    path.write_bytes(path.read_bytes()[:-100])


BAD_CODES = {
    "missing": (None, "not found"),
    "folder": (lambda path: path.mkdir(), "is a folder"),
    "pickle": (_write_bytes(pickle.dumps({"codes": [1, 2, 3]})), "pickle"),
    "object array": (_save(np.array([{"a": 1}, None], dtype=object)), "Python objects"),
    "truncated": (_truncated, "truncated"),
    "text": (_write_bytes(b"1 2 3\n4 5 6\n"), "not a .npy or .npz"),
    "complex": (_save(np.zeros((4, 4), np.complex64)), "complex"),
    "bool": (_save(np.zeros((4, 4), bool)), "booleans"),
    "strings": (_save(np.array([["a", "b"], ["c", "d"]])), "strings"),
    "five axes": (_save(np.zeros((2, 2, 2, 4, 4), np.int64)), "axes"),
    "zero frames": (_save(np.zeros((0, 4, 4), np.int64)), "zero frames"),
    "index too large": (_save(np.full((2, 4, 4), 3).astype(np.int64) + np.eye(4, dtype=np.int64) * 97), "code 100 at frame 0, row 0, column 0"),
    "negative index": (_save(-np.ones((1, 4, 4), np.int32)), "code -1 at frame 0, row 0, column 0"),
    "latent channels": (_save(np.zeros((2, 3, 4, 4), np.float32)), "3 channels"),
    "nan latent": (_save(np.where(np.arange(64).reshape(1, 4, 4, 4) == 37, np.nan, 0).astype(np.float32)), "nan at frame 0, channel 2, row 1, column 1"),
    "inf latent": (_save(np.full((1, 4, 2, 2), np.inf, np.float32)), "inf at frame 0"),
    "not a square": (_save(np.zeros(10, np.int64)), "not a square"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_CODES))
def test_bad_code_files_get_one_clear_line(case, small_folder, tmp_path):
    make, needle = BAD_CODES[case]
    path = tmp_path / "codes.npy"
    if make is not None:
        make(path)
    out = tmp_path / "out" / "clip.mp4"
    assert_one_line_error(movq("decode", path, out, "-w", small_folder[0]), 2, needle)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.fixture
def codes_file(tmp_path):
    path = tmp_path / "codes.npy"
    np.save(path, np.zeros((2, 4, 4), np.int64))
    return path


def test_missing_weights_option_without_a_bundled_model(codes_file, tmp_path, monkeypatch):
    monkeypatch.setattr("movq_cli.checkpoints.bundled._PACKAGE", tmp_path / "nowhere" / "movq_cli")
    assert_one_line_error(movq("decode", codes_file, tmp_path / "x.mp4"), 2, "--weights")


def test_missing_weights_path(codes_file, tmp_path):
    assert_one_line_error(movq("decode", codes_file, tmp_path / "x.mp4", "-w", tmp_path / "nope"), 2, "not found")


def test_corrupt_weights(codes_file, tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert_one_line_error(
        movq("decode", codes_file, tmp_path / "x.mp4", "-w", tmp_path / "w.safetensors"), 2, "safetensors"
    )


def test_mismatched_weights(codes_file, small_folder, tmp_path):
    folder, _ = small_folder
    config = json.loads((folder / "config.json").read_text())
    config["layers_per_block"] = 2
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    (tmp_path / "m" / "diffusion_pytorch_model.safetensors").write_bytes(
        (folder / "diffusion_pytorch_model.safetensors").read_bytes()
    )
    assert_one_line_error(
        movq("decode", codes_file, tmp_path / "x.mp4", "-w", tmp_path / "m"), 2, "missing: decoder.up.0.block.2"
    )


def test_integer_codes_need_a_codebook(codes_file, small_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, _ = small_folder
    (tmp_path / "k3").mkdir()
    (tmp_path / "k3" / "config.json").write_text((folder / "config.json").read_text())
    state = {
        k: v
        for k, v in load_file(folder / "diffusion_pytorch_model.safetensors").items()
        if not k.startswith("quantize.")
    }
    save_file(state, tmp_path / "k3" / "diffusion_pytorch_model.safetensors")
    assert_one_line_error(movq("decode", codes_file, tmp_path / "x.mp4", "-w", tmp_path / "k3"), 2, "codebook")
    np.save(tmp_path / "latents.npy", np.zeros((1, 4, 4, 4), np.float32))
    assert movq("decode", tmp_path / "latents.npy", tmp_path / "ok.png", "-w", tmp_path / "k3").exit_code == 0


@pytest.mark.parametrize("device", ["tpu", "cuda:7", "gpu0"])
def test_unknown_or_absent_device(codes_file, small_folder, tmp_path, device):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has eight GPUs")
    assert_one_line_error(
        movq("decode", codes_file, tmp_path / "x.mp4", "-w", small_folder[0], "--device", device), 2, "--device"
    )


def test_unwritable_output(codes_file, small_folder, tmp_path):
    (tmp_path / "file").write_text("")
    assert_one_line_error(
        movq("decode", codes_file, tmp_path / "file" / "x.mp4", "-w", small_folder[0]), 2, "cannot create"
    )


def test_many_frames_into_one_png(codes_file, small_folder, tmp_path):
    assert_one_line_error(movq("decode", codes_file, tmp_path / "x.png", "-w", small_folder[0]), 2, "folder")
    assert list(tmp_path.iterdir()) == [codes_file]


def test_ffmpeg_failure_shows_ffmpeg_message(codes_file, small_folder, tmp_path, monkeypatch):
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\ncat > /dev/null\necho 'Unknown encoder libx264' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: str(fake))
    result = movq("decode", codes_file, tmp_path / "out" / "x.mp4", "-w", small_folder[0])
    assert_one_line_error(result, 1, "ffmpeg failed: Unknown encoder libx264")
    assert not (tmp_path / "out").exists()  # nothing partial, nor the folder made for the output


def test_errors_from_the_real_command_have_no_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "movq_cli", "decode", str(tmp_path / "none.npy"), str(tmp_path / "x.mp4")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: codes file not found: {tmp_path / 'none.npy'}"]


@pytest.mark.parametrize(
    "command, code, needle",
    [
        (["decode", "{garbage}", "{tmp}/x.mp4"], 2, "not a .npy or .npz"),
        (["decode", "{garbage}", "{tmp}/x.mp4", "{tmp}/y.mp4"], 2, "y.mp4 names a file"),
        (["decode", "{garbage}"], 2, "give the code files, then OUT"),
        (["preview", "{garbage}", "{tmp}/x.png"], 2, "not a .npy or .npz"),
        (["encode", "{garbage}", "{tmp}/x.npy"], 2, "not a readable"),
        (["convert", "{garbage}", "{tmp}/x.safetensors"], 2, "{garbage}"),
        (["info", "{garbage}"], 2, "{garbage}"),
        (["inspect", "{garbage}"], 2, "not a .npy or .npz"),
    ],
    ids=lambda value: value[0] if isinstance(value, list) else None,
)
def test_every_command_answers_garbage_with_one_line(command, code, needle, tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x00\x01 this is not what it claims to be \xff" * 10)
    fill = {"garbage": garbage, "tmp": tmp_path}
    result = movq(*[part.format(**fill) for part in command])
    assert_one_line_error(result, code, needle.format(**fill))
    assert sorted(tmp_path.iterdir()) == [garbage]
