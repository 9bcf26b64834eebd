"""The CogVideoX video-VAE decoder: the MoVQ decoder in 3D, read top to bottom.

Latents (B, 16, t, h, w) -> frames (B, 3, T, 8h, 8w). Every norm is a SpatialNorm3D conditioned on
the latent chunk itself; every 3x3x3 convolution is causal in time (it sees the current frame and
the two before it). A video is decoded in chunks of latent frames (`CogVideoX.schedule`); each
causal convolution carries its last two input frames from one chunk to the next in a cache that
the caller owns, so the chunks decode to exactly what one pass of diffusers'
`AutoencoderKLCogVideoX.decode` gives.

Parameter names are diffusers' decoder names, so a diffusers file loads after dropping its
encoder tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from movq_cli.models import norms
from movq_cli.models.config import CogVideoXConfig
from movq_cli.models.fastconv import UpsampleConv3x3

# Each causal convolution's last input frames, kept from one chunk for the next. Keyed by the
# convolution module; owned by whoever decodes the stream, so one model serves several streams.
Cache = dict[nn.Module, torch.Tensor]


class FinalCache(dict):
    """The cache as a stream's last chunk sees it: the past is read, and the frames that would be
    kept for a next chunk are not."""

    def __setitem__(self, conv: nn.Module, past: torch.Tensor) -> None:
        pass


def _inplace() -> bool:
    """In-place activations save memory, but only when no backward pass needs the inputs."""
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling()


def silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x, inplace=_inplace())


def keeps(cache: Cache) -> bool:
    """Whether a chunk leaves its causal convolutions' last input frames in `cache` for a next one."""
    return not isinstance(cache, FinalCache)


def _onednn(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available()
    )


