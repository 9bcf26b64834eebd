"""`movq convert`, `movq info` and `movq inspect` end to end, and their errors in one line."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import SMALL, RunsCode, assert_one_line_error, movq, write_lightning_ckpt

from movq_cli.checkpoints import reading, weights
from movq_cli.io import codes as codes_io


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, small_folder):
    """A Lightning-style original-layout checkpoint of the small reference model."""
    path = tmp_path_factory.mktemp("ckpt") / "movq_final.ckpt"
    write_lightning_ckpt(small_folder[1], path)
    return path


def test_converting_then_decoding_equals_decoding_the_source(ckpt, tmp_path):
    result = movq("convert", ckpt, tmp_path / "movq.safetensors")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "movq.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["movq.safetensors"]  # no temporary left behind
    latents = torch.randn(2, 4, 4, 5, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        direct = weights.load(ckpt)(latents)
        converted = weights.load(tmp_path / "movq.safetensors")(latents)
    assert torch.equal(direct, converted)
    codes = np.random.default_rng(0).integers(0, 64, (2, 3, 3))
    np.save(tmp_path / "codes.npy", codes)
    for source, out in ((ckpt, "direct"), (tmp_path / "movq.safetensors", "converted")):
        assert movq("decode", tmp_path / "codes.npy", tmp_path / out, "-w", source, "-q").exit_code == 0
    for i in range(2):
        assert np.array_equal(
            iio.imread(tmp_path / "direct" / f"{i:05d}.png"), iio.imread(tmp_path / "converted" / f"{i:05d}.png")
        )


def test_convert_keeps_an_existing_file_unless_overwrite(ckpt, tmp_path):
    target = tmp_path / "movq.safetensors"
    target.write_text("mine")
    assert_one_line_error(movq("convert", ckpt, target), 2, "--overwrite")
    assert target.read_text() == "mine"
    assert movq("convert", ckpt, target, "--overwrite").exit_code == 0
    assert reading.locate(target).config_source == "metadata"


def test_convert_to_fp16_stores_fp16(ckpt, tmp_path):
    assert movq("convert", ckpt, tmp_path / "half.safetensors", "--dtype", "fp16").exit_code == 0
    report = json.loads(movq("info", tmp_path / "half.safetensors", "--json").stdout)
    assert report["dtypes"] == ["float16"] and report["layout"] == "native"


def test_convert_with_a_config_file_or_a_preset(ckpt, tmp_path):
    fields = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_levels=[1], n_embed=64)
    (tmp_path / "config.json").write_text(json.dumps(fields))
    result = movq("convert", ckpt, tmp_path / "a.safetensors", "--config", tmp_path / "config.json")
    assert result.exit_code == 0, result.output
    assert "config given" in result.stderr
    assert_one_line_error(
        movq("convert", ckpt, tmp_path / "b.safetensors", "--config", "kandinsky-2.2"), 2, "do not match the config"
    )
    assert_one_line_error(movq("convert", ckpt, tmp_path / "c.safetensors", "--config", "nope"), 2, "preset")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "config.json"]


def test_info_json_reports_layout_codebook_and_factor(ckpt):
    result = movq("info", ckpt, "--json", "--grid", "4x6")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["layout"] == "original" and report["config_source"] == "inferred"
    assert report["codebook_size"] == SMALL["n_e"] and report["factor"] == 2
    assert report["attention"] == {"mid": True, "levels": [1]}
    assert report["frame_size"] == [8, 12] and report["dtypes"] == ["float32"]
    assert report["parameters"] == sum(p.numel() for p in weights.load(ckpt).parameters())


def test_info_for_people_is_a_small_table(small_folder):
    result = movq("info", small_folder[0])
    assert result.exit_code == 0, result.output
    assert "diffusers" in result.stdout and "x2" in result.stdout and "64x64 pixels" in result.stdout


def test_inspect_counts_codes_in_chunks_and_checks_the_fit(small_folder, tmp_path, monkeypatch):
    codes = np.zeros((6, 4, 4), np.int32)
    codes[:, 0, :3] = 7  # 18 sevens
    codes[:2, 1, :] = 63  # 8 of code 63
    codes[0, 3, 3] = 70  # outside the 64-row codebook
    np.save(tmp_path / "codes.npy", codes)
    monkeypatch.setattr(codes_io, "SCAN_BYTES", 64 * 4)  # one frame per chunk
    result = movq("inspect", tmp_path / "codes.npy", "--weights", small_folder[0], "--json")
    assert result.exit_code == 1, result.output  # the whole report, and the exit status of a failed check
    report = json.loads(result.stdout)
    assert report["kind"] == "codes" and report["shape"] == [6, 4, 4] and report["dtype"] == "int32"
    assert report["min"] == 0 and report["max"] == 70 and report["distinct"] == 4
    assert report["top"] == [[0, 69], [7, 18], [63, 8], [70, 1]]
    assert report["fits"] is False and "code 70 at frame 0, row 3, column 3" in report["reason"]


def test_inspect_flat_rows_with_a_grid_fit_the_model(small_folder, tmp_path):
    np.save(tmp_path / "rows.npy", np.arange(24).reshape(2, 12) % 64)
    report = json.loads(movq("inspect", tmp_path / "rows.npy", "-w", small_folder[0], "--grid", "3x4", "--json").stdout)
    assert report["shape"] == [2, 12] and report["grid"] == [3, 4] and report["frames"] == 2
    assert report["fits"] is True and report["reason"] is None and report["frame_size"] == [6, 8]


def test_inspect_counts_nan_and_inf_in_latents(small_folder, tmp_path):
    latents = np.linspace(-2, 3, 2 * 4 * 3 * 3, dtype=np.float32).reshape(2, 4, 3, 3)
    latents[1, 2, 0, 0] = np.nan
    latents[0, 0, 1, 1] = np.nan
    latents[1, 3, 2, 2] = -np.inf
    np.save(tmp_path / "latents.npy", latents)
    result = movq("inspect", tmp_path / "latents.npy", "--weights", small_folder[0], "--json")
    report = json.loads(result.stdout)
    assert report["kind"] == "latents" and report["channels"] == 4
    assert report["nan"] == 2 and report["inf"] == 1
    assert report["min"] == pytest.approx(-2.0) and report["max"] < 3.0
    assert report["fits"] is False and "nan at frame 0, channel 0, row 1, column 1" in report["reason"]
    human = movq("inspect", tmp_path / "latents.npy")
    assert human.exit_code == 0 and "2 / 1" in human.stdout


def test_errors_are_one_line(small_folder, tmp_path):
    torch.save({"decoder.conv_in.weight": RunsCode(tmp_path / "pwned")}, tmp_path / "evil.pt")
    (tmp_path / "text.npy").write_text("1 2 3")
    cases = [
        (("info", tmp_path / "none.ckpt"), "not found"),
        (("info", tmp_path / "evil.pt"), "refused"),
        (("info", small_folder[0], "--grid", "32"), "--grid"),
        (("inspect", tmp_path / "text.npy"), "not a .npy or .npz"),
        (("convert", small_folder[0], tmp_path / "out.pt"), "name the output NAME.safetensors"),
        (("convert", tmp_path / "evil.pt", tmp_path / "out.safetensors"), "needs code execution"),
    ]
    for args, needle in cases:
        assert_one_line_error(movq(*args), 2, needle)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out.safetensors").exists()
