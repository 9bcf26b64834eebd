"""Emu3 vision tokenizer checkpoints: recognising them, renaming them to native names, their config.

Native names are BAAI's (`movq_cli.models.emu3.Emu3`), so BAAI/Emu3-VisionTokenizer's
model.safetensors only loses its encoder. transformers' `Emu3VQVAE` names the same tensors its own
way (RENAMES) and stores the attention projections as Linear weights; inside the language-model
repositories (BAAI/Emu3-Gen-hf, Emu3-Chat-hf) its tensors carry a `vqmodel.` or `model.vqmodel.`
prefix among the language model's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

from movq_cli.checkpoints import infer
from movq_cli.checkpoints.shapes import Shapes
from movq_cli.models.config import Emu3Config

# Only Emu3 has a temporal stack in its decoder, in both layouts. (The 2D MoVQ's decoder starts at
# decoder.conv_in.weight, which Emu3 has too; CogVideoX's at decoder.conv_in.conv.weight.)
TELLTALE = "decoder.time_res_stack.0.conv1.conv.weight"
# What precedes the vision tokenizer's names in transformers' Emu3 language-model repositories
# (`model.vqmodel.` once transformers has mapped them at load time), longest first
PREFIXES = ("model.vqmodel.", "vqmodel.")
# config.json's model_type: BAAI's vision tokenizer, transformers' Emu3VQVAE, an Emu3 language model (its vq_config)
MODEL_TYPES = ("Emu3VisionVQ", "emu3_vqgan", "emu3")
# The parts of the model the decoder reads
DECODER_ROOTS = ("decoder.", "quantize.", "post_quant_conv.")

# transformers -> native, (pattern, replacement) applied in order to every decoder name. Order
# matters twice: the attention norms are renamed before the generic middle_block and up_block rules,
# which would otherwise turn them into names that no longer say which attention they belong to.
RENAMES = (
    (r"^decoder\.middle_block\.attn_norm\.", "decoder.mid.attn_1.norm."),
    (r"^decoder\.up_block\.up\.(\d+)\.attn_norms\.(\d+)\.", r"decoder.up.\1.attn.\2.norm."),
    (r"^decoder\.middle_block\.", "decoder.mid."),
    (r"^decoder\.up_block\.up\.", "decoder.up."),
    (r"\.(q|k|v)_proj\.", r".\1."),
    (r"\.out_proj\.", ".proj_out."),
)
_LINEAR_PROJECTION = r"\.attn(?:_1|\.\d+)\.(?:q|k|v|proj_out)\.weight$"


def is_emu3(names: Sequence[str]) -> bool:
    """Whether tensor names (with or without a prefix) are an Emu3 vision tokenizer's, in either layout."""
    return any(name.endswith(TELLTALE) for name in names)


def is_transformers(names: Sequence[str]) -> bool:
    """Whether unprefixed Emu3 names are in transformers' layout (else BAAI's)."""
    return any(name.startswith(("decoder.middle_block.", "decoder.up_block.")) for name in names)


