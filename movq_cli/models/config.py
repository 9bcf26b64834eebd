"""Every architectural knob of a MoVQ decoder, and the published configurations."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields


class JsonConfig:
    """A config dataclass as JSON: what native files store in their metadata."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> JsonConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> JsonConfig:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class MovqConfig(JsonConfig):
    """A MoVQ decoder. Levels count from 0 (full resolution) to len(ch_mult)-1 (lowest)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2  # the decoder runs num_res_blocks + 1 ResBlocks per level
    attn_levels: tuple[int, ...] = (3,)  # levels whose ResBlocks are followed by attention
    mid_attn: bool = True
    z_channels: int = 4  # decoder input, after post_quant_conv
    embed_dim: int = 4  # e: codebook vector size, channels of zq
    n_embed: int | None = 16384  # codebook rows; None: no codebook (latents only)
    n_used: int | None = None  # length of the `used` remap table, when the quantizer has one
    out_ch: int = 3
    add_conv: bool = False  # SpatialNorm's optional 3x3 conv on the upsampled zq
    norm_groups: int = 32  # GroupNorm groups of the decoder's SpatialNorms (32 in every implementation)
    encoder: bool = False  # whether the model carries its encoder (plain GroupNorm, N ResBlocks a level)
    encoder_norm_groups: int = 32  # GroupNorm groups of the encoder (diffusers' norm_num_groups)
    in_ch: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_levels", tuple(sorted(self.attn_levels)))
        problems = []
        if self.ch < 1 or not self.ch_mult or min(self.ch_mult) < 1:
            problems.append("ch and ch_mult must be positive")
        if self.num_res_blocks < 0:
            problems.append("num_res_blocks must be >= 0")
        if any(not 0 <= level < len(self.ch_mult) for level in self.attn_levels):
            problems.append(f"attn_levels {self.attn_levels} outside 0..{len(self.ch_mult) - 1}")
        groups = {"the decoder's": self.norm_groups}
        if self.encoder:
            groups["the encoder's"] = self.encoder_norm_groups
        for whose, count in groups.items():
            if count < 1:
                problems.append(f"{whose} norm groups must be positive, not {count}")
            elif any(width % count for width in self.widths):
                problems.append(f"widths {self.widths} must be multiples of {whose} {count} norm groups")
        if self.n_embed is not None and self.n_embed < 1:
            problems.append("n_embed must be positive")
        if problems:
            raise ValueError("invalid MoVQ config: " + "; ".join(problems))

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels at each level, level 0 (full resolution) first."""
        return tuple(self.ch * m for m in self.ch_mult)

    @property
    def factor(self) -> int:
        """How many pixels one code spans along each axis."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def n_codes(self) -> int | None:
        """How many distinct integer codes are valid: [0, n_codes)."""
        return self.n_used if self.n_used is not None else self.n_embed


_KANDINSKY_2 = dict(ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=2, attn_levels=(3,))
_KANDINSKY_3 = dict(ch=256, ch_mult=(1, 2, 2, 4), num_res_blocks=2, attn_levels=(3,))

PRESETS: dict[str, dict] = {
    "kandinsky-2.1": _KANDINSKY_2,
    "kandinsky-2.2": _KANDINSKY_2,
    "kandinsky-3": {**_KANDINSKY_3, "n_embed": None},
    "movqgan-67m": _KANDINSKY_2,
    "movqgan-102m": {**_KANDINSKY_2, "num_res_blocks": 4},
    "movqgan-270m": _KANDINSKY_3,
}


def preset(name: str) -> MovqConfig:
    """The published configuration called `name` (see PRESETS)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return MovqConfig(**PRESETS[name])
