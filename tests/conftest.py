"""What the test modules share: small random MoVQ models built with diffusers (the independent
reference), pixels and PSNR, the CLI runner, and checkpoints in the original layout.

Test modules import these names from here (`from conftest import ...`).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from movq_cli.models.config import MovqConfig


def pytest_configure(config: pytest.Config) -> None:
    """--basetemp may name a folder whose parent does not exist yet (pytest creates only the last level)."""
    if config.option.basetemp:
        Path(config.option.basetemp).resolve().parent.mkdir(parents=True, exist_ok=True)


# The small model most tests use, as make_vqmodel's arguments and, written out by hand (not
# converted), as the MovqConfig that describes it: widths (32, 64), one ResBlock per encoder
# level (two per decoder level), attention at the lowest resolution, 64 codes of 4 numbers.
SMALL = dict(widths=(32, 64), layers=1, attn=(True, False), latent=4, n_e=64)
SMALL_CONFIG = MovqConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), n_embed=64)


def make_vqmodel(
    widths=(32, 64), layers=1, attn=(True, False), latent=4, n_e=64, mid_attn=True, norm_groups=32, seed=0
):
    """A random diffusers VQModel with spatial norms. `attn` is per up block (lowest resolution
    first); the encoder has attention at the same levels. `norm_groups` is diffusers'
    norm_num_groups (the encoder's GroupNorms; SpatialNorm always has 32). Norm affines and
    biases are perturbed so that every parameter matters."""
    from diffusers import VQModel

    torch.manual_seed(seed)
    model = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in reversed(attn)),
        up_block_types=tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in attn),
        block_out_channels=widths,
        layers_per_block=layers,
        latent_channels=latent,
        num_vq_embeddings=n_e,
        norm_num_groups=norm_groups,
        vq_embed_dim=latent,
        norm_type="spatial",
        mid_block_add_attention=mid_attn,
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.2)
    return model.eval()


def diffusers_decode(model, zq: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.decode(zq, force_not_quantize=True).sample


def codes_to_zq(model, codes: torch.Tensor) -> torch.Tensor:
    return model.quantize.embedding.weight[codes].permute(0, 3, 1, 2)


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in about [-1, 1] -> (B, H, W, 3) uint8, as the Kandinsky pipelines do."""
    pixels = torch.round(torch.clamp((images.float() + 1) / 2, 0, 1) * 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 pictures (or stacks of them), in dB."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255**2 / max(mse, 1e-10))


@pytest.fixture(scope="session")
def small_folder(tmp_path_factory):
    """A diffusers folder (config.json + safetensors) of a small random model, and the model."""
    model = make_vqmodel(**SMALL)
    folder = tmp_path_factory.mktemp("movq") / "movq"
    model.save_pretrained(folder)
    return folder, model


# CogVideoX: diffusers' AutoencoderKLCogVideoX, small and random.

# Three levels, both upsamplers doubling time: the chunk and first-frame rules at a small cost.
VIDEO_SMALL = dict(block_out_channels=(16, 16, 32), layers_per_block=1, norm_num_groups=8, temporal_compression_ratio=4)


def make_cogvideox_vae(seed: int = 0, scaling_factor: float = 1.15258426, **structure):
    """A random diffusers AutoencoderKLCogVideoX. Norm affines and biases are perturbed so that
    every parameter matters."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed)
    levels = len(structure["block_out_channels"])
    vae = AutoencoderKLCogVideoX(
        latent_channels=16,
        down_block_types=("CogVideoXDownBlock3D",) * levels,
        up_block_types=("CogVideoXUpBlock3D",) * levels,
        scaling_factor=scaling_factor,
        **structure,
    )
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.2)
    return vae.eval()


def cogvideox_pipeline_frames(vae, latents: np.ndarray) -> np.ndarray:
    """What a CogVideoX pipeline makes of latents (1, F, C, h, w) as it hands them out
    (multiplied by scaling_factor): frames (T, H, W, 3) uint8."""
    vae.disable_tiling()
    with torch.no_grad():
        video = vae.decode(torch.from_numpy(latents).permute(0, 2, 1, 3, 4) / vae.config.scaling_factor).sample
    pixels = torch.round(torch.clamp(video[0] / 2 + 0.5, 0, 1) * 255).to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).numpy()


@pytest.fixture(scope="session")
def video_folder(tmp_path_factory):
    """A CogVideoX pipeline folder (vae/config.json + safetensors) of a small random VAE, and the VAE."""
    vae = make_cogvideox_vae(scaling_factor=0.7, **VIDEO_SMALL)  # the 5b models' factor
    root = tmp_path_factory.mktemp("cogvideox")
    vae.save_pretrained(root / "vae")
    return root, vae


# The command line, in process.

runner = CliRunner()


def movq(*args):
    """Run `movq ARGS...` in process; returns typer's Result (exit_code, stdout, stderr)."""
    from movq_cli.cli import app  # here, so that a broken command line fails only the tests that use it

    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, code: int, needle: str) -> None:
    """The command failed with exit `code` and one line on stderr, "error: ...", mentioning `needle`."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert needle.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in result.output


# Checkpoints in the original (taming-style) layout, made from a diffusers model with a mapping
# written from the published names of both layouts, not with the project's converters. The names
# it makes are held against a list written from the original code's modules (test_original_names.py).

# diffusers name -> original name, after decoder.up_blocks.{b} -> decoder.up.{levels - 1 - b}
ORIGINAL_NAMES = [
    (r"\.mid_block\.resnets\.0\.", ".mid.block_1."),
    (r"\.mid_block\.resnets\.1\.", ".mid.block_2."),
    (r"\.mid_block\.attentions\.0\.", ".mid.attn_1."),
    (r"\.conv_norm_out\.", ".norm_out."),
    (r"encoder\.down_blocks\.", "encoder.down."),
    (r"\.resnets\.", ".block."),
    (r"\.attentions\.", ".attn."),
    (r"\.upsamplers\.0\.", ".upsample."),
    (r"\.downsamplers\.0\.", ".downsample."),
    (r"\.conv_shortcut\.", ".nin_shortcut."),
    (r"\.spatial_norm\.", ".norm."),
    (r"\.group_norm\.", ".norm."),
    (r"\.to_q\.", ".q."),
    (r"\.to_k\.", ".k."),
    (r"\.to_v\.", ".v."),
    (r"\.to_out\.0\.", ".proj_out."),
]


def original_state(reference, linear_attention: bool = False) -> dict[str, torch.Tensor]:
    """The reference model's tensors as a taming-style checkpoint holds them (encoder included)."""
    levels = len(reference.config.block_out_channels)
    state = {}
    for name, tensor in reference.state_dict().items():
        name = re.sub(r"decoder\.up_blocks\.(\d+)\.", lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.", name)
        for pattern, replacement in ORIGINAL_NAMES:
            name = re.sub(pattern, replacement, name)
        if re.search(r"attn(_1|\.\d+)\.(q|k|v|proj_out)\.weight$", name) and not linear_attention:
            tensor = tensor[:, :, None, None]
        state[name] = tensor.clone()
    return state


def write_lightning_ckpt(reference, path) -> None:
    """A Lightning checkpoint of the reference: prefixed model, loss and optimizer state beside it."""
    state = {f"first_stage_model.{name}": tensor for name, tensor in original_state(reference).items()}
    state["loss.logvar"] = torch.zeros(())
    state["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)
    state["cond_stage_model.proj.weight"] = torch.randn(3, 3)
    optimizer = {"state": {0: {"exp_avg": torch.randn(5)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}
    torch.save({"state_dict": state, "optimizer_states": [optimizer], "epoch": 7, "global_step": 1000}, path)


class RunsCode:
    """Pickles into a call of os.system that creates `marker`: what loading must never run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo pwned > {self.marker}",)
