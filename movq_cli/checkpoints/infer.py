"""A MovqConfig read off native tensor names and shapes, for checkpoints that come without one.

Every knob but the group counts (`norm_groups`, `encoder_norm_groups`) shows in the weights; those
keep their default (32), which every published MoVQ uses.
"""

from __future__ import annotations

import math
import re

from movq_cli.checkpoints.shapes import Shapes, count, shape
from movq_cli.models.config import MovqConfig


def infer_config(shapes: Shapes) -> MovqConfig:
    """Native tensor name -> shape, to the config that has exactly these tensors.

    Raises ValueError naming the tensor that is missing or breaks the pattern.
    """
    levels = _levels(shapes)
    blocks = _blocks_per_level(shapes, levels)
    widths = [shape(shapes, f"decoder.up.{level}.block.0.conv2.weight")[0] for level in range(levels)]
    _check_widths(shapes, widths, blocks)
    attn_levels = tuple(level for level in range(levels) if _attention_count(shapes, level))
    for level in attn_levels:
        if _attention_count(shapes, level) != blocks:
            raise ValueError(f"decoder.up.{level}.attn has {_attention_count(shapes, level)} layers, not {blocks}")
    ch = math.gcd(*widths)
    embedding = shapes.get("quantize.embedding.weight")
    used = shapes.get("quantize.used")
    values = dict(
        ch=ch,
        ch_mult=tuple(width // ch for width in widths),
        num_res_blocks=blocks - 1,
        attn_levels=attn_levels,
        mid_attn=any(name.startswith("decoder.mid.attn_1.") for name in shapes),
        z_channels=shape(shapes, "decoder.conv_in.weight")[1],
        embed_dim=shape(shapes, "post_quant_conv.weight")[1],
        n_embed=embedding[0] if embedding is not None else None,
        n_used=used[0] if used is not None else None,
        out_ch=shape(shapes, "decoder.conv_out.weight")[0],
        add_conv=any(re.search(r"\.norm(1|2|_out)?\.conv\.weight$", name) for name in shapes),
    )
    try:
        return MovqConfig(**values)
    except ValueError as error:
        raise ValueError(f"the tensors describe no valid decoder: {error}") from None


def _levels(shapes: Shapes) -> int:
    found = {int(m.group(1)) for name in shapes if (m := re.match(r"decoder\.up\.(\d+)\.", name))}
    if not found:
        raise ValueError("missing tensors decoder.up.*: no decoder levels found")
    for level in range(max(found) + 1):
        if level not in found:
            raise ValueError(f"missing tensors decoder.up.{level}.* (levels found: {sorted(found)})")
    return max(found) + 1


def _blocks_per_level(shapes: Shapes, levels: int) -> int:
    """ResBlocks per level, the same at every level (ValueError naming the odd one out)."""
    counts = [count(shapes, rf"decoder\.up\.{level}\.block\.(\d+)\.") for level in range(levels)]
    for level, found in enumerate(counts):
        if found != counts[0]:
            what = "unexpected" if found > counts[0] else "missing"
            raise ValueError(
                f"{what} tensors decoder.up.{level}.block.{min(found, counts[0])}.*: "
                f"level {level} has {found} ResBlocks, level 0 has {counts[0]}"
            )
    return counts[0]


def _attention_count(shapes: Shapes, level: int) -> int:
    return count(shapes, rf"decoder\.up\.{level}\.attn\.(\d+)\.")


def _check_widths(shapes: Shapes, widths: list[int], blocks: int) -> None:
    """Each ResBlock turns the width handed up from the level below into its level's width."""
    for level, width in enumerate(widths):
        handed_up = widths[min(level + 1, len(widths) - 1)]
        for j in range(blocks):
            conv1 = f"decoder.up.{level}.block.{j}.conv1.weight"
            expected = (width, handed_up if j == 0 else width)
            if tuple(shape(shapes, conv1)[:2]) != expected:
                raise ValueError(
                    f"{conv1} has shape {tuple(shape(shapes, conv1))}, expected (out, in) = {expected} "
                    f"for level widths {tuple(widths)}"
                )
