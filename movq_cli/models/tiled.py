"""Exact spatial tiling of a decode, for frames (2D) or chunks (CogVideoX) that do not fit on the device.

The decoder runs layer by layer. Each layer's whole activation stays in `store` (host memory
when decoding on a GPU); only one tile of it at a time, with the border its 3x3 kernels need,
goes to the device. Every GroupNorm gathers its statistics from all the tiles first (one pass
of per-tile means and variances, combined exactly) and becomes the affine map per channel,
x * a + b (norms.group_affine, as for a whole activation); each tile is then normalized with it,
a CogVideoX tile by its norm's own scale_shift and modulate. The convolutions see the
same neighbours as untiled ones, so tiled frames equal untiled frames to float rounding: no
seams, no blending, and no change of the output with the tile size. An attention (2D) takes
the whole activation at once: in every published MoVQ it runs at latent resolution only.

What it costs: every activation crosses to the device twice per norm (statistics, then the
convolution). A 2D frame's store holds a layer's input and output, and a ResBlock's input
besides. A CogVideoX chunk's store holds less: its activations are Bands of latent rows, and a
convolution frees each band of its input once the last tile that reads it is done, so a layer
holds its input and its output at most; a ResBlock's 1x1x1 shortcut is taken in its first
convolution's pass, into the bands that its second convolution then adds to, so that its input
is freed as early, and a ResBlock without one adds its second convolution to its input in place.
A tile is copied into a buffer with room for its causal past (CausalConv3d.past fills it) and
normalized there in place, so that it holds its padded input and its convolutions' outputs only.
The stream's last chunk keeps no causal past (cogvideox.FinalCache).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from movq_cli.models import norms
from movq_cli.models.cogvideox import (
    Cache,
    CausalConv3d,
    Decoder3D,
    ResnetBlock3D,
    SpatialNorm3D,
    keeps,
    modulate,
)
from movq_cli.models.movq import Attention, Decoder, ResBlock, SpatialNorm

HALO = 1  # pixels each side that a 3x3 kernel reads beyond its output


class Region(tuple):
    """A tile of an activation's rows and columns, and the same tile grown by HALO within the frame."""

    def __new__(cls, rows: slice, cols: slice, height: int, width: int):
        grown = (
            slice(max(rows.start - HALO, 0), min(rows.stop + HALO, height)),
            slice(max(cols.start - HALO, 0), min(cols.stop + HALO, width)),
        )
        return super().__new__(cls, (rows, cols, *grown))

    @property
    def inner(self) -> tuple[slice, slice]:
        """The tile itself, as indices into the grown tile."""
        rows, cols, grown_rows, grown_cols = self
        return (
            slice(rows.start - grown_rows.start, rows.stop - grown_rows.start),
            slice(cols.start - grown_cols.start, cols.stop - grown_cols.start),
        )