def empty_channels_last(like: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """A new (B, C, T, H, W) tensor of `like`'s dtype and device, channels innermost (channels_last_3d)."""
    return torch.empty(size, dtype=like.dtype, device=like.device, memory_format=torch.channels_last_3d)


class CausalConv3d(nn.Module):
    """A k x k x k convolution that looks only backwards in time.

    Time is padded on the past side with k-1 frames: the previous chunk's last input frames when
    the cache holds them, else copies of the first frame. Space is padded with zeros.
    """

    fast = True

    def __init__(self, c_in: int, c_out: int, kernel: int = 3) -> None:
        super().__init__()
        self.context = kernel - 1  # past frames each output frame sees
        self.conv = nn.Conv3d(c_in, c_out, kernel, padding=(0, kernel // 2, kernel // 2))

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        if self.context == 0:
            return self.conv(x)
        assert cache is not None, "a causal convolution over time needs the stream's cache"
        if self.fast:
            return self._forward_fast(x, cache)
        padded = torch.cat([self.past(cache, x), x], dim=2)
        self.keep(cache, padded)
        return self.conv(padded)

    def past(self, cache: Cache, x: torch.Tensor, rows: slice = slice(None), cols: slice = slice(None)) -> torch.Tensor:
        """The `context` frames before x, which is the part (`rows`, `cols`) of a whole frame: the
        previous chunk's last input frames there, or, in a video's first chunk, x's first frame repeated."""
        past = cache.get(self)
        if past is None:
            return x[:, :, :1].expand(-1, -1, self.context, -1, -1)
        return past[..., rows, cols]

    def keep(self, cache: Cache, padded: torch.Tensor) -> None:
        """Leave the last `context` frames of this chunk's padded input for the next chunk."""
        if keeps(cache):
            # a copy, not a view: a view would keep the whole padded chunk alive until the next one
            cache[self] = padded[:, :, -self.context :].clone()

    def _forward_fast(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        # cat would lose the channels_last layout: x goes behind free room for its past instead
        batch, channels, frames, height, width = x.shape
        padded = empty_channels_last(x, (batch, channels, self.context + frames, height, width))
        padded[:, :, self.context :] = x
        return self.forward_padded(padded, cache)

    def forward_padded(self, padded: torch.Tensor, cache: Cache) -> torch.Tensor:
        """forward(x) for x = padded[:, :, context:], the front `context` frames of `padded` being
        free: they are filled with the past here, so x is never copied to be padded."""
        padded[:, :, : self.context] = self.past(cache, padded[:, :, self.context :])
        self.keep(cache, padded)
        return self.convolve(padded)

    def convolve(self, padded: torch.Tensor) -> torch.Tensor:
        """The convolution of an input already padded in time."""
        if self.fast and _inplace() and _onednn(padded):
            # PyTorch sends inputs of few rows (all the latent-resolution ones) to an im2col kernel
            # that ignores the layout and is 3x slower than oneDNN on them
            conv = self.conv
            return torch.mkldnn_convolution(
                padded, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups
            )
        return self.conv(padded)


def _first_frame_apart(frames_out: int) -> bool:
    """Whether a chunk of `frames_out` frames treats its first frame on its own.

    CogVideoX upsamples time only after the first frame of an odd-length chunk (the first latent
    frame of a video stands for one picture, each later one for four); the norms follow suit.
    """
    return frames_out > 1 and frames_out % 2 == 1


def fit_latents(zq: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """zq (B, C, t, h, w) brought to (T, H, W) = `size` by nearest interpolation, with the first
    frame of an odd T > 1 taken from zq's first frame alone and the rest from zq's rest."""
    if _first_frame_apart(size[0]):
        first = F.interpolate(zq[:, :, :1], size=(1, *size[1:]), mode="nearest")
        rest = F.interpolate(zq[:, :, 1:], size=(size[0] - 1, *size[1:]), mode="nearest")
        return torch.cat([first, rest], dim=2)
    return F.interpolate(zq, size=tuple(size), mode="nearest")


def latent_frame_of(frames_out: int, frames_in: int) -> list[int]:
    """For each of `frames_out` frames, the latent frame fit_latents takes it from."""
    if _first_frame_apart(frames_out):
        return [0] + [1 + i * (frames_in - 1) // (frames_out - 1) for i in range(frames_out - 1)]
    return [i * frames_in // frames_out for i in range(frames_out)]


class SpatialNorm3D(nn.Module):
    """GroupNorm(f) * conv_y(zq) + conv_b(zq), with zq brought to f's size (see fit_latents).

    GroupNorm statistics span every frame of the chunk: the chunk schedule therefore defines
    the output, and decoding a video in one piece would give different pixels.
    """

    fast = True

    def __init__(self, channels: int, zq_channels: int, groups: int) -> None:
        super().__init__()
        self.norm_layer = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.conv_y = CausalConv3d(zq_channels, channels, kernel=1)
        self.conv_b = CausalConv3d(zq_channels, channels, kernel=1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return self._forward_fast(f, zq, out=None)
        zq = fit_latents(zq, f.shape[-3:])
        return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)

    def activate_padded(self, f: torch.Tensor, zq: torch.Tensor, room: int) -> torch.Tensor:
        """silu(self(f, zq)) written after `room` free frames at the front, for a causal conv's
        forward_padded: (B, C, room + T, H, W), channels_last_3d. Inference only."""
        batch, channels, frames, height, width = f.shape
        padded = empty_channels_last(f, (batch, channels, room + frames, height, width))
        out = self._forward_fast(f, zq, out=padded[:, :, room:])
        F.silu(out, inplace=True)
        return padded

    def _forward_fast(self, f: torch.Tensor, zq: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        """self(f, zq) into `out` (None: a new tensor, or GroupNorm's own output).

        conv_y and conv_b are 1x1x1, so they commute with nearest upsampling: computed at latent
        resolution and broadcast over each block of pixels (`modulate`), they give the same
        numbers without the full-size upsampled zq, scale and shift.
        """
        if norms.folds(f):  # GroupNorm as a per-channel affine map, folded into the scale and shift
            normed, affine = f, norms.affine(self.norm_layer, f)
            out = torch.empty_like(f) if out is None else out
        else:
            normed, affine = self.norm_layer(f), None
            if out is None:
                out = normed if _inplace() else torch.empty_like(normed)
        scale, shift = (t.to(f.dtype) for t in self.scale_shift(zq, f.shape[2], affine))
        return modulate(normed, scale, shift, out)

    def scale_shift(
        self, zq: torch.Tensor, frames: int, affine: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """conv_y(zq) and conv_b(zq) for an activation of `frames` frames, at zq's resolution: each
        (B, frames, h, w, C), float32. With the GroupNorm as an affine map (a, b) of its input
        (norms.affine, or statistics gathered tile by tile), the norm is folded in:
        (x * a + b) * scale + shift = x * (a * scale) + (b * scale + shift)."""
        # A 1x1x1 conv is a linear map of the channels: both in one product over (B, t, h, w, C) latents.
        # In float32, because CPU matmuls this thin are 10x slower in bfloat16.
        weight = torch.cat([self.conv_y.conv.weight, self.conv_b.conv.weight]).flatten(1).float()
        bias = torch.cat([self.conv_y.conv.bias, self.conv_b.conv.bias]).float()
        index = torch.tensor(latent_frame_of(frames, zq.shape[2]), device=zq.device)
        both = F.linear(zq.permute(0, 2, 3, 4, 1).float(), weight, bias).index_select(1, index)
        scale, shift = both.chunk(2, dim=-1)
        if affine is not None:
            a, b = (t[:, None, None, None, :] for t in affine)
            scale, shift = scale * a, torch.addcmul(shift, scale, b)
        return scale, shift


def modulate(f: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = f * scale + shift for f (B, C, T, H, W) and scale, shift (B, T, h, w, C), each of
    their values broadcast over a block of (H / h, W / w) pixels; out may be f itself.

    Channels are innermost in scale and shift, and in f and out when they are channels_last_3d,
    so the one fused pass runs over contiguous channels.
    """
    batch, channels, frames, height, width = f.shape
    rows, cols = scale.shape[2:4]
    shape = (batch, frames, rows, height // rows, cols, width // cols, channels)
    scale, shift = (t[:, :, :, None, :, None] for t in (scale, shift))
    blocks = f.permute(0, 2, 3, 4, 1).view(shape)
    torch.addcmul(shift, blocks, scale, out=out.permute(0, 2, 3, 4, 1).view(shape))
    return out


class ResnetBlock3D(nn.Module):
    fast = True

    def __init__(self, c_in: int, c_out: int, zq_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = SpatialNorm3D(c_in, zq_channels, groups)
        self.conv1 = CausalConv3d(c_in, c_out)
        self.norm2 = SpatialNorm3D(c_out, zq_channels, groups)
        self.conv2 = CausalConv3d(c_out, c_out)
        self.conv_shortcut = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor, zq: torch.Tensor, cache: Cache) -> torch.Tensor:
        if self.fast and _inplace():
            h = self._convolutions_fast(x, zq, cache)
        else:
            h = self.conv1(silu(self.norm1(x, zq)), cache)
            h = self.conv2(silu(self.norm2(h, zq)), cache)
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return h.add_(shortcut) if _inplace() else h + shortcut

    def _convolutions_fast(self, x: torch.Tensor, zq: torch.Tensor, cache: Cache) -> torch.Tensor:
        # each norm writes its activation straight into the next conv's time-padded input
        h = self.conv1.forward_padded(self.norm1.activate_padded(x, zq, self.conv1.context), cache)
        return self.conv2.forward_padded(self.norm2.activate_padded(h, zq, self.conv2.context), cache)


class Upsample3D(nn.Module):
    """Nearest x2 in space (and, with `compress_time`, in time), then a per-frame 3x3 conv.

    Doubling time repeats each frame twice, except the first frame of an odd-length chunk.
    """

    fast = True

    def __init__(self, channels: int, compress_time: bool) -> None:
        super().__init__()
        self.compress_time = compress_time
        self.conv = UpsampleConv3x3(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return self._forward_fast(x)
        frames = x.shape[2]
        if self.compress_time and _first_frame_apart(frames):
            x = torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(2, dim=2)], dim=2)
        elif self.compress_time and frames > 1:
            x = x.repeat_interleave(2, dim=2)
        batch, channels, frames, height, width = x.shape
        per_frame = x.transpose(1, 2).reshape(batch * frames, channels, height, width)
        upsampled = F.interpolate(per_frame, scale_factor=2.0, mode="nearest")
        up = F.conv2d(upsampled, self.conv.weight, self.conv.bias, padding=1)
        return up.reshape(batch, frames, channels, 2 * height, 2 * width).transpose(1, 2)

    def _forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        # The conv is per frame and repeating a frame repeats its output: convolve each frame once,
        # with the x2 upsampling folded into the kernel (fastconv.UpsampleConv3x3), then repeat.
        batch, channels, frames, height, width = x.shape
        up = self.conv(x.transpose(1, 2).reshape(batch * frames, channels, height, width))
        up = up.reshape(batch, frames, channels, 2 * height, 2 * width).transpose(1, 2)
        if not self.compress_time or frames == 1:
            return up
        single = 1 if _first_frame_apart(frames) else 0  # leading frames that are not doubled
        size = (batch, channels, 2 * frames - single, 2 * height, 2 * width)
        out = torch.empty(size, dtype=up.dtype, device=up.device, memory_format=torch.channels_last_3d)
        out[:, :, :single] = up[:, :, :single]
        pairs = out[:, :, single:].unflatten(2, (frames - single, 2))
        pairs.copy_(up[:, :, single:, None].expand_as(pairs))
        return out


class MidBlock3D(nn.Module):
    def __init__(self, channels: int, zq_channels: int, groups: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock3D(channels, channels, zq_channels, groups) for _ in range(2))

    def forward(self, h: torch.Tensor, zq: torch.Tensor, cache: Cache) -> torch.Tensor:
        for resnet in self.resnets:
            h = resnet(h, zq, cache)
        return h


class UpBlock3D(nn.Module):
    def __init__(
        self, c_in: int, c_out: int, layers: int, zq_channels: int, groups: int, upsample: bool, compress_time: bool
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3D(c_in if j == 0 else c_out, c_out, zq_channels, groups) for j in range(layers)
        )
        self.upsamplers = nn.ModuleList([Upsample3D(c_out, compress_time)]) if upsample else None

    def forward(self, h: torch.Tensor, zq: torch.Tensor, cache: Cache) -> torch.Tensor:
        for resnet in self.resnets:
            h = resnet(h, zq, cache)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h)
        return h


class Decoder3D(nn.Module):
    fast = True

    def __init__(self, config: CogVideoXConfig) -> None:
        super().__init__()
        widths = tuple(reversed(config.block_out_channels))  # decode order: lowest resolution first
        zq_channels, groups = config.latent_channels, config.norm_num_groups
        self.conv_in = CausalConv3d(zq_channels, widths[0])
        self.mid_block = MidBlock3D(widths[0], zq_channels, groups)
        self.up_blocks = nn.ModuleList(
            UpBlock3D(
                widths[max(i - 1, 0)],
                width,
                config.layers_per_block + 1,
                zq_channels,
                groups,
                upsample=i < len(widths) - 1,
                compress_time=i < config.time_doublings,
            )
            for i, width in enumerate(widths)
        )
        self.norm_out = SpatialNorm3D(widths[-1], zq_channels, groups)
        self.conv_out = CausalConv3d(widths[-1], config.out_channels)

    def forward(self, z: torch.Tensor, cache: Cache) -> torch.Tensor:
        zq = z  # every norm is conditioned on the raw latent chunk
        h = self.mid_block(self.conv_in(z, cache), zq, cache)
        for block in self.up_blocks:
            h = block(h, zq, cache)
        if self.fast and _inplace():
            return self.conv_out.forward_padded(self.norm_out.activate_padded(h, zq, self.conv_out.context), cache)
        return self.conv_out(silu(self.norm_out(h, zq)), cache)


class CogVideoX(nn.Module):
    """The CogVideoX VAE decoder, decoding latent videos chunk by chunk as diffusers does."""

    fast = True

    def __init__(self, config: CogVideoXConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder = Decoder3D(config)

    @staticmethod
    def schedule(n_latent_frames: int) -> list[int]:
        """Latent frames per chunk: 2 + (F mod 2) first, then 2s, as diffusers' `_decode` walks them.

        13 -> [3, 2, 2, 2, 2, 2]; 1 -> [1]; 2 -> [2]; 4 -> [2, 2]. The released VAEs were trained
        on these chunk sizes only, and GroupNorm statistics span a chunk, so they define the pixels.
        """
        if n_latent_frames < 1:
            raise ValueError(f"a latent video needs at least one frame, not {n_latent_frames}")
        first = min(n_latent_frames, 2 + n_latent_frames % 2)
        return [first] + [2] * ((n_latent_frames - first) // 2)

    def chunk_frames(self, latent_frames: int) -> int:
        """Frames a chunk of `latent_frames` decodes to: each time-doubling up block keeps an odd
        chunk's first frame single and doubles every other frame."""
        frames = latent_frames
        for _ in range(self.config.time_doublings):
            frames = 2 * frames - 1 if _first_frame_apart(frames) else (frames if frames == 1 else 2 * frames)
        return frames

    def output_frames(self, n_latent_frames: int) -> int:
        """Frames a latent video of `n_latent_frames` decodes to (13 -> 49 for the released models)."""
        return sum(self.chunk_frames(t) for t in self.schedule(n_latent_frames))

    def unscale(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents as a CogVideoX pipeline hands them (multiplied by scaling_factor) -> decoder input.

        The pipelines decode `latents / scaling_factor` whether or not `invert_scale_latents` is set
        (that flag changes only how image latents are encoded for image-to-video).
        """
        if self.config.scaling_factor is None:
            raise ValueError("the scaling factor of these weights is unknown: decode unscaled latents")
        return latents / self.config.scaling_factor

    @torch.inference_mode()
    def decode_chunk(self, latents: torch.Tensor, cache: Cache) -> torch.Tensor:
        """One chunk of latents (B, C, t, h, w), already unscaled, -> frames (B, out, T, H, W),
        about [-1, 1], in the model's dtype, computed under inference mode. `cache` carries the
        causal context from the previous chunk of the same stream (start with an empty dict) and
        is updated for the next one."""
        if self.fast:  # channels innermost: what oneDNN's convolutions and the fused norms run fastest on
            latents = latents.contiguous(memory_format=torch.channels_last_3d)
        return self.decoder(latents, cache)

    @torch.inference_mode()
    def decode_chunk_tiled(self, latents: torch.Tensor, cache: Cache, tile: tuple[int, int]) -> torch.Tensor:
        """decode_chunk, with the device seeing one tile of (rows, columns) latents at a time and
        each layer's activation kept in host memory (models/tiled.py). Equal to decode_chunk to
        float rounding; a stream must not mix the two."""
        from movq_cli.models.tiled import TiledChunk

        store = torch.device("cpu")
        return TiledChunk(latents, cache, tile, store).decode(self.decoder)

    def decode_stream(
        self, chunks: Iterable[torch.Tensor], tile: tuple[int, int] | None = None
    ) -> Iterator[torch.Tensor]:
        """Chunks of unscaled latents (1, C, t, h, w), in the model's dtype and device and cut as
        `schedule` says -> each chunk's frames (1, out, T, H, W) as soon as they are decoded;
        `tile`: decode each chunk in spatial tiles of (rows, columns) latents.

        Between chunks the stream holds only the causal caches (two frames per convolution), not
        the frames it handed out; the last chunk (the stream reads one chunk of latents ahead)
        keeps none.
        """
        cache: Cache = {}
        chunks = iter(chunks)
        latents = next(chunks, None)
        while latents is not None:
            following = next(chunks, None)
            seen = cache if following is not None else FinalCache(cache)
            yield self.decode_chunk(latents, seen) if tile is None else self.decode_chunk_tiled(latents, seen, tile)
            latents = following


def use_fast_paths(model: nn.Module, enabled: bool) -> None:
    """Set the `fast` flag of every block of `model`; off, it computes exactly diffusers' way.

    On, the 3D kernels are also stored channels innermost like the activations, which spares
    oneDNN a reorder of every kernel at every call; off, they are stored as diffusers has them.
    """
    layout = torch.channels_last_3d if enabled else torch.contiguous_format
    for module in model.modules():
        if isinstance(module, FAST_BLOCKS):
            module.fast = enabled
        if isinstance(module, nn.Conv3d) and module.weight.device.type != "meta":
            module.weight.data = module.weight.data.contiguous(memory_format=layout)


# The blocks with a fast path beside the plain one, each choosing by its `fast` flag.
FAST_BLOCKS = (CausalConv3d, SpatialNorm3D, ResnetBlock3D, Upsample3D, Decoder3D, CogVideoX)
