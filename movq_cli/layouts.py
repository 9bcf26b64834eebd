"""Foreign checkpoint layouts, each turned into the native one by a pure function.

The native layout is the module tree of `movq_cli.model.Movq` (the original MoVQ names).
"""

from __future__ import annotations

import re

import torch

from movq_cli.config import MovqConfig

# Tensors a decoder never needs, whatever the layout.
SKIPPED_PREFIXES = ("encoder.", "quant_conv.", "loss.")

_DIFFUSERS_ATTENTION = {
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
    "spatial_norm": "norm",
}


def is_diffusers(names: list[str]) -> bool:
    return any(name.startswith(("decoder.up_blocks.", "decoder.mid_block.")) for name in names)


def diffusers_to_native(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers VQModel state dict -> native names. Encoder tensors are dropped."""
    levels = 1 + max(
        (int(m.group(1)) for name in state if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", name))),
        default=0,
    )
    native = {}
    for name, tensor in state.items():
        if name.startswith(SKIPPED_PREFIXES):
            continue
        new = _diffusers_name(name, levels)
        if re.search(r"attn(_1|\.\d+)\.(q|k|v|proj_out)\.weight$", new) and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # Linear (C, C) -> 1x1 conv (C, C, 1, 1)
        native[new] = tensor
    return native


def _diffusers_name(name: str, levels: int) -> str:
    name = name.replace("decoder.mid_block.resnets.0.", "decoder.mid.block_1.")
    name = name.replace("decoder.mid_block.resnets.1.", "decoder.mid.block_2.")
    name = name.replace("decoder.mid_block.attentions.0.", "decoder.mid.attn_1.")
    name = name.replace("decoder.conv_norm_out.", "decoder.norm_out.")
    name = re.sub(
        r"decoder\.up_blocks\.(\d+)\.",
        lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.",
        name,
    )
    name = name.replace(".resnets.", ".block.").replace(".attentions.", ".attn.")
    name = name.replace(".upsamplers.0.", ".upsample.").replace(".conv_shortcut.", ".nin_shortcut.")
    if ".attn" in name:
        head, _, tail = name.rpartition(".")  # tail: weight or bias
        for old, new in _DIFFUSERS_ATTENTION.items():
            if head.endswith("." + old):
                head = head[: -len(old)] + new
            elif f".{old}." in head:
                head = head.replace(f".{old}.", f".{new}.")
        name = f"{head}.{tail}"
    return name


def config_from_diffusers(values: dict) -> MovqConfig:
    """A diffusers VQModel config.json (as a dict) -> MovqConfig."""
    if values.get("norm_type", "group") != "spatial":
        raise ValueError(
            f"norm_type is {values.get('norm_type', 'group')!r}: not a MoVQ model "
            "(MoVQ decoders use norm_type 'spatial')"
        )
    widths = list(values.get("block_out_channels", [64]))
    if any(width % widths[0] for width in widths):
        raise ValueError(f"block_out_channels {widths} are not multiples of the first")
    up_types = list(values.get("up_block_types", ["UpDecoderBlock2D"] * len(widths)))
    if len(up_types) != len(widths):
        raise ValueError("up_block_types and block_out_channels differ in length")
    levels = len(widths)
    latent = values.get("latent_channels", 3)
    return MovqConfig(
        ch=widths[0],
        ch_mult=tuple(width // widths[0] for width in widths),
        num_res_blocks=values.get("layers_per_block", 1),
        attn_levels=tuple(levels - 1 - b for b, kind in enumerate(up_types) if "Attn" in kind),
        mid_attn=values.get("mid_block_add_attention", True),
        z_channels=latent,
        embed_dim=values.get("vq_embed_dim") or latent,
        n_embed=values.get("num_vq_embeddings", 256),
        out_ch=values.get("out_channels", 3),
        norm_groups=32,  # diffusers' SpatialNorm always uses 32 groups, whatever norm_num_groups says
    )
