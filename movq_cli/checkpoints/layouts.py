"""Foreign checkpoint layouts, each turned into the native one by a pure function.

The native layout is the module tree of `movq_cli.models.movq.Movq` (the original MoVQ names), so
"original" files (taming-transformers, Kandinsky-2, MoVQGAN) keep their names: only attention
projections stored as Linear weights are reshaped. diffusers names go through the table
DIFFUSERS_RENAMES (docs/ARCHITECTURE.md, section 4). CogVideoX files, SAT's included, are
checkpoints/cogvideox.py's.
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch

from movq_cli.models.config import MovqConfig

# Every decoder has this tensor, in every layout: it marks where the model's names begin.
TELLTALE = "decoder.conv_in.weight"
# ... and in every family: CogVideoX's causal conv_in holds a conv of its own
TELLTALES = (TELLTALE, "decoder.conv_in.conv.weight")
# The parts of a MoVQ model a decoder reads, and what encoding adds.
DECODER_ROOTS = ("decoder.", "quantize.", "post_quant_conv.")
ENCODER_ROOTS = ("encoder.", "quant_conv.")
LAYOUTS = ("diffusers", "original")

# diffusers -> native, (pattern, replacement) applied in order to every name, after the decoder's
# block index is reversed (the one rule computed rather than looked up: see _diffusers_name).
_IN_ATTENTION = r"(\.attn(?:_1|\.\d+)\.)"  # what precedes an attention layer's tensors, once renamed
DIFFUSERS_RENAMES = [
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
    # inside attention layers; query/key/value/proj_attn are what older diffusers files call them
    (_IN_ATTENTION + r"(?:to_q|query)\.", r"\1q."),
    (_IN_ATTENTION + r"(?:to_k|key)\.", r"\1k."),
    (_IN_ATTENTION + r"(?:to_v|value)\.", r"\1v."),
    (_IN_ATTENTION + r"(?:to_out\.0|proj_attn)\.", r"\1proj_out."),
    (_IN_ATTENTION + r"(?:spatial_norm|group_norm)\.", r"\1norm."),
]


def is_diffusers(names: list[str]) -> bool:
    return any(name.startswith(("decoder.up_blocks.", "decoder.mid_block.")) for name in names)


def is_original(names: list[str]) -> bool:
    return any(name.startswith(("decoder.up.", "decoder.mid.")) for name in names)


def detect_layout(names: list[str]) -> str:
    """The layout of unprefixed tensor names: "diffusers" or "original" (ValueError if neither)."""
    if is_diffusers(names):
        return "diffusers"
    if is_original(names):
        return "original"
    shown = ", ".join(names[:4]) or "none"
    raise ValueError(f"unknown checkpoint layout (keys: {shown}, ...); supported: native, {', '.join(LAYOUTS)}")


def find_prefix(names: list[str]) -> str:
    """What precedes the model's names, e.g. "first_stage_model." ("" when nothing does).

    The shortest prefix wins, so a model saved beside its EMA copy loads the model itself.
    """
    prefixes = [name[: -len(telltale)] for name in names for telltale in TELLTALES if name.endswith(telltale)]
    prefixes = [prefix for prefix in prefixes if prefix == "" or prefix.endswith(".")]
    return min(prefixes, key=len) if prefixes else ""


def model_name(name: str, prefix: str, encoder: bool = False) -> str | None:
    """`name` without `prefix` when the decoder (or with `encoder`, the encoder) reads it;
    None for everything else (loss, optimizer state, ...)."""
    if not name.startswith(prefix):
        return None
    name = name[len(prefix) :]
    return name if name.startswith(DECODER_ROOTS + (ENCODER_ROOTS if encoder else ())) else None


def to_native(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """An unprefixed state dict in `layout` -> native names."""
    return diffusers_to_native(state) if layout == "diffusers" else original_to_native(state)


def original_to_native(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A taming-style state dict -> native names: the same names, model tensors only."""
    return {
        name: _attention_as_conv(name, tensor)
        for name, tensor in state.items()
        if name.startswith(DECODER_ROOTS + ENCODER_ROOTS)
    }


def _attention_as_conv(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Some exports store q/k/v/proj_out as (C, C) Linear weights; the model has 1x1 convs."""
    if tensor.ndim == 2 and re.search(r"attn(_1|\.\d+)\.(q|k|v|proj_out)\.weight$", name):
        return tensor[:, :, None, None]
    return tensor


def diffusers_to_native(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers VQModel state dict -> native names."""
    levels = 1 + max(
        (int(m.group(1)) for name in state if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", name))),
        default=0,
    )
    native = {}
    for name, tensor in state.items():
        if not name.startswith(DECODER_ROOTS + ENCODER_ROOTS):
            continue
        new = _diffusers_name(name, levels)
        native[new] = _attention_as_conv(new, tensor)
    return native


def _diffusers_name(name: str, levels: int) -> str:
    # diffusers counts decoder blocks in decode order (lowest resolution first), the native layout
    # from full resolution: up_blocks.{b} is up.{levels - 1 - b}. Encoder blocks count alike in both.
    name = re.sub(r"decoder\.up_blocks\.(\d+)\.", lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.", name)
    for pattern, replacement in DIFFUSERS_RENAMES:
        name = re.sub(pattern, replacement, name)
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
        encoder_norm_groups=values.get("norm_num_groups", 32),  # the encoder's plain GroupNorms do use it
    )


def settle_config(config: MovqConfig, state: dict[str, torch.Tensor]) -> MovqConfig:
    """`config` as the tensors read have it: without a codebook where they hold none (Kandinsky 3's
    config.json names one, its decoder takes latents only), and with the encoder they hold (or none)."""
    if "quantize.embedding.weight" not in state and config.n_embed is not None:
        config = replace(config, n_embed=None, n_used=None)
    has_encoder = any(name.startswith("encoder.") for name in state)
    if config.encoder != has_encoder:
        in_ch = state["encoder.conv_in.weight"].shape[1] if has_encoder else config.in_ch
        config = replace(config, encoder=has_encoder, in_ch=in_ch)
    return config
