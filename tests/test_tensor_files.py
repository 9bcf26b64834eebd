"""Code and latent files as PyTorch users save them: torch.save (.pt/.pth, zip and legacy formats)
and .safetensors, one tensor or a dict of them, in decode, inspect and batches; and the files the
CogVideoX fine-tuning scripts save, decoded as they are."""

from __future__ import annotations

import json
import os

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import RunsCode, assert_one_line_error, cogvideox_pipeline_frames, movq
from safetensors.torch import save_file

import movq_cli
from movq_cli.errors import InputError
from movq_cli.io import codes as codes_io


@pytest.fixture(scope="module")
def model(small_folder):
    return movq_cli.load(small_folder[0], device="cpu")


@pytest.fixture(scope="module")
def codes():
    return torch.from_numpy(np.random.default_rng(3).integers(0, 64, (3, 4, 4)))


def _decoded(path, model, **read) -> np.ndarray:
    return np.stack(list(movq_cli.decode_frames(path, model, **read)))


SAVES = {
    "zip .pt": lambda tensor, path: torch.save(tensor, path.with_suffix(".pt")),
    "legacy .pth": lambda tensor, path: torch.save(
        tensor, path.with_suffix(".pth"), _use_new_zipfile_serialization=False
    ),
    ".safetensors": lambda tensor, path: save_file({"codes": tensor.contiguous()}, path.with_suffix(".safetensors")),
}


@pytest.mark.parametrize("save", SAVES, ids=list(SAVES))
def test_a_saved_tensor_of_codes_decodes_as_its_npy_does(save, codes, model, tmp_path):
    np.save(tmp_path / "codes.npy", codes.numpy())
    SAVES[save](codes, tmp_path / "codes")
    saved = next(path for path in tmp_path.iterdir() if path.suffix != ".npy")
    assert np.array_equal(_decoded(saved, model), _decoded(tmp_path / "codes.npy", model))


def test_nested_dicts_are_read_by_their_dotted_key(codes, model, tmp_path):
    np.save(tmp_path / "codes.npy", codes.numpy())
    torch.save({"batch": {"codes": codes, "mask": torch.ones(3)}, "step": 7, "names": ["a"]}, tmp_path / "saved.pt")
    assert np.array_equal(
        _decoded(tmp_path / "saved.pt", model, key="batch.codes"), _decoded(tmp_path / "codes.npy", model)
    )


def test_without_key_a_file_of_several_tensors_lists_them(codes, small_folder, tmp_path):
    torch.save({"latents": torch.zeros(1, 4, 2, 2), "codes": codes}, tmp_path / "two.pt")
    result = movq("decode", tmp_path / "two.pt", tmp_path / "out.png", "-w", small_folder[0])
    assert_one_line_error(result, 2, "choose one with --key")
    assert "latents (1, 4, 2, 2)" in result.stderr and "codes (3, 4, 4)" in result.stderr
    result = movq("decode", tmp_path / "two.pt", tmp_path / "out.png", "-w", small_folder[0], "--key", "code")
    assert_one_line_error(result, 2, "has no tensor 'code'")
    assert not (tmp_path / "out.png").exists()


def test_bfloat16_latents_of_a_safetensors_file_decode_as_float32_ones(model, tmp_path):
    latents = torch.randn(2, 4, 3, 3).to(torch.bfloat16)
    save_file({"latents": latents}, tmp_path / "latents.safetensors")
    np.save(tmp_path / "latents.npy", latents.float().numpy())
    assert np.array_equal(_decoded(tmp_path / "latents.safetensors", model), _decoded(tmp_path / "latents.npy", model))


def test_a_pickle_that_would_run_code_is_refused_and_never_run(small_folder, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"codes": RunsCode(marker)}, tmp_path / "evil.pt")
    result = movq("decode", tmp_path / "evil.pt", tmp_path / "out.png", "-w", small_folder[0])
    assert_one_line_error(result, 2, "refused")
    assert not marker.exists()


def test_a_truncated_safetensors_file_is_refused_by_name(tmp_path, small_folder):
    save_file({"codes": torch.zeros(3, 4, 4, dtype=torch.int64)}, tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-8])
    result = movq("decode", tmp_path / "cut.safetensors", tmp_path / "out.png", "-w", small_folder[0])
    assert_one_line_error(result, 2, "truncated")


