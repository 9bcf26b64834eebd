"""Exact spatial tiling of a CogVideoX chunk, for frames whose chunk does not fit on the device.

The decoder runs layer by layer. Each layer's whole activation stays in `store` (host memory
when decoding on a GPU); only one tile of it at a time, with the border its 3x3 kernels need,
goes to the device. Every GroupNorm gathers its statistics from all the tiles first (one pass
of per-tile means and variances, combined exactly), then normalizes each tile with them. The
convolutions see the same neighbours as untiled ones, so tiled frames equal untiled frames to
float rounding: no seams, no blending, and no change of the output with the tile size.

What it costs: every activation crosses to the device twice per norm (statistics, then the
convolution), and the store holds two full activations of the chunk.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from movq_cli.models.cogvideox import (
    Cache,
    CausalConv3d,
    Decoder3D,
    ResnetBlock3D,
    SpatialNorm3D,
    Upsample3D,
    latent_frame_of,
)

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


class TiledChunk:
    """One chunk of latents decoded tile by tile; `tile` is (rows, columns) of latents per tile."""

    def __init__(self, z: torch.Tensor, cache: Cache, tile: tuple[int, int], store: torch.device) -> None:
        self.zq, self.cache, self.tile, self.store = z, cache, tile, store
        self.device = z.device

    def regions(self, x: torch.Tensor) -> Iterator[Region]:
        """The tiles of activation x (B, C, T, H, W): latent tiles scaled to x's resolution."""
        height, width = x.shape[-2:]
        scale = height // self.zq.shape[-2]
        step_rows, step_cols = self.tile[0] * scale, self.tile[1] * scale
        for top in range(0, height, step_rows):
            for left in range(0, width, step_cols):
                rows, cols = slice(top, min(top + step_rows, height)), slice(left, min(left + step_cols, width))
                yield Region(rows, cols, height, width)

    def part(self, x: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
        return x[..., rows, cols].to(self.device)

    def decode(self, decoder: Decoder3D) -> torch.Tensor:
        h = self.conv(decoder.conv_in, self.zq.to(self.store))
        for resnet in decoder.mid_block.resnets:
            h = self.resnet(resnet, h)
        for block in decoder.up_blocks:
            for resnet in block.resnets:
                h = self.resnet(resnet, h)
            if block.upsamplers is not None:
                h = self.upsample(block.upsamplers[0], h)
        return self.conv(decoder.conv_out, h, norm=decoder.norm_out)

    def resnet(self, block: ResnetBlock3D, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(block.conv1, x, norm=block.norm1)
        return self.conv(block.conv2, h, norm=block.norm2, residual=(x, block.conv_shortcut))

    def statistics(self, norm: SpatialNorm3D, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and 1/std of each (sample, group) of x over the whole chunk, gathered tile by tile
        (Chan's pairwise combination of per-tile means and variances, in float64)."""
        groups = norm.norm_layer.num_groups
        count, mean, m2 = 0, 0.0, 0.0
        for rows, cols, _, _ in self.regions(x):
            part = self.part(x, rows, cols)
            variance, part_mean = torch.var_mean(part.reshape(part.shape[0], groups, -1).float(), dim=-1, correction=0)
            part_count = part[0].numel() // groups
            part_mean, variance = part_mean.double(), variance.double()
            delta = part_mean - mean
            total = count + part_count
            m2 = m2 + variance * part_count + delta**2 * (count * part_count / total)
            mean = mean + delta * (part_count / total)
            count = total
        return mean.float(), torch.rsqrt(m2 / count + norm.norm_layer.eps).float()

    def normalize(
        self, norm: SpatialNorm3D, x: torch.Tensor, stats, rows: slice, cols: slice, scale: int
    ) -> torch.Tensor:
        """silu(norm(x)) of the part x at (rows, cols) of an activation `scale` times the latents'
        size, with the whole activation's statistics."""
        mean, rstd = stats
        groups = norm.norm_layer.num_groups
        grouped = x.float().reshape(x.shape[0], groups, -1)
        normed = ((grouped - mean[..., None]) * rstd[..., None]).reshape(x.shape)
        layer = norm.norm_layer
        normed = normed * layer.weight.float()[:, None, None, None] + layer.bias.float()[:, None, None, None]
        # the latents at each pixel of the part, as fit_latents gives them to the untiled norm
        frames = torch.tensor(latent_frame_of(x.shape[2], self.zq.shape[2]), device=self.device)
        row_index = torch.arange(rows.start, rows.stop, device=self.device) // scale
        col_index = torch.arange(cols.start, cols.stop, device=self.device) // scale
        zq = self.zq.index_select(2, frames).index_select(3, row_index).index_select(4, col_index)
        out = (normed.to(x.dtype) * norm.conv_y(zq) + norm.conv_b(zq)).contiguous()
        return F.silu(out, inplace=True)

    def conv(
        self,
        conv: CausalConv3d,
        x: torch.Tensor,
        norm: SpatialNorm3D | None = None,
        residual: tuple[torch.Tensor, torch.nn.Module | None] | None = None,
    ) -> torch.Tensor:
        """conv(silu(norm(x))) (+ shortcut(residual)), tile by tile, carrying the causal cache."""
        stats = self.statistics(norm, x) if norm is not None else None
        batch, _, frames, height, width = x.shape
        scale = height // self.zq.shape[-2]
        out = torch.empty((batch, conv.conv.out_channels, frames, height, width), dtype=x.dtype, device=self.store)
        past, context = self.cache.get(conv), conv.context
        new_past = torch.empty((batch, x.shape[1], context, height, width), dtype=x.dtype, device=self.store)
        for region in self.regions(x):
            rows, cols, grown_rows, grown_cols = region
            part = self.part(x, grown_rows, grown_cols)
            if norm is not None:
                part = self.normalize(norm, part, stats, grown_rows, grown_cols, scale)
            if past is None:  # the video's first chunk: its first frame stands for the past
                before = part[:, :, :1].expand(-1, -1, context, -1, -1)
            else:
                before = self.part(past, grown_rows, grown_cols)
            padded = torch.cat([before, part], dim=2)
            inner_rows, inner_cols = region.inner
            new_past[..., rows, cols] = padded[:, :, -context:, inner_rows, inner_cols].to(self.store)
            result = conv.conv(padded)[..., inner_rows, inner_cols]
            if residual is not None:
                source, shortcut = residual
                skip = self.part(source, rows, cols)
                result = result + (skip if shortcut is None else shortcut(skip))
            out[..., rows, cols] = result.to(self.store)
        self.cache[conv] = new_past
        return out

    def upsample(self, up: Upsample3D, x: torch.Tensor) -> torch.Tensor:
        """Upsample3D tile by tile: each tile's output is twice its size, from the tile and its border."""
        batch, channels, frames, height, width = x.shape
        out = None
        for region in self.regions(x):
            rows, cols, grown_rows, grown_cols = region
            result = up(self.part(x, grown_rows, grown_cols))
            inner_rows, inner_cols = region.inner
            doubled = (
                slice(2 * inner_rows.start, 2 * inner_rows.stop),
                slice(2 * inner_cols.start, 2 * inner_cols.stop),
            )
            result = result[..., doubled[0], doubled[1]]
            if out is None:
                size = (batch, channels, result.shape[2], 2 * height, 2 * width)
                out = torch.empty(size, dtype=x.dtype, device=self.store)
            out[..., 2 * rows.start : 2 * rows.stop, 2 * cols.start : 2 * cols.stop] = result.to(self.store)
        return out
