"""Small random MoVQ models built with diffusers, the independent reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

SMALL = dict(widths=(32, 64), layers=1, attn=(True, False), latent=4, n_e=64)


def make_vqmodel(widths=(32, 64), layers=1, attn=(True, False), latent=4, n_e=64, mid_attn=True, seed=0):
    """A random diffusers VQModel with spatial norms. `attn` is per up block (lowest resolution
    first); the encoder has attention at the same levels. Norm affines and biases are perturbed
    so that every parameter matters."""
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
        norm_num_groups=32,
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


@pytest.fixture(scope="session")
def small_folder(tmp_path_factory):
    """A diffusers folder (config.json + safetensors) of a small random model, and the model."""
    model = make_vqmodel(**SMALL)
    folder = tmp_path_factory.mktemp("movq") / "movq"
    model.save_pretrained(folder)
    return folder, model
