"""Each fast path gives the plain fp32 path's pictures."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import codes_to_zq, diffusers_decode

from movq_cli import weights
from movq_cli.model import Movq
from movq_cli.pipeline import to_pixels


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (to_pixels(a).float() - to_pixels(b).float()).pow(2).mean().item()
    return 10 * math.log10(255**2 / max(mse, 1e-10))


def test_loaded_models_run_channels_last_and_match_the_contiguous_reference(small_folder):
    folder, reference = small_folder
    model = weights.load(folder)
    assert model.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    codes = torch.randint(0, 64, (2, 6, 6), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = model.decode_codes(codes)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out - diffusers_decode(reference, codes_to_zq(reference, codes))).abs().max().item() <= 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_stays_close_to_fp32(small_folder, dtype):
    folder, _ = small_folder
    plain, fast = weights.load(folder), weights.load(folder, dtype=dtype)
    codes = torch.randint(0, 64, (2, 8, 8), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected, got = plain.decode_codes(codes), fast.decode_codes(codes)
    assert got.dtype == dtype
    assert psnr(got, expected) >= 35


def test_code_resolution_spatial_norm_equals_upsampling_first():
    """SpatialNorm computes conv_y/conv_b at code resolution; upsampling zq first gives the same."""
    torch.manual_seed(0)
    from movq_cli.config import MovqConfig

    model = Movq(MovqConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_levels=(), n_embed=8)).eval()
    norm = model.decoder.norm_out
    f, zq = torch.randn(1, 32, 16, 12), torch.randn(1, 4, 4, 3)
    with torch.no_grad():
        up = torch.nn.functional.interpolate(zq, size=(16, 12), mode="nearest")
        expected = norm.norm_layer(f) * norm.conv_y(up) + norm.conv_b(up)
        assert (norm(f, zq) - expected).abs().max().item() <= 1e-5


@pytest.mark.xfail(
    strict=True,
    reason="known: PyTorch's CPU GroupNorm kernel for channels_last input drifts to ~4e-4 on a 512x512 "
    "frame with a large mean; running it contiguous fixes this but slows the decode by 25-50%",
)
def test_spatial_norm_stays_precise_on_large_channels_last_frames():
    """SpatialNorm on a large channels_last frame whose activations have a large mean."""
    from movq_cli.model import SpatialNorm

    torch.manual_seed(0)
    norm = SpatialNorm(64, 4, add_conv=False, groups=32)
    f = (torch.randn(1, 64, 512, 512) * 3 + 5).contiguous(memory_format=torch.channels_last)
    zq = torch.randn(1, 4, 64, 64)
    with torch.inference_mode():
        got = norm(f, zq).double()
        up = torch.nn.functional.interpolate(zq.double(), size=(512, 512), mode="nearest")
        layer = norm.norm_layer
        normed = torch.nn.functional.group_norm(f.double(), 32, layer.weight.double(), layer.bias.double(), 1e-6)
        scale = torch.nn.functional.conv2d(up, norm.conv_y.weight.double(), norm.conv_y.bias.double())
        shift = torch.nn.functional.conv2d(up, norm.conv_b.weight.double(), norm.conv_b.bias.double())
    assert (got - (normed * scale + shift)).abs().max().item() <= 2e-5