def baai_to_native(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BAAI Emu3VisionVQModel state dict -> native names: the same names, without the encoder and quant_conv."""
    return {name: tensor for name, tensor in state.items() if name.startswith(DECODER_ROOTS)}


def transformers_to_native(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An `Emu3VQVAE` state dict, or a whole Emu3 language model's (its `vqmodel.` or
    `model.vqmodel.` tensors), -> native names: the decoder's tensors renamed by RENAMES, the
    Linear attention projections (C, C) as the 1x1 convolutions (C, C, 1, 1) they are."""
    native = {}
    for name, tensor in state.items():
        name = _unprefixed(name)
        if not name.startswith(DECODER_ROOTS):
            continue
        for pattern, replacement in RENAMES:
            name = re.sub(pattern, replacement, name)
        if tensor.ndim == 2 and re.search(_LINEAR_PROJECTION, name):
            tensor = tensor[:, :, None, None]
        native[name] = tensor
    return native


def to_native(state: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """An Emu3 state dict in either layout (prefixed or not) -> its layout's name ("baai" or
    "transformers") and the tensors in native names."""
    if is_transformers([_unprefixed(name) for name in state]):
        return "transformers", transformers_to_native(state)
    return "baai", baai_to_native(state)


def _unprefixed(name: str) -> str:
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def config_from_json(values: dict) -> Emu3Config:
    """A config.json (as a dict) -> Emu3Config: BAAI's (`model_type` Emu3VisionVQ), transformers'
    `Emu3VQVAEConfig` (emu3_vqgan), or an Emu3 language model's (emu3), whose `vq_config` it reads.
    ValueError for anything else, or for what this decoder cannot be."""
    kind = values.get("model_type")
    if kind == "Emu3VisionVQ":
        return _config(values, "ch", "ch_mult", "z_channels")
    if kind == "emu3_vqgan":
        return _transformers_config(values)
    if kind == "emu3":
        if not isinstance(values.get("vq_config"), dict):
            raise ValueError("an Emu3 model config.json without a vq_config: not the vision tokenizer's")
        return _transformers_config(values["vq_config"])
    raise ValueError(
        f"model_type is {kind!r}: not an Emu3 vision tokenizer config (expected Emu3VisionVQ, emu3_vqgan, "
        "or emu3 with a vq_config)"
    )


def _transformers_config(values: dict) -> Emu3Config:
    """Emu3VQVAEConfig's names; its attention is single-head over hidden_size channels."""
    config = _config(values, "base_channels", "channel_multiplier", "latent_channels")
    heads = values.get("num_attention_heads", 1)
    if heads != 1:
        raise ValueError(f"num_attention_heads is {heads}; the Emu3 vision tokenizer's attention has one head")
    width = config.ch * config.ch_mult[-1]
    if values.get("hidden_size", width) != width:
        raise ValueError(f"hidden_size {values['hidden_size']} is not the lowest level's width {width}")
    return config


def _config(values: dict, ch: str, ch_mult: str, z_channels: str) -> Emu3Config:
    """The keys both layouts share, and the three they name apart; missing ones take the released values."""
    released = Emu3Config()
    return Emu3Config(
        codebook_size=values.get("codebook_size", released.codebook_size),
        embed_dim=values.get("embed_dim", released.embed_dim),
        z_channels=values.get(z_channels, released.z_channels),
        ch=values.get(ch, released.ch),
        ch_mult=tuple(values.get(ch_mult, released.ch_mult)),
        num_res_blocks=values.get("num_res_blocks", released.num_res_blocks),
        attn_levels=tuple(values.get("attn_resolutions", released.attn_levels)),
        temporal_downsample_factor=values.get("temporal_downsample_factor", released.temporal_downsample_factor),
        out_ch=values.get("out_channels", released.out_ch),
    )


def infer_config(shapes: Shapes) -> Emu3Config:
    """Native tensor name -> shape, to the config that has exactly these tensors.

    The 2D decoder is read as a MoVQ's (checkpoints/infer.py); the temporal layers' counts give
    num_res_blocks (which the two parts share) and the temporal factor. Only the GroupNorm group
    count does not show; it takes the released value, 32. Raises ValueError naming the tensor
    that is missing or off.
    """
    for name in ("post_quant_conv.conv.weight", "quantize.embedding.weight"):
        if name not in shapes:
            raise ValueError(f"missing tensor {name}")
    post_quant_conv = shapes["post_quant_conv.conv.weight"]
    decoder_2d = infer.infer_config({**shapes, "post_quant_conv.weight": post_quant_conv})
    stack = _layers(shapes, "time_res_stack", "conv1")
    if stack != decoder_2d.num_res_blocks:
        raise ValueError(
            f"decoder.time_res_stack has {stack} blocks, but the 2D decoder {decoder_2d.num_res_blocks + 1} "
            f"ResBlocks a level (expected {decoder_2d.num_res_blocks} blocks)"
        )
    config = Emu3Config(  # its ValueError says which knob is off
        codebook_size=shapes["quantize.embedding.weight"][0],
        embed_dim=post_quant_conv[1],
        z_channels=decoder_2d.z_channels,
        ch=decoder_2d.ch,
        ch_mult=decoder_2d.ch_mult,
        num_res_blocks=decoder_2d.num_res_blocks,
        attn_levels=decoder_2d.attn_levels,
        temporal_downsample_factor=2 ** _layers(shapes, "time_conv", "conv"),
        out_ch=decoder_2d.out_ch,
    )
    from movq_cli.checkpoints.building import expected_shapes, mismatches  # building knows every family

    problems = mismatches(expected_shapes(config), shapes)
    if problems:
        raise ValueError(f"the tensors do not fit one decoder ({problems[0]})")
    return config


def _layers(shapes: Shapes, stack: str, conv: str) -> int:
    """How many layers decoder.{stack} has: its numbered layers' `conv` kernels (a missing one
    in between shows later, as a mismatch)."""
    pattern = rf"decoder\.{stack}\.\d+\.{conv}\.conv\.weight"
    return sum(1 for name in shapes if re.fullmatch(pattern, name))
