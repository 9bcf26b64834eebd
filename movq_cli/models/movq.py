"""The MoVQ model, read top to bottom like the math in docs/ARCHITECTURE.md.

Every normalization of the decoder is a SpatialNorm conditioned on zq, the quantized latent
*before* post_quant_conv. Parameter names fall out of attribute names and are the native
weight format (the layout of the original MoVQ code); optional parts are None attributes,
which register no parameters, so the names are the same whichever parts a model has.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from movq_cli.models.attention import attention
from movq_cli.models.config import MovqConfig
from movq_cli.models.fastconv import Conv3x3, UpsampleConv3x3


def _inplace() -> bool:
    """In-place activations save memory, but only when no backward pass needs the inputs; under
    torch.compile the functional forms let the compiler fuse them."""
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling()


def silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x, inplace=_inplace())


class SpatialNorm(nn.Module):
    """GroupNorm(f) * conv_y(zq) + conv_b(zq), with zq brought to f's size by nearest.

    Two paths give the same numbers: the plain formula, which documents the math and is what
    the fast path is tested against, and the fast one (the default; `use_fast_paths`
    switches it off).
    """

    fast = True

    def __init__(self, channels: int, zq_channels: int, add_conv: bool, groups: int) -> None:
        super().__init__()
        self.norm_layer = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.conv = nn.Conv2d(zq_channels, zq_channels, 3, padding=1) if add_conv else None
        self.conv_y = nn.Conv2d(zq_channels, channels, 1)
        self.conv_b = nn.Conv2d(zq_channels, channels, 1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return self._fast_forward(f, zq)
        zq = F.interpolate(zq, size=f.shape[-2:], mode="nearest")
        if self.conv is not None:
            zq = self.conv(zq)
        return self.modulate(self.norm_layer(f), zq)

    def modulate(self, normed: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        """normed * conv_y(zq) + conv_b(zq), for a zq at normed's size (through `conv`, if any): the
        formula after the group statistics, which a tile shares (models/tiled.py)."""
        return normed * self.conv_y(zq) + self.conv_b(zq)

    def _fast_forward(self, f: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        """The formula without materialising the upsampled zq or a full-size scale and shift.

        conv_y and conv_b are 1x1, so they commute with nearest upsampling: computed at code
        resolution, they are broadcast over the s x s block of f that each code covers. Only the
        3x3 `conv`, or a size that is not a whole number of blocks, needs zq upsampled first.
        """
        size = f.shape[-2:]
        if self.conv is not None or size[0] % zq.shape[-2] or size[1] % zq.shape[-1]:
            zq = F.interpolate(zq, size=size, mode="nearest")
            if self.conv is not None:
                zq = self.conv(zq)
        return _modulate(self.norm_layer(f), self.conv_y(zq), self.conv_b(zq))


def _modulate(normed: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """normed * scale + shift, with scale and shift repeated over blocks to normed's size."""
    if torch.compiler.is_compiling():  # the compiler fuses the upsampling; 6-d block views confused its strides
        size = normed.shape[-2:]
        up = [F.interpolate(t, size=size, mode="nearest") for t in (scale, shift)]
        return torch.addcmul(up[1], normed, up[0])
    batch, channels, height, width = normed.shape
    rows, cols = scale.shape[-2:]
    blocks = normed.view(batch, channels, rows, height // rows, cols, width // cols)
    scale = scale[:, :, :, None, :, None]
    shift = shift[:, :, :, None, :, None]
    if _inplace():  # one pass over the frame instead of two for mul_ then add_
        return torch.addcmul(shift, blocks, scale, out=blocks).view(normed.shape)
    return torch.addcmul(shift, blocks, scale).view(normed.shape)


class GroupNorm(nn.GroupNorm):
    """The encoder's plain GroupNorm, called like a SpatialNorm so that blocks can share code."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__(groups, channels, eps=1e-6, affine=True)

    def forward(self, f: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(f)


def use_fast_paths(model: nn.Module, enabled: bool) -> None:
    """Switch the fast form of every block of `model` that has one (SpatialNorm, Upsample) on or
    off; off, each computes its plain formula."""
    for module in model.modules():
        if isinstance(module, FAST_BLOCKS):
            module.fast = enabled


def norm_factory(config: MovqConfig, spatial: bool) -> Callable[[int], nn.Module]:
    """channels -> the norm the decoder (spatial) or the encoder (plain) uses."""
    if spatial:
        return lambda channels: SpatialNorm(channels, config.embed_dim, config.add_conv, config.norm_groups)
    return lambda channels: GroupNorm(channels, config.encoder_norm_groups)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.norm1 = norm(c_in)
        self.conv1 = Conv3x3(c_in, c_out)
        self.norm2 = norm(c_out)
        self.conv2 = Conv3x3(c_out, c_out)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(silu(self.norm1(x, zq)))
        h = self.conv2(silu(self.norm2(h, zq)))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return h.add_(shortcut) if _inplace() else h + shortcut


class Attention(nn.Module):
    """Single-head self-attention over all positions of the frame, with 1x1 conv projections."""

    def __init__(self, channels: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.norm = norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        batch, channels, height, width = x.shape
        normed = self.norm(x, zq)

        def tokens(proj: nn.Conv2d) -> torch.Tensor:  # (B, 1 head, h*w, C)
            return proj(normed).flatten(2).transpose(1, 2).unsqueeze(1)

        attended = attention(tokens(self.q), tokens(self.k), tokens(self.v))
        attended = attended.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.proj_out(attended)


class Upsample(nn.Module):
    """conv3x3(nearest_upsample_x2(x)). Fast (the default): the convolution does the upsampling
    itself, as four 2x2 convolutions at x's own size (fastconv.UpsampleConv3x3)."""

    fast = True

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = UpsampleConv3x3(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return self.conv(x)
        upsampled = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.conv2d(upsampled, self.conv.weight, self.conv.bias, padding=1)


FAST_BLOCKS = (SpatialNorm, Upsample)  # the blocks with a fast path beside their plain one


class Middle(nn.Module):
    def __init__(self, channels: int, attention: bool, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.block_1 = ResBlock(channels, channels, norm)
        self.attn_1 = Attention(channels, norm) if attention else None
        self.block_2 = ResBlock(channels, channels, norm)

    def forward(self, h: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        h = self.block_1(h, zq)
        if self.attn_1 is not None:
            h = self.attn_1(h, zq)
        return self.block_2(h, zq)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # the original's asymmetric padding


class Encoder(nn.Module):
    """Images (B, in_ch, H, W) -> z (B, z_channels, H/factor, W/factor), with plain GroupNorms."""

    def __init__(self, config: MovqConfig) -> None:
        super().__init__()
        widths = config.widths
        norm = norm_factory(config, spatial=False)
        self.conv_in = nn.Conv2d(config.in_ch, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        for level, width in enumerate(widths):
            stage = nn.Module()
            c_in = widths[max(level - 1, 0)]
            stage.block = nn.ModuleList(
                ResBlock(c_in if j == 0 else width, width, norm) for j in range(config.num_res_blocks)
            )
            has_attn = level in config.attn_levels
            stage.attn = nn.ModuleList(Attention(width, norm) for _ in range(config.num_res_blocks) if has_attn)
            stage.downsample = Downsample(width) if level != len(widths) - 1 else None
            self.down.append(stage)
        self.mid = Middle(widths[-1], config.mid_attn, norm)
        self.norm_out = norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], config.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for j, block in enumerate(stage.block):
                h = block(h)
                if stage.attn:
                    h = stage.attn[j](h)
            if stage.downsample is not None:
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, config: MovqConfig) -> None:
        super().__init__()
        widths = config.widths
        top = widths[-1]
        norm = norm_factory(config, spatial=True)
        self.conv_in = nn.Conv2d(config.z_channels, top, 3, padding=1)
        self.mid = Middle(top, config.mid_attn, norm)

        self.up = nn.ModuleList()
        for level, width in enumerate(widths):
            stage = nn.Module()
            c_in = widths[min(level + 1, len(widths) - 1)]  # what the level below hands up
            stage.block = nn.ModuleList(
                ResBlock(c_in if j == 0 else width, width, norm) for j in range(config.num_res_blocks + 1)
            )
            has_attn = level in config.attn_levels
            stage.attn = nn.ModuleList(Attention(width, norm) for _ in range(config.num_res_blocks + 1) if has_attn)
            stage.upsample = Upsample(width) if level != 0 else None
            self.up.append(stage)

        self.norm_out = norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], config.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z), zq)

        for level in reversed(range(len(self.up))):  # lowest resolution first
            stage = self.up[level]
            for j, block in enumerate(stage.block):
                h = block(h, zq)
                if stage.attn:
                    h = stage.attn[j](h, zq)
            if stage.upsample is not None:
                h = stage.upsample(h)

        return self.conv_out(silu(self.norm_out(h, zq)))


