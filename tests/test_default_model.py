"""The bundled model reconstructs real photographs it never saw, and the examples show them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import skimage.data
import torch
from conftest import psnr

import movq_cli as movq
from movq_cli.checkpoints import weights
from movq_cli.checkpoints.bundled import default_weights
from movq_cli.encoding import encode_chunk

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = Path(skimage.data.__file__).parent
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    return weights.load(default_weights(), encoder=True)


@pytest.mark.parametrize("photo", ["coffee.png", "chelsea.png"])
def test_held_out_photo_survives_encode_then_decode(model, photo):
    image = iio.imread(PHOTOS / photo)[..., :3]
    top, left = (image.shape[0] - 128) // 2, (image.shape[1] - 128) // 2
    crop = np.ascontiguousarray(image[top : top + 128, left : left + 128])[None]
    codes = encode_chunk(model, crop, CPU, latents=False).numpy()
    assert codes.shape == (1, 128 // model.config.factor, 128 // model.config.factor)
    recon = np.stack(list(movq.decode_frames(codes, model)))
    assert psnr(recon, crop) >= 23.0


def test_the_bundled_model_is_small_and_uses_its_codebook(model):
    assert default_weights().stat().st_size <= 20 * 2**20
    clip = np.load(ROOT / "examples" / "coffee_pan_zoom.npy")
    assert len(np.unique(clip)) > model.config.n_embed // 4  # no collapse onto a few codes


@pytest.mark.slow
@pytest.mark.parametrize("name", ["coffee_pan_zoom", "hubble_pan"])
def test_examples_decode_to_their_source_footage(model, name):
    spec = importlib.util.spec_from_file_location("make_examples", ROOT / "examples" / "make_examples.py")
    make_examples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_examples)
    clip = np.load(ROOT / "examples" / f"{name}.npy")
    assert clip.ndim == 3 and len(clip) >= 48
    source = make_examples.footage()[name]
    for index in (0, len(clip) - 1):
        frame = next(movq.decode_frames(clip, model, frames=[index]))
        assert psnr(frame, source[index]) >= 22.0
