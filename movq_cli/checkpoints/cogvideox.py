"""CogVideoX VAE checkpoints: recognising them, renaming them to native names, their config.

Native names are diffusers' decoder names (`movq_cli.models.cogvideox.CogVideoX`), so a diffusers
file only loses its encoder. The original SAT checkpoint (`3d-vae.pt`, the module tree of
CogVideo's `sat/vae_modules/cp_enc_dec.py`) names levels full resolution first (`decoder.up.0` is
diffusers' last up block) and calls blocks, upsamplers and shortcuts by the taming names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

from movq_cli.checkpoints.shapes import Shapes, count, shape
from movq_cli.models.config import CogVideoXConfig

# Only a causal 3D convolution has a `.conv` inside conv_in; the 2D MoVQ's is `decoder.conv_in.weight`.
TELLTALE = "decoder.conv_in.conv.weight"
# What infer_config cannot read off the tensors: the released models' values (vae/config.json).
DEFAULT_GROUPS = 32
DEFAULT_TEMPORAL_RATIO = 4
DEFAULT_SCALING_FACTOR = 1.15258426  # CogVideoX-2b's; the 5b models use 0.7

# SAT -> diffusers names, applied in order; the level numbers are reversed separately.
_SAT_RENAMES = (
    (r"^decoder\.mid\.block_1\.", "decoder.mid_block.resnets.0."),
    (r"^decoder\.mid\.block_2\.", "decoder.mid_block.resnets.1."),
    (r"\.block\.(\d+)\.", r".resnets.\1."),
    (r"\.upsample\.", ".upsamplers.0."),
    (r"\.nin_shortcut\.", ".conv_shortcut."),
)


def is_cogvideox(names: Sequence[str]) -> bool:
    """Whether tensor names (with or without a prefix) are a CogVideoX VAE's, in any layout."""
    return any(name.endswith(TELLTALE) for name in names)


def is_sat(names: Sequence[str]) -> bool:
    """Whether unprefixed CogVideoX names are in the original SAT layout."""
    return any(name.startswith(("decoder.up.", "decoder.mid.")) for name in names)


def diffusers_to_native(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An AutoencoderKLCogVideoX state dict -> native names: the decoder's tensors.

    The encoder and quant_conv are dropped. A post_quant_conv is kept so that loading reports
    it: the released models have none and the decoder would silently skip it.
    """
    return {name: tensor for name, tensor in state.items() if name.startswith(("decoder.", "post_quant_conv."))}


def sat_to_native(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original SAT state dict (unwrapped from `state_dict`, unprefixed) -> native names.

    The encoder and the loss's tensors are dropped.
    """
    levels = 1 + max((int(m.group(1)) for name in state if (m := re.match(r"decoder\.up\.(\d+)\.", name))), default=0)
    native = {}
    for name, tensor in state.items():
        if not name.startswith("decoder."):
            continue
        # SAT numbers levels full resolution first; diffusers numbers up blocks in decode order
        name = re.sub(r"^decoder\.up\.(\d+)\.", lambda m: f"decoder.up_blocks.{levels - 1 - int(m.group(1))}.", name)
        for old, new in _SAT_RENAMES:
            name = re.sub(old, new, name)
        native[name] = tensor
    return native


def config_from_diffusers(values: dict) -> CogVideoXConfig:
    """An AutoencoderKLCogVideoX config.json (as a dict) -> CogVideoXConfig."""
    kind = values.get("_class_name", "AutoencoderKLCogVideoX")
    if kind != "AutoencoderKLCogVideoX":
        raise ValueError(f"_class_name is {kind!r}, not AutoencoderKLCogVideoX")
    widths = tuple(values.get("block_out_channels", (128, 256, 256, 512)))
    up_types = tuple(values.get("up_block_types", ("CogVideoXUpBlock3D",) * len(widths)))
    if len(up_types) != len(widths) or set(up_types) != {"CogVideoXUpBlock3D"}:
        raise ValueError(f"up_block_types {up_types}: expected one CogVideoXUpBlock3D per block_out_channels entry")
    if values.get("use_post_quant_conv", False):
        raise ValueError("use_post_quant_conv is set; the CogVideoX decoder here has no post_quant_conv")
    if values.get("act_fn", "silu") != "silu" or values.get("norm_eps", 1e-6) != 1e-6:
        raise ValueError("act_fn and norm_eps must be silu and 1e-6, as in every released CogVideoX VAE")
    return CogVideoXConfig(
        block_out_channels=widths,
        layers_per_block=values.get("layers_per_block", 3),
        latent_channels=values.get("latent_channels", 16),
        out_channels=values.get("out_channels", 3),
        norm_num_groups=values.get("norm_num_groups", DEFAULT_GROUPS),
        temporal_compression_ratio=int(values.get("temporal_compression_ratio", DEFAULT_TEMPORAL_RATIO)),
        scaling_factor=values.get("scaling_factor", DEFAULT_SCALING_FACTOR),
        invert_scale_latents=values.get("invert_scale_latents", False),
    )


def infer_config(shapes: Shapes) -> CogVideoXConfig:
    """Native tensor name -> shape, to the config that has exactly these tensors.

    The weights show widths, resnets per block and channels. They do not show the GroupNorm
    group count, the temporal compression or how latents are scaled: the first two take the
    released models' values (32, 4); the scaling factor, which differs between them (1.15258426
    for 2b, 0.7 for 5b and 1.5), is left unknown (None). Raises ValueError naming the tensor that is missing or off.
    """
    levels = count(shapes, r"decoder\.up_blocks\.(\d+)\.")
    if levels == 0:
        raise ValueError("missing tensors decoder.up_blocks.*: no up blocks found")
    layers = count(shapes, r"decoder\.up_blocks\.0\.resnets\.(\d+)\.")
    widths = [shape(shapes, f"decoder.up_blocks.{i}.resnets.0.conv2.conv.weight")[0] for i in range(levels)]
    try:
        config = CogVideoXConfig(
            block_out_channels=tuple(reversed(widths)),
            layers_per_block=layers - 1,
            latent_channels=shape(shapes, TELLTALE)[1],
            out_channels=shape(shapes, "decoder.conv_out.conv.weight")[0],
            norm_num_groups=DEFAULT_GROUPS,
            temporal_compression_ratio=DEFAULT_TEMPORAL_RATIO,
            scaling_factor=None,
        )
    except ValueError as error:
        raise ValueError(f"the tensors describe no valid decoder: {error}") from None
    from movq_cli.checkpoints.building import expected_shapes, mismatches  # building knows every family

    problems = mismatches(expected_shapes(config), shapes)
    if problems:
        raise ValueError(f"the tensors do not fit one decoder ({problems[0]})")
    return config
