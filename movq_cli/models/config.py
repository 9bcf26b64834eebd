"""Every architectural knob of a MoVQ decoder, 2D and CogVideoX 3D, and the published configurations."""

from __future__ import annotations

import json
import math
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


# Far beyond any published model, and small enough that sizes made from them cannot overflow
LIMITS = {"channels": 1 << 16, "levels": 16, "blocks": 1 << 10}


def _too_large(**counts: int) -> list[str]:
    """A problem for each count over its limit: channels, levels or blocks."""
    kinds = {"levels": "levels", "num_res_blocks": "blocks", "layers_per_block": "blocks"}
    problems = []
    for name, count in counts.items():
        limit = LIMITS[kinds.get(name, "channels")]
        if count > limit:
            problems.append(f"{name} {count} is over {limit}")
    return problems


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
        problems += _too_large(
            widths=self.ch * max(self.ch_mult, default=1), z_channels=self.z_channels, embed_dim=self.embed_dim,
            out_ch=self.out_ch, in_ch=self.in_ch, levels=len(self.ch_mult), num_res_blocks=self.num_res_blocks,
        )  # fmt: skip
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


@dataclass(frozen=True)
class CogVideoXConfig(JsonConfig):
    """A CogVideoX decoder. `block_out_channels` lists widths full resolution first, as diffusers does."""

    block_out_channels: tuple[int, ...] = (128, 256, 256, 512)
    layers_per_block: int = 3  # each up block runs layers_per_block + 1 resnets
    latent_channels: int = 16
    out_channels: int = 3
    norm_num_groups: int = 32
    temporal_compression_ratio: int = 4  # 2 ** (up blocks that also double time)
    # Latents from the pipeline are divided by it before decoding. None: unknown (weights found
    # without their config): only latents already divided by it can be decoded.
    scaling_factor: float | None = 1.15258426
    # The 1.5 models' image-to-video pipeline divides encoded image latents by scaling_factor
    # instead of multiplying; decoding divides by it either way.
    invert_scale_latents: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        problems = []
        if not self.block_out_channels or min(self.block_out_channels) < 1:
            problems.append("block_out_channels must be positive")
        if self.layers_per_block < 0:
            problems.append("layers_per_block must be >= 0")
        if any(width % self.norm_num_groups for width in self.block_out_channels):
            problems.append(f"widths {self.block_out_channels} must be multiples of {self.norm_num_groups} groups")
        ratio = self.temporal_compression_ratio
        if ratio < 1 or ratio & (ratio - 1):
            problems.append(f"temporal_compression_ratio {ratio} must be a power of 2")
        if self.scaling_factor is not None and self.scaling_factor <= 0:
            problems.append("scaling_factor must be positive")
        problems += _too_large(
            block_out_channels=max(self.block_out_channels, default=1),
            levels=len(self.block_out_channels),
            layers_per_block=self.layers_per_block,
        )
        if problems:
            raise ValueError("invalid CogVideoX config: " + "; ".join(problems))

    @property
    def factor(self) -> int:
        """How many pixels one latent spans along each spatial axis."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def time_doublings(self) -> int:
        """How many up blocks double time as well as space: the first ones, never the last."""
        return min(int(math.log2(self.temporal_compression_ratio)), len(self.block_out_channels) - 1)


# The vae/config.json of each released model; they differ only in how latents are scaled.
COGVIDEOX_PRESETS: dict[str, dict] = {
    "cogvideox-2b": dict(scaling_factor=1.15258426),
    "cogvideox-5b": dict(scaling_factor=0.7),
    "cogvideox1.5-5b": dict(scaling_factor=0.7, invert_scale_latents=True),
}


def cogvideox_preset(name: str) -> CogVideoXConfig:
    """The published CogVideoX VAE configuration called `name` (see COGVIDEOX_PRESETS)."""
    if name not in COGVIDEOX_PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(COGVIDEOX_PRESETS)}")
    return CogVideoXConfig(**COGVIDEOX_PRESETS[name])


@dataclass(frozen=True)
class Emu3Config(JsonConfig):
    """The Emu3 vision tokenizer's decoder: a causal temporal front end on the latent grid, then
    the MoVQ 2D decoder per output frame (`decoder_2d`). Names are BAAI's (Emu3VisionVQConfig)."""

    codebook_size: int = 32768
    embed_dim: int = 4  # e: codebook vector size, channels of zq
    # decoder input after post_quant_conv; z and zq run through the same temporal layers, so
    # it equals embed_dim
    z_channels: int = 4
    ch: int = 256
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    # blocks of the temporal stack; the 2D decoder runs num_res_blocks + 1 ResBlocks per level
    num_res_blocks: int = 2
    attn_levels: tuple[int, ...] = (3,)  # levels whose ResBlocks are followed by attention (BAAI's attn_resolutions)
    temporal_downsample_factor: int = 4  # 2 ** (temporal upsampling blocks): T latent frames decode to 4T
    out_ch: int = 3
    norm_groups: int = 32  # GroupNorm groups of the 2D decoder's SpatialNorms

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_levels", tuple(sorted(self.attn_levels)))
        problems = []
        try:
            _ = self.decoder_2d  # the 2D decoder's own checks
        except ValueError as error:
            problems.append(str(error).removeprefix("invalid MoVQ config: "))
        if self.codebook_size < 1:
            problems.append("codebook_size must be positive")
        if self.z_channels != self.embed_dim:
            problems.append(f"z_channels {self.z_channels} must equal embed_dim {self.embed_dim}")
        factor = self.temporal_downsample_factor
        if factor < 1 or factor & (factor - 1):
            problems.append(f"temporal_downsample_factor {factor} must be a power of 2")
        elif factor.bit_length() - 1 > LIMITS["levels"]:
            problems.append(f"temporal_downsample_factor {factor} is over {1 << LIMITS['levels']}")
        if problems:
            raise ValueError("invalid Emu3 config: " + "; ".join(problems))

    @property
    def decoder_2d(self) -> MovqConfig:
        """The 2D MoVQ decoder that runs on every output frame (attention in the middle, no add_conv)."""
        return MovqConfig(
            ch=self.ch, ch_mult=self.ch_mult, num_res_blocks=self.num_res_blocks, attn_levels=self.attn_levels,
            mid_attn=True, z_channels=self.z_channels, embed_dim=self.embed_dim, n_embed=self.codebook_size,
            out_ch=self.out_ch, norm_groups=self.norm_groups,
        )  # fmt: skip

    @property
    def factor(self) -> int:
        """How many pixels one code spans along each spatial axis."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def time_doublings(self) -> int:
        """Temporal upsampling blocks, each doubling the frames: log2(temporal_downsample_factor)."""
        return self.temporal_downsample_factor.bit_length() - 1

    @property
    def n_codes(self) -> int:
        """How many distinct integer codes are valid: [0, n_codes)."""
        return self.codebook_size


# BAAI/Emu3-VisionTokenizer's config.json (the tokenizer of Emu3-Gen, -Chat and -Stage1).
EMU3_PRESETS: dict[str, dict] = {
    "emu3": dict(codebook_size=32768, ch=256, ch_mult=(1, 2, 2, 4), num_res_blocks=2, temporal_downsample_factor=4),
}


def emu3_preset(name: str) -> Emu3Config:
    """The published Emu3 vision tokenizer configuration called `name` (see EMU3_PRESETS)."""
    if name not in EMU3_PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(EMU3_PRESETS)}")
    return Emu3Config(**EMU3_PRESETS[name])