def runs(tile: slice, grown: slice, scale: int, first: int) -> Iterator[tuple[slice, slice]]:
    """A grown tile's rows (or columns) in runs of whole latents, for an activation `scale` times
    the latents' size: (pixels in the grown tile, latents counted from latent `first`) for the
    border before the tile, the tile and the border after it."""
    offset = tile.start - grown.start
    if offset:
        yield slice(0, offset), slice(grown.start // scale - first, grown.start // scale - first + 1)
    yield slice(offset, offset + tile.stop - tile.start), slice(tile.start // scale - first, tile.stop // scale - first)
    if grown.stop > tile.stop:
        yield (
            slice(offset + tile.stop - tile.start, grown.stop - grown.start),
            slice(tile.stop // scale - first, tile.stop // scale - first + 1),
        )


def group_affine(norm: nn.GroupNorm, parts: Iterator[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b), each (B, C) float32, with norm(x) == x * a + b channel by channel, for the x whose
    tiles are `parts`: as norms.affine gives it, from each tile's per-group mean and variance
    (Chan's pairwise combination, in float64, weighted by pixel counts)."""
    groups = norm.num_groups
    count, mean, m2 = 0, 0.0, 0.0
    for part in parts:
        variance, part_mean = torch.var_mean(part.reshape(part.shape[0], groups, -1).float(), dim=-1, correction=0)
        part_count = part[0].numel() // groups
        part_mean, variance = part_mean.double(), variance.double()
        delta = part_mean - mean
        total = count + part_count
        m2 = m2 + variance * part_count + delta**2 * (count * part_count / total)
        mean = mean + delta * (part_count / total)
        count = total
    return norms.group_affine(norm, mean, m2 / count)


def apply_affine(x: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x (B, C, ...) * a + b, channel by channel, in float32."""
    a, b = (t.view(*t.shape, *[1] * (x.dim() - 2)) for t in affine)
    return torch.addcmul(b, x.float(), a)


class Bands:
    """An activation (..., H, W) kept as bands of `step` rows, each its own tensor, allocated as it
    is first written; `release` frees the bands above a row, while the rest are still read."""

    def __init__(self, shape: tuple[int, ...], step: int, dtype: torch.dtype, device: torch.device) -> None:
        self.shape, self.step, self.dtype, self.device = torch.Size(shape), step, dtype, device
        self.bands: list[torch.Tensor | None] = [None] * -(-shape[-2] // step)
        self.released = 0  # bands freed, from the top

    def _pieces(self, rows: slice) -> Iterator[tuple[int, slice, slice]]:
        """(band, rows in the band, rows in `rows`) for each band that `rows` overlaps."""
        for index in range(rows.start // self.step, -(-rows.stop // self.step)):
            top = index * self.step
            start, stop = max(rows.start, top), min(rows.stop, top + self.step)
            yield index, slice(start - top, stop - top), slice(start - rows.start, stop - rows.start)

    def _band(self, index: int) -> torch.Tensor:
        if index < self.released:
            raise RuntimeError(f"rows {index * self.step}.. of a tiled activation were read after they were freed")
        if self.bands[index] is None:
            shape = (*self.shape[:-2], min(self.step, self.shape[-2] - index * self.step), self.shape[-1])
            self.bands[index] = torch.empty(shape, dtype=self.dtype, device=self.device)
        return self.bands[index]

    def __getitem__(self, key: tuple) -> torch.Tensor:
        _, rows, cols = key  # (..., rows, cols)
        pieces = [self._band(index)[..., inside, cols] for index, inside, _ in self._pieces(rows)]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-2)

    def __setitem__(self, key: tuple, value: torch.Tensor) -> None:
        _, rows, cols = key
        for index, inside, within in self._pieces(rows):
            self._band(index)[..., inside, cols] = value[..., within, :]

    def read(self, rows: slice, cols: slice, into: torch.Tensor) -> None:
        """into = self[..., rows, cols], without a copy of the bands joined."""
        for index, inside, within in self._pieces(rows):
            into[..., within, :].copy_(self._band(index)[..., inside, cols])

    def add(self, key: tuple, value: torch.Tensor) -> None:
        """self[key] += value, in the bands themselves."""
        _, rows, cols = key
        for index, inside, within in self._pieces(rows):
            self._band(index)[..., inside, cols] += value[..., within, :]

    def release(self, row: int) -> None:
        """Free every band that ends at or above `row`."""
        while self.released < min(row // self.step, len(self.bands)):
            self.bands[self.released] = None
            self.released += 1

    def whole(self) -> torch.Tensor:
        """The activation as one tensor; the bands are freed."""
        whole = torch.cat([self._band(index) for index in range(len(self.bands))], dim=-2)
        self.release(self.shape[-2])
        return whole


class Tiles:
    """What tiling a 2D frame and a CogVideoX chunk share; `tile` is (rows, columns) of latents per tile."""

    def __init__(self, zq: torch.Tensor, tile: tuple[int, int], store: torch.device) -> None:
        self.zq, self.tile, self.store = zq, tile, store
        self.device = zq.device

    def regions(self, x: torch.Tensor) -> Iterator[Region]:
        """The tiles of activation x (..., H, W): latent tiles scaled to x's resolution."""
        height, width = x.shape[-2:]
        scale = height // self.zq.shape[-2]
        step_rows, step_cols = self.tile[0] * scale, self.tile[1] * scale
        for top in range(0, height, step_rows):
            for left in range(0, width, step_cols):
                rows, cols = slice(top, min(top + step_rows, height)), slice(left, min(left + step_cols, width))
                yield Region(rows, cols, height, width)

    def part(self, x: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
        return x[..., rows, cols].to(self.device)

    def read(self, x, rows: slice, cols: slice, into: torch.Tensor) -> None:
        """Copy x[..., rows, cols] into the device tensor `into`, band by band."""
        if isinstance(x, Bands):
            x.read(rows, cols, into)
        else:
            into.copy_(x[..., rows, cols])

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype):
        """A new activation of `shape` in the store."""
        return torch.empty(shape, dtype=dtype, device=self.store)

    def done(self, x, region: Region) -> None:
        """Called after each tile of a pass over x that reads x for the last time (tiles in rows,
        left to right): Bands free what no later tile reads."""
        rows, cols = region[:2]
        if isinstance(x, Bands) and cols.stop == x.shape[-1]:  # a row of tiles is done
            x.release(rows.stop - HALO)

    def affine(self, norm: nn.GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The GroupNorm of the whole activation x as an affine map, gathered tile by tile."""
        return group_affine(norm, (self.part(x, rows, cols) for rows, cols, _, _ in self.regions(x)))

    def upsample(self, up: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """An x2 upsampling and 3x3 convolution tile by tile: each tile's output is twice its size,
        from the tile and its border."""
        height, width = x.shape[-2:]
        out = None
        for region in self.regions(x):
            rows, cols, grown_rows, grown_cols = region
            result = up(self.part(x, grown_rows, grown_cols))
            inner_rows, inner_cols = region.inner
            result = result[..., 2 * inner_rows.start : 2 * inner_rows.stop, 2 * inner_cols.start : 2 * inner_cols.stop]
            if out is None:
                out = self.empty((*result.shape[:-2], 2 * height, 2 * width), x.dtype)
            out[..., 2 * rows.start : 2 * rows.stop, 2 * cols.start : 2 * cols.stop] = result.to(self.store)
            self.done(x, region)
        return out


class TiledFrame(Tiles):
    """Frames of the 2D MoVQ decoded tile by tile, from their zq (B, e, h, w)."""

    def decode(self, post_quant_conv: nn.Module, decoder: Decoder) -> torch.Tensor:
        h = self.conv(decoder.conv_in, post_quant_conv(self.zq).to(self.store))
        h = self.resnet(decoder.mid.block_1, h)
        if decoder.mid.attn_1 is not None:
            h = self.attention(decoder.mid.attn_1, h)
        h = self.resnet(decoder.mid.block_2, h)
        for level in reversed(range(len(decoder.up))):
            stage = decoder.up[level]
            for j, block in enumerate(stage.block):
                h = self.resnet(block, h)
                if stage.attn:
                    h = self.attention(stage.attn[j], h)
            if stage.upsample is not None:
                h = self.upsample(stage.upsample.conv, h)
        return self.conv(decoder.conv_out, h, norm=decoder.norm_out)

    def resnet(self, block: ResBlock, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(block.conv1, x, norm=block.norm1)
        return self.conv(block.conv2, h, norm=block.norm2, residual=(x, block.nin_shortcut))

    def attention(self, attention: Attention, x: torch.Tensor) -> torch.Tensor:
        return attention(x.to(self.device), self.zq).to(self.store)

    def conditioning(self, norm: SpatialNorm, height: int, width: int) -> torch.Tensor | None:
        """The norm's 3x3 convolution of zq upsampled to (height, width), made whole (e channels),
        or None for a norm without one."""
        if norm.conv is None:
            return None
        return norm.conv(F.interpolate(self.zq, size=(height, width), mode="nearest"))

    def normalize(
        self, norm: SpatialNorm, x: torch.Tensor, affine, conditioning, rows: slice, cols: slice, size: tuple[int, int]
    ) -> torch.Tensor:
        """silu(norm(x)) of the part x at (rows, cols) of an activation of `size`, with the whole
        activation's statistics."""
        if conditioning is not None:
            zq = conditioning[..., rows, cols]
        else:  # the latents at each pixel of the part, as nearest interpolation gives them
            row_index = torch.arange(rows.start, rows.stop, device=self.device) * self.zq.shape[-2] // size[0]
            col_index = torch.arange(cols.start, cols.stop, device=self.device) * self.zq.shape[-1] // size[1]
            zq = self.zq.index_select(2, row_index).index_select(3, col_index)
        out = norm.modulate(apply_affine(x, affine).to(x.dtype), zq).contiguous()
        return F.silu(out, inplace=True)

    def conv(
        self,
        conv: nn.Conv2d,
        x: torch.Tensor,
        norm: SpatialNorm | None = None,
        residual: tuple[torch.Tensor, nn.Module | None] | None = None,
    ) -> torch.Tensor:
        """conv(silu(norm(x))) (+ shortcut(residual)), tile by tile."""
        batch, _, height, width = x.shape
        if norm is not None:
            affine, conditioning = self.affine(norm.norm_layer, x), self.conditioning(norm, height, width)
        out = torch.empty((batch, conv.out_channels, height, width), dtype=x.dtype, device=self.store)
        for region in self.regions(x):
            rows, cols, grown_rows, grown_cols = region
            part = self.part(x, grown_rows, grown_cols)
            if norm is not None:
                part = self.normalize(norm, part, affine, conditioning, grown_rows, grown_cols, (height, width))
            inner_rows, inner_cols = region.inner
            result = conv(part)[..., inner_rows, inner_cols]
            if residual is not None:
                source, shortcut = residual
                skip = self.part(source, rows, cols)
                result = result + (skip if shortcut is None else shortcut(skip))
            out[..., rows, cols] = result.to(self.store)
        return out


class TiledChunk(Tiles):
    """One chunk of CogVideoX latents decoded tile by tile, carrying the causal cache; its
    activations are Bands, each freed as the next layer is written."""

    def __init__(self, z: torch.Tensor, cache: Cache, tile: tuple[int, int], store: torch.device) -> None:
        super().__init__(z, tile, store)
        self.cache = cache

    def decode(self, decoder: Decoder3D) -> torch.Tensor:
        h = self.conv(decoder.conv_in, self.zq.to(self.store))
        for resnet in decoder.mid_block.resnets:
            h = self.resnet(resnet, h)
        for block in decoder.up_blocks:
            for resnet in block.resnets:
                h = self.resnet(resnet, h)
            if block.upsamplers is not None:
                h = self.upsample(block.upsamplers[0], h)
        return self.conv(decoder.conv_out, h, norm=decoder.norm_out).whole()

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> Bands:
        # a band per latent row: a pass then holds its input's rows from the row of tiles it is at
        return Bands(shape, shape[-2] // self.zq.shape[-2], dtype, self.store)

    def resnet(self, block: ResnetBlock3D, x: Bands) -> Bands:
        if block.conv_shortcut is None:  # conv2 adds to x itself, in place
            h = self.conv(block.conv1, x, norm=block.norm1, consume=False)
            return self.conv(block.conv2, h, norm=block.norm2, out=x)
        # the shortcut of x is written in conv1's pass, the last that reads x; conv2 adds to it
        out = self.empty((x.shape[0], block.conv1.conv.out_channels, *x.shape[2:]), x.dtype)
        h = self.conv(block.conv1, x, norm=block.norm1, shortcut=(block.conv_shortcut, out))
        return self.conv(block.conv2, h, norm=block.norm2, out=out)

    def normalize(self, norm: SpatialNorm3D, part: torch.Tensor, affine, region: Region, scale: int) -> None:
        """part = silu(norm(part)), in place, for the grown tile `part` of `region` in an activation
        `scale` times the latents' size, with the whole activation's statistics `affine`: the
        norm's own scale and shift at latent resolution, applied by its own `modulate` to the
        tile's whole latents and to each one-pixel border, which lies in the latents beside them."""
        _, _, grown_rows, grown_cols = region
        first_row, first_col = grown_rows.start // scale, grown_cols.start // scale
        latents = self.zq[
            ..., first_row : (grown_rows.stop - 1) // scale + 1, first_col : (grown_cols.stop - 1) // scale + 1
        ]
        factors, shifts = norm.scale_shift(latents, part.shape[2], affine)
        for pixel_rows, latent_rows in runs(region[0], grown_rows, scale, first_row):
            for pixel_cols, latent_cols in runs(region[1], grown_cols, scale, first_col):
                piece = part[..., pixel_rows, pixel_cols]
                modulate(
                    piece, factors[:, :, latent_rows, latent_cols], shifts[:, :, latent_rows, latent_cols], out=piece
                )
        F.silu(part, inplace=True)

    def conv(
        self,
        conv: CausalConv3d,
        x,
        norm: SpatialNorm3D | None = None,
        shortcut: tuple[torch.nn.Module, Bands] | None = None,
        out: Bands | None = None,
        consume: bool = True,
    ) -> Bands:
        """conv(silu(norm(x))), tile by tile, carrying the causal cache; x (Bands) is freed as it
        is read, unless not `consume`. `shortcut` (module, bands): also write module(x) into bands;
        `out`: add the result to what it holds, rather than into new bands."""
        affine = self.affine(norm.norm_layer, x) if norm is not None else None
        batch, channels, frames, height, width = x.shape
        adding = out is not None
        if out is None:
            out = self.empty((batch, conv.conv.out_channels, frames, height, width), x.dtype)
        context = conv.context
        keep = keeps(self.cache)  # a later chunk reads this chunk's last input frames
        if keep:
            new_past = torch.empty((batch, channels, context, height, width), dtype=x.dtype, device=self.store)
        for region in self.regions(x):
            rows, cols, grown_rows, grown_cols = region
            size = (
                batch,
                channels,
                context + frames,
                grown_rows.stop - grown_rows.start,
                grown_cols.stop - grown_cols.start,
            )
            padded = torch.empty(size, dtype=x.dtype, device=self.device, memory_format=torch.channels_last_3d)
            part = padded[:, :, context:]
            self.read(x, grown_rows, grown_cols, into=part)
            if norm is not None:
                self.normalize(norm, part, affine, region, height // self.zq.shape[-2])
            padded[:, :, :context] = conv.past(self.cache, part, grown_rows, grown_cols)
            inner_rows, inner_cols = region.inner
            if keep:
                new_past[..., rows, cols] = padded[:, :, -context:, inner_rows, inner_cols].to(self.store)
            if shortcut is not None:
                module, into = shortcut
                into[..., rows, cols] = module(self.part(x, rows, cols)).to(self.store)
            result = conv.convolve(padded)[..., inner_rows, inner_cols].to(self.store)
            del padded, part
            if adding:
                out.add((..., rows, cols), result)
            else:
                out[..., rows, cols] = result
            del result
            if consume:
                self.done(x, region)
        if keep:
            self.cache[conv] = new_past
        return out
