"""The encoder matches diffusers, and `movq encode` turns pictures and video into codes."""

from __future__ import annotations

import json

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from conftest import SMALL_CONFIG, make_vqmodel, movq

from movq_cli.checkpoints import weights
from movq_cli.models.config import MovqConfig


@pytest.fixture(scope="module")
def encoder_pair(tmp_path_factory):
    """A random diffusers VQModel (attention in encoder and decoder) and its folder."""
    reference = make_vqmodel(widths=(32, 64, 64), layers=1, attn=(True, False, False), n_e=64)
    folder = tmp_path_factory.mktemp("enc") / "movq"
    reference.save_pretrained(folder)
    return reference, folder


def test_encoder_matches_diffusers(encoder_pair):
    reference, folder = encoder_pair
    model = weights.load(folder, encoder=True)
    images = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        expected = reference.encode(images).latents
        codes_expected = reference.quantize(expected)[2][2].reshape(2, 6, 10)
    with torch.inference_mode():
        got = model.encode(images)
        codes = model.quantize.nearest(got)
    assert got.shape == expected.shape == (2, 4, 6, 10)
    assert (got - expected).abs().max().item() <= 1e-4
    assert (codes == codes_expected).float().mean().item() > 0.99  # ties aside, the same nearest codes


def test_native_file_keeps_the_encoder(encoder_pair, tmp_path):
    _, folder = encoder_pair
    model = weights.load(folder, encoder=True)
    weights.save(model, tmp_path / "m.safetensors")
    again = weights.load(tmp_path / "m.safetensors", encoder=True)
    images = torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        assert torch.equal(model.encode(images), again.encode(images))
    assert weights.load(tmp_path / "m.safetensors").encoder is None  # decoding skips it


@pytest.fixture(scope="module")
def eight_groups(tmp_path_factory):
    """A model shaped like diffusers' tiny Kandinsky 2.2 test MoVQ: the encoder's GroupNorms have 8
    groups (norm_num_groups), the decoder's SpatialNorms the fixed 32."""
    reference = make_vqmodel(widths=(32, 64), layers=1, attn=(True, False), n_e=12, norm_groups=8)
    folder = tmp_path_factory.mktemp("groups") / "movq"
    reference.save_pretrained(folder)
    return reference, folder


def test_an_encoder_with_8_groups_matches_diffusers(eight_groups):
    reference, folder = eight_groups
    assert reference.encoder.conv_norm_out.num_groups == 8
    assert reference.decoder.conv_norm_out.norm_layer.num_groups == 32
    model = weights.load(folder, encoder=True)
    assert model.config.encoder_norm_groups == 8 and model.config.norm_groups == 32
    images = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        expected = reference.encode(images).latents
    with torch.inference_mode():
        got = model.encode(images)
    assert (got - expected).abs().max().item() <= 1e-4
    assert expected.abs().max().item() > 0.05


def test_native_files_keep_the_encoder_groups(eight_groups, tmp_path):
    _, folder = eight_groups
    model = weights.load(folder, encoder=True)
    weights.save(model, tmp_path / "m.safetensors")
    again = weights.load(tmp_path / "m.safetensors", encoder=True)
    assert again.config == model.config and again.config.encoder_norm_groups == 8
    images = torch.rand(1, 3, 8, 8)
    with torch.inference_mode():
        assert torch.equal(model.encode(images), again.encode(images))


def test_a_native_config_without_encoder_groups_means_32():
    stored = json.loads(SMALL_CONFIG.to_json())
    del stored["encoder_norm_groups"]  # what older native files hold
    assert MovqConfig.from_dict(stored).encoder_norm_groups == 32


def _picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth picture with some structure (gradients and a disc)."""
    y, x = np.mgrid[0:height, 0:width]
    disc = ((y - height / 2) ** 2 + (x - width / 3) ** 2 < (min(height, width) / 4) ** 2) * 120
    rng = np.random.default_rng(seed)
    picture = np.stack([x * 255 / width, y * 255 / height, disc + rng.integers(0, 60)], axis=-1)
    return np.clip(picture, 0, 255).astype(np.uint8)


@pytest.mark.slow
def test_encode_an_image_a_folder_and_a_video(encoder_pair, tmp_path):
    _, folder = encoder_pair
    iio.imwrite(tmp_path / "one.png", _picture(37, 50))  # not multiples of 4: cropped to 36x48
    result = movq("encode", tmp_path / "one.png", tmp_path / "one.npy", "-w", folder)
    assert result.exit_code == 0, result.output
    codes = np.load(tmp_path / "one.npy")
    assert codes.shape == (9, 12) and codes.dtype == np.int16 and 0 <= codes.min() and codes.max() < 64

    (tmp_path / "frames").mkdir()
    for i in (1, 2, 10):  # natural order: 1, 2, 10
        iio.imwrite(tmp_path / "frames" / f"f{i}.png", _picture(32, 32, seed=i))
    assert movq("encode", tmp_path / "frames", tmp_path / "clip.npy", "-w", folder, "--chunk", "2").exit_code == 0
    clip = np.load(tmp_path / "clip.npy")
    assert clip.shape == (3, 8, 8)
    assert movq("encode", tmp_path / "frames" / "f10.png", tmp_path / "f10.npy", "-w", folder).exit_code == 0
    assert np.array_equal(clip[2], np.load(tmp_path / "f10.npy"))

    writer = imageio_ffmpeg.write_frames(str(tmp_path / "v.mp4"), (32, 32), fps=10, macro_block_size=1, quality=10)
    writer.send(None)
    for i in range(5):
        writer.send(_picture(32, 32, seed=i).tobytes())
    writer.close()
    result = movq("encode", tmp_path / "v.mp4", tmp_path / "v.npy", "-w", folder, "--latents")
    assert result.exit_code == 0, result.output
    latents = np.load(tmp_path / "v.npy")
    assert latents.shape == (5, 4, 8, 8) and latents.dtype == np.float32 and np.isfinite(latents).all()


def test_encode_errors_are_one_line(encoder_pair, tmp_path, small_folder):
    _, folder = encoder_pair
    (tmp_path / "bad.png").write_bytes(b"not a png")
    iio.imwrite(tmp_path / "ok.png", _picture(16, 16))
    cases = [
        (tmp_path / "missing.png", tmp_path / "a.npy", folder, "not found"),
        (tmp_path / "bad.png", tmp_path / "b.npy", folder, "not a readable image"),
        (tmp_path / "ok.png", tmp_path / "c.mp4", folder, ".npy"),
    ]
    for source, out, weights_path, needle in cases:
        result = movq("encode", source, out, "-w", weights_path)
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr
        assert not out.exists()
    # a decoder-only file has no encoder
    decoder_only = tmp_path / "dec.safetensors"
    weights.save(weights.load(small_folder[0]), decoder_only)
    result = movq("encode", tmp_path / "ok.png", tmp_path / "d.npy", "-w", decoder_only)
    assert result.exit_code == 2 and "no encoder" in result.stderr