class Quantizer(nn.Module):
    """The codebook: integer codes (B, h, w) -> zq (B, e, h, w), through `used` when present."""

    def __init__(self, config: MovqConfig) -> None:
        super().__init__()
        assert config.n_embed is not None
        self.embedding = nn.Embedding(config.n_embed, config.embed_dim)
        # remap table: code i selects codebook row used[i]
        used = torch.zeros(config.n_used, dtype=torch.long) if config.n_used is not None else None
        self.register_buffer("used", used)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        rows = codes if self.used is None else self.used[codes]
        return F.embedding(rows, self.embedding.weight).permute(0, 3, 1, 2)

    def nearest(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, e, h, w) -> the codes (B, h, w) whose vectors are nearest in L2."""
        codebook = self.embedding.weight.float()
        if self.used is not None:
            codebook = codebook[self.used]
        flat = latents.float().permute(0, 2, 3, 1)
        distances = codebook.pow(2).sum(-1) - 2 * flat @ codebook.T  # + |flat|^2, the same for every code
        return distances.argmin(-1)

    def snap(self, latents: torch.Tensor) -> torch.Tensor:
        """Each latent vector replaced by its nearest codebook vector."""
        return self.lookup(self.nearest(latents)).to(latents.dtype)


class Movq(nn.Module):
    """A MoVQ model: codebook, post_quant_conv and decoder, and the encoder when it has one."""

    def __init__(self, config: MovqConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config) if config.encoder else None
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1) if config.encoder else None
        self.quantize = Quantizer(config) if config.n_embed is not None else None
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.decoder = Decoder(config)

    @property
    def has_codebook(self) -> bool:
        return self.quantize is not None

    def forward(self, zq: torch.Tensor) -> torch.Tensor:
        """zq (B, e, h, w) -> images (B, out_ch, h*factor, w*factor), about [-1, 1]."""
        # channels_last like the activations: broadcasting SpatialNorm's scale and shift over
        # channels_last frames was 4-5x slower from a contiguous zq
        zq = zq.contiguous(memory_format=torch.channels_last)
        return self.decoder(self.post_quant_conv(zq), zq)

    def decode_tiled(self, zq: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
        """forward(zq), with the device seeing one tile of (rows, columns) latents at a time and
        each layer's activation kept in host memory (models/tiled.py). Equal to forward to float
        rounding."""
        from movq_cli.models.tiled import TiledFrame

        return TiledFrame(zq, tile, torch.device("cpu")).decode(self.post_quant_conv, self.decoder)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Integer codes (B, h, w) -> images."""
        return self(self.quantize.lookup(codes))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, in_ch, H, W) in [-1, 1] -> latents (B, e, H/factor, W/factor), before quantization."""
        return self.quant_conv(self.encoder(images))
