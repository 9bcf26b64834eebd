"""The original MoVQ tensor names, pinned by a list written from the original code's modules.

The list below follows the module tree of Kandinsky-2's `kandinsky2/vqgan` (the MoVQGAN and
taming-transformers code it comes from names its modules alike): `MOVQ` holds `encoder`,
`decoder`, `quantize` (a `VectorQuantizer` with an `embedding`), `quant_conv` and
`post_quant_conv`; `MOVQDecoder` holds `conv_in`, `mid.block_1`, `mid.attn_1`, `mid.block_2`,
`up[i].block[j]`, `up[i].attn[j]` and `up[i].upsample.conv` (up[0] is the highest resolution:
each new level is inserted at 0), `norm_out` and `conv_out`; taming's `Encoder` holds `conv_in`,
`down[i].block[j]`, `down[i].attn[j]`, `down[i].downsample.conv`, the same middle, `norm_out` and
`conv_out`. A `ResnetBlock` holds `norm1`, `conv1`, `norm2`, `conv2` and, where its width changes,
`nin_shortcut`; an `AttnBlock` holds `norm`, `q`, `k`, `v` and `proj_out`. The decoder's norms are
`SpatialNorm`s (`norm_layer`, `conv_y`, `conv_b`), the encoder's plain GroupNorms.

It is written for the tests' small model (ch 32, ch_mult (1, 2), num_res_blocks 1, attention at
the lowest resolution and in the middle), and is checked against the native model, the
diffusers renames and the checkpoints the tests write in the original layout.
"""

from __future__ import annotations

from dataclasses import replace

from conftest import SMALL_CONFIG, original_state

from movq_cli.checkpoints.layouts import diffusers_to_native
from movq_cli.models.movq import Movq

# What each kind of module of the original code holds.
CONV = ["weight", "bias"]  # nn.Conv2d
GROUP_NORM = ["weight", "bias"]  # Normalize: nn.GroupNorm with an affine
SPATIAL_NORM = [f"{part}.{tensor}" for part in ("norm_layer", "conv_y", "conv_b") for tensor in ("weight", "bias")]


def _resnet(norm: list[str], shortcut: bool = False) -> list[str]:
    parts = [("norm1", norm), ("conv1", CONV), ("norm2", norm), ("conv2", CONV)]
    parts += [("nin_shortcut", CONV)] if shortcut else []
    return [f"{name}.{tensor}" for name, tensors in parts for tensor in tensors]


def _attention(norm: list[str]) -> list[str]:
    return [f"norm.{tensor}" for tensor in norm] + [
        f"{name}.{tensor}" for name in ("q", "k", "v", "proj_out") for tensor in CONV
    ]


# The small model's modules, as the original code names them, and what each holds.
SMALL_MODULES = {
    "encoder.conv_in": CONV,
    "encoder.down.0.block.0": _resnet(GROUP_NORM),
    "encoder.down.0.downsample.conv": CONV,
    "encoder.down.1.block.0": _resnet(GROUP_NORM, shortcut=True),  # 32 -> 64 channels
    "encoder.down.1.attn.0": _attention(GROUP_NORM),
    "encoder.mid.block_1": _resnet(GROUP_NORM),
    "encoder.mid.attn_1": _attention(GROUP_NORM),
    "encoder.mid.block_2": _resnet(GROUP_NORM),
    "encoder.norm_out": GROUP_NORM,
    "encoder.conv_out": CONV,
    "quant_conv": CONV,
    "quantize.embedding": ["weight"],
    "post_quant_conv": CONV,
    "decoder.conv_in": CONV,
    "decoder.mid.block_1": _resnet(SPATIAL_NORM),
    "decoder.mid.attn_1": _attention(SPATIAL_NORM),
    "decoder.mid.block_2": _resnet(SPATIAL_NORM),
    "decoder.up.1.block.0": _resnet(SPATIAL_NORM),
    "decoder.up.1.attn.0": _attention(SPATIAL_NORM),
    "decoder.up.1.block.1": _resnet(SPATIAL_NORM),
    "decoder.up.1.attn.1": _attention(SPATIAL_NORM),
    "decoder.up.1.upsample.conv": CONV,
    "decoder.up.0.block.0": _resnet(SPATIAL_NORM, shortcut=True),  # 64 -> 32 channels
    "decoder.up.0.block.1": _resnet(SPATIAL_NORM),
    "decoder.norm_out": SPATIAL_NORM,
    "decoder.conv_out": CONV,
}
ORIGINAL_TENSORS = [f"{module}.{tensor}" for module, tensors in SMALL_MODULES.items() for tensor in tensors]


def test_the_list_names_every_tensor_once():
    assert len(ORIGINAL_TENSORS) == len(set(ORIGINAL_TENSORS)) == 219


def test_the_native_model_carries_the_original_names():
    assert sorted(Movq(replace(SMALL_CONFIG, encoder=True)).state_dict()) == sorted(ORIGINAL_TENSORS)


def test_diffusers_names_become_the_original_names(small_folder):
    _, reference = small_folder
    assert sorted(diffusers_to_native(reference.state_dict())) == sorted(ORIGINAL_TENSORS)


def test_the_tests_original_layout_checkpoints_carry_the_original_names(small_folder):
    _, reference = small_folder
    assert sorted(original_state(reference)) == sorted(ORIGINAL_TENSORS)
