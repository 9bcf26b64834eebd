"""Clips in memory: numpy arrays and torch tensors into `decode`, `decode_frames` and `contact_sheet`,
checked as files are, with errors that name the API's keywords; flat token rows without a grid."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, movq

import movq_cli
from movq_cli.errors import InputError


@pytest.fixture(scope="module")
def model(small_folder):
    return movq_cli.load(small_folder[0], device="cpu")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    codes = np.random.default_rng(11).integers(0, 64, (4, 3, 4))
    path = tmp_path_factory.mktemp("arrays") / "clip.npy"
    np.save(path, codes)
    return path, codes


def _from_file(path, model, **options) -> np.ndarray:
    return np.stack(list(movq_cli.decode_frames(path, model, **options)))


@pytest.mark.parametrize("form", ["numpy", "tensor", "int32 tensor"])
def test_decode_frames_takes_an_array_or_a_tensor_as_its_file(form, clip, model):
    path, codes = clip
    given = {"numpy": codes, "tensor": torch.from_numpy(codes), "int32 tensor": torch.from_numpy(codes).int()}[form]
    assert np.array_equal(np.stack(list(movq_cli.decode_frames(given, model))), _from_file(path, model))


def test_latent_tensors_in_bfloat16_decode_as_their_float32_values(model):
    latents = torch.randn(2, 4, 3, 3).to(torch.bfloat16)
    got = np.stack(list(movq_cli.decode_frames(latents, model, frames=[1])))
    assert np.array_equal(got, np.stack(list(movq_cli.decode_frames(latents.float().numpy()[1:], model))))


def test_decode_and_preview_write_an_array(clip, model, tmp_path):
    path, codes = clip
    result = movq_cli.decode(torch.from_numpy(codes), tmp_path / "frames/", model, frames=slice(1, 3))
    assert result.frames == 2
    expected = _from_file(path, model, frames=slice(1, 3))
    assert np.array_equal(np.stack([iio.imread(tmp_path / "frames" / f"{i:05d}.png") for i in range(2)]), expected)
    sheet = movq_cli.contact_sheet(codes, tmp_path / "sheet.png", model, count=2)
    assert sheet.frame_numbers == [0, 3] and (tmp_path / "sheet.png").exists()


def test_an_array_is_checked_as_a_file_is_and_errors_name_keywords(model, tmp_path):
    codes = np.zeros((2, 3, 4), np.int64)
    codes[1, 2, 3] = 64
    with pytest.raises(InputError, match=r"codes: code 64 at frame 1, row 2, column 3 is outside \[0, 64\)"):
        movq_cli.decode(codes, tmp_path / "out.png", model, frames=[1])
    with pytest.raises(InputError, match="holds booleans"):
        list(movq_cli.decode_frames(torch.zeros(2, 3, 3, dtype=torch.bool), model))
    with pytest.raises(InputError, match=r"grid=\(H, W\)"):
        list(movq_cli.decode_frames(np.zeros((2, 24), np.int64), model))
    (tmp_path / "taken.png").write_bytes(b"mine")
    with pytest.raises(InputError, match=r"pass overwrite=True to replace it") as raised:
        movq_cli.decode(np.zeros((1, 3, 4), np.int64), tmp_path / "taken.png", model)
    assert "--" not in str(raised.value)
    with pytest.raises(InputError, match=r"unscaled=True is for CogVideoX latents") as raised:
        list(movq_cli.decode_frames(np.zeros((1, 4, 3, 4), np.float32), model, unscaled=True))
    assert "--" not in str(raised.value)
    assert (tmp_path / "taken.png").read_bytes() == b"mine"
    with pytest.raises(TypeError, match="codes must be a file path, a numpy array or a torch tensor, not list"):
        list(movq_cli.decode_frames([[1, 2], [3, 4]], model))


def test_the_command_line_says_the_same_errors_with_its_flags(clip, small_folder, tmp_path):
    path, _ = clip
    (tmp_path / "taken.png").write_bytes(b"mine")
    result = movq("decode", path, tmp_path / "taken.png", "-w", small_folder[0], "--frames", "0:1")
    assert_one_line_error(result, 2, "pass --overwrite to replace it")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_tensor_is_decoded_where_it_is(clip, small_folder):
    path, codes = clip
    model = movq_cli.load(small_folder[0], device="cuda")
    copies = []
    original = torch.Tensor.cpu

    def counting_cpu(tensor, *args, **kwargs):
        if tensor.dtype == torch.int64 and tensor.dim() == 3:
            copies.append(tuple(tensor.shape))
        return original(tensor, *args, **kwargs)

    torch.Tensor.cpu = counting_cpu
    try:
        got = np.stack(list(movq_cli.decode_frames(torch.from_numpy(codes).cuda(), model)))
    finally:
        torch.Tensor.cpu = original
    assert copies == []  # the codes never went to the host
    reference = np.stack(list(movq_cli.decode_frames(path, model)))
    assert np.array_equal(got, reference)


# Flat token rows (T, L): square L reads as square frames, anything else asks for the grid.


def test_flat_token_rows_of_square_length_read_as_square_frames(model):
    codes = np.random.default_rng(5).integers(0, 64, (3, 16, 16))
    rows = codes.reshape(3, 256)
    assert np.array_equal(
        np.stack(list(movq_cli.decode_frames(rows, model))), np.stack(list(movq_cli.decode_frames(codes, model)))
    )


def test_flat_token_rows_of_other_lengths_ask_for_the_grid_naming_the_likely_shapes(small_folder, tmp_path):
    np.save(tmp_path / "rows.npy", np.zeros((8, 2048), np.int64))
    result = movq("decode", tmp_path / "rows.npy", tmp_path / "out/", "-w", small_folder[0])
    assert_one_line_error(result, 2, "give the frame shape with --grid HxW (--grid 32x64 or --grid 64x32?)")
    assert not (tmp_path / "out").exists()


def test_a_two_axis_array_about_as_wide_as_high_is_still_one_frame(model):
    frame = np.random.default_rng(2).integers(0, 64, (6, 10))
    assert len(list(movq_cli.decode_frames(frame, model))) == 1


# --json


def test_a_single_file_that_fails_prints_its_json_row(clip, small_folder, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((1, 3, 4), 99))
    result = movq("decode", bad, tmp_path / "out.png", "-w", small_folder[0], "--json")
    assert result.exit_code == 2
    row = json.loads(result.stdout)
    assert row["status"] == "failed" and row["input"] == str(bad) and "code 99" in row["error"]
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_batch_summary_names_a_failed_file_once(clip, small_folder, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    np.save(folder / "bad.npy", np.full((1, 3, 4), 99))
    np.save(folder / "good.npy", np.zeros((1, 3, 4), np.int64))
    result = movq("decode", folder, tmp_path / "out", "-w", small_folder[0], "--format", "png")
    assert result.exit_code == 1
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and failed[0].count(str(folder / "bad.npy")) == 1, failed