def test_inspect_and_batches_take_torch_and_safetensors_files(codes, small_folder, tmp_path):
    folder = tmp_path / "codes"
    folder.mkdir()
    torch.save(codes, folder / "a.pt")
    save_file({"codes": codes.contiguous()}, folder / "b.safetensors")
    report = movq("inspect", folder / "a.pt", "--json")
    assert report.exit_code == 0, report.output
    assert json.loads(report.stdout)["shape"] == [3, 4, 4]
    result = movq("decode", folder, tmp_path / "out", "--format", "png-dir", "-w", small_folder[0], "--json")
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(line)["status"] for line in result.stdout.splitlines()) == ["done", "done"]
    assert len(list((tmp_path / "out" / "a").glob("*.png"))) == len(list((tmp_path / "out" / "b").glob("*.png"))) == 3


def test_fine_tuning_latents_decode_as_they_are_saved(video_folder, tmp_path):
    """The CogVideoX fine-tuning scripts save `vae._encode(video)` of each clip: (2C, F, h, w),
    the latent distribution's mean and log-variance, unscaled, in bfloat16."""
    root, vae = video_folder
    video = torch.rand(1, 3, 9, 24, 40) * 2 - 1  # (B, C, frames, H, W): 9 frames make 3 latent frames
    with torch.no_grad():
        moments = vae._encode(video)[0].to(torch.bfloat16)
    assert moments.shape == (32, 3, 6, 10)
    torch.save(moments.clone(), tmp_path / "clip.pt")
    mean = moments[:16].float()  # (C, F, h, w)
    expected = cogvideox_pipeline_frames(vae, (mean.permute(1, 0, 2, 3)[None] * vae.config.scaling_factor).numpy())
    result = movq("decode", tmp_path / "clip.pt", tmp_path / "out", "-w", root)
    assert result.exit_code == 0, result.output
    got = np.stack([iio.imread(tmp_path / "out" / f"{i:05d}.png") for i in range(len(expected))])
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert (got == expected).mean() > 0.999


def test_cogvideox_latents_as_tensors_decode_as_their_files_do(video_folder, tmp_path):
    root, vae = video_folder
    model = movq_cli.load(root, device="cpu")
    pipeline = torch.randn(1, 3, 16, 6, 10)  # (1, F, C, h, w), as output_type="latent" hands them
    np.save(tmp_path / "latents.npy", pipeline.numpy())
    expected = np.stack(list(movq_cli.decode_frames(tmp_path / "latents.npy", model)))
    assert np.array_equal(np.stack(list(movq_cli.decode_frames(pipeline, model))), expected)
    moments = torch.cat([pipeline[0].permute(1, 0, 2, 3) / vae.config.scaling_factor, torch.randn(16, 3, 6, 10)])
    got = np.stack(list(movq_cli.decode_frames(moments, model)))  # (2C, F, h, w): the mean, unscaled
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_latents_that_read_two_ways_are_refused_rather_than_guessed(video_folder, tmp_path):
    root, _ = video_folder
    torch.save(torch.randn(32, 16, 6, 10), tmp_path / "which.pt")  # 32 frames, or the moments of 16?
    result = movq("decode", tmp_path / "which.pt", tmp_path / "out/", "-w", root)
    assert_one_line_error(result, 2, "read two ways")
    assert not (tmp_path / "out").exists()
    torch.save(torch.randn(1, 32, 16, 6, 10), tmp_path / "pipeline.pt")  # with its batch axis: a pipeline's
    result = movq("decode", tmp_path / "pipeline.pt", tmp_path / "out/", "-w", root, "--frames", "0")
    assert result.exit_code == 0, result.output


def test_a_safetensors_file_cut_short_after_it_was_opened_is_an_input_error(tmp_path):
    """Its tensors stay in the file and are read as they are used, never memory-mapped (SIGBUS)."""
    path = tmp_path / "codes.safetensors"
    save_file({"codes": torch.zeros(8, 4, 4, dtype=torch.int64)}, path)
    clip = codes_io.read(path)
    os.truncate(path, path.stat().st_size - 100)
    with pytest.raises(InputError, match="changed while it was being read"):
        clip.frames(0, 8)


def test_cogvideox_latents_in_the_vae_layout_in_an_npy_decode_as_the_pipelines(video_folder, tmp_path):
    root, _ = video_folder
    model = movq_cli.load(root, device="cpu")
    pipeline = np.random.default_rng(0).standard_normal((1, 3, 16, 6, 10), dtype=np.float32)  # (1, F, C, h, w)
    np.save(tmp_path / "pipeline.npy", pipeline)
    np.save(tmp_path / "vae.npy", np.ascontiguousarray(pipeline[0].transpose(1, 0, 2, 3)))  # (C, F, h, w)
    expected = np.stack(list(movq_cli.decode_frames(tmp_path / "pipeline.npy", model)))
    assert np.array_equal(np.stack(list(movq_cli.decode_frames(tmp_path / "vae.npy", model))), expected)
