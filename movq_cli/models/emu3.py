"""The Emu3 vision tokenizer's decoder (BAAI/Emu3-VisionTokenizer), read top to bottom.

Codes (B, T, h, w) -> videos (B, 3, 4T, 8h, 8w), as docs/ARCHITECTURE.md ("The Emu3 vision
tokenizer") writes the math:

    quant = codebook[codes]                         (B, e, T, h, w)
    z = post_quant_conv(quant)                      causal in time, 1x1 in space
    z, zq = temporal(z, quant)                      the same causal layers for both: T -> 4T frames
    frame i = Decoder2D(z[:, :, i], zq[:, :, i])    movq's 2D MoVQ decoder, per frame

Every temporal convolution is causal with zero padding and every BatchNorm is a fixed per-channel
affine map, so a clip decodes chunk by chunk, each causal convolution handing its last two input
frames to the next chunk, to the same frames as in one piece (`decode_stream`). The 2D layers see
one frame at a time, so an image runs them on frame 0 only (`decode_image`).

Parameter names are BAAI's, so its model.safetensors loads without renaming (after dropping the
encoder); transformers' names are checkpoints/emu3.py's to rename.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from movq_cli.models import movq
from movq_cli.models.config import Emu3Config

# Each causal convolution's last input frames, kept from one chunk for the next. Keyed by the
# convolution module; owned by whoever decodes the stream, so one model serves several streams.
Cache = dict[nn.Module, torch.Tensor]

# Latent frames per chunk of a stream unless told otherwise. Chunks do not change the pixels, and
# the temporal layers are tiny (4 channels at code resolution), so the smallest chunk costs
# nothing and keeps what a chunk holds (its 4 output frames) least.
CHUNK = 1
# Output frames per call of the 2D decoder in a stream: a latent frame's 4 while frames are small,
# fewer as they grow, so that a call holds about CALL_CODES codes' worth of activations. One frame a
# call left the convolutions at 8x8 codes with too little work each (half the speed of four a call
# on a 2-core EPYC); from 32x32 codes on one frame has work enough, and four would hold four frames'
# activations (at 90x90 codes, 720x720 pixels, over 4 GiB in fp32).
FRAMES_PER_CALL = 4
CALL_CODES = 1024


def frames_per_call(grid: tuple[int, int]) -> int:
    """How many output frames of an (h, w) code grid a stream decodes per call of the 2D decoder."""
    rows, cols = grid
    return max(1, min(FRAMES_PER_CALL, CALL_CODES // (rows * cols)))


class CausalConv3d(nn.Module):
    """A convolution over (time, rows, columns) whose output frame t sees input frames t-2..t.

    Before a clip's first frame those are zeros (BAAI's padding); within a stream they are the
    previous chunk's last two input frames, from the cache. Space is zero-padded to keep its size.
    """

    context = 2  # past frames each output frame sees: the time kernel is 3

    def __init__(self, c_in: int, c_out: int, spatial: int) -> None:
        super().__init__()
        kernel = (self.context + 1, spatial, spatial)
        self.conv = nn.Conv3d(c_in, c_out, kernel, padding=(0, spatial // 2, spatial // 2))

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        past = cache.get(self)
        if past is None:
            batch, channels, _, height, width = x.shape
            past = x.new_zeros(batch, channels, self.context, height, width)
        padded = torch.cat([past, x], dim=2)
        cache[self] = padded[:, :, -self.context :].clone()  # a view would keep the whole chunk alive
        return self.conv(padded)


class BatchNorm3d(nn.BatchNorm3d):
    """BatchNorm that always normalizes by its running statistics, as in eval mode: a fixed affine
    map per channel, so no statistic spans frames (or a chunk) whatever mode the module is in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class TemporalResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = BatchNorm3d(channels)
        self.conv1 = CausalConv3d(channels, channels, spatial=3)
        self.norm2 = BatchNorm3d(channels)
        self.conv2 = CausalConv3d(channels, channels, spatial=3)

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return x + h


class TemporalUpsample(nn.Module):
    """Nearest x2 in time (each frame twice), then a causal 3x3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels, spatial=3)

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        return self.conv(x.repeat_interleave(2, dim=2), cache)


class Decoder(movq.Decoder):
    """The temporal front end (`temporal`) and movq's 2D MoVQ decoder, whose `forward(z, zq)`
    decodes single frames (B, C, h, w) and is inherited unchanged."""

    def __init__(self, config: Emu3Config) -> None:
        super().__init__(config.decoder_2d)
        self.time_res_stack = nn.ModuleList(TemporalResBlock(config.z_channels) for _ in range(config.num_res_blocks))
        self.time_conv = nn.ModuleList(TemporalUpsample(config.z_channels) for _ in range(config.time_doublings))

    def temporal(self, z: torch.Tensor, zq: torch.Tensor, cache: Cache) -> tuple[torch.Tensor, torch.Tensor]:
        """z and zq (B, C, t, h, w) -> both (B, C, 4t, h, w), through the same layers (as one batch).

        The zq that every SpatialNorm sees is this temporally processed one, not the codebook's.
        """
        both = torch.cat([z, zq])
        for block in self.time_res_stack:
            both = block(both, cache)
        for upsample in self.time_conv:
            both = F.silu(upsample(both, cache))
        z, zq = both.chunk(2)
        return z, zq


class Codebook(nn.Module):
    def __init__(self, config: Emu3Config) -> None:
        super().__init__()
        self.embedding = nn.Embedding(config.codebook_size, config.embed_dim)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Integer codes (B, T, h, w) -> quant (B, e, T, h, w)."""
        return F.embedding(codes, self.embedding.weight).permute(0, 4, 1, 2, 3)


class Emu3(nn.Module):
    """The Emu3 vision tokenizer's decoder: codebook, causal post_quant_conv, decoder."""

    def __init__(self, config: Emu3Config) -> None:
        super().__init__()
        self.config = config
        self.quantize = Codebook(config)
        self.post_quant_conv = CausalConv3d(config.embed_dim, config.z_channels, spatial=1)
        self.decoder = Decoder(config)

    def output_frames(self, n_latent_frames: int) -> int:
        """Frames that `n_latent_frames` latent frames decode to: 4 each (transformers'
        `Emu3VQVAE.decode` returns temporal * temporal_downsample_factor)."""
        return n_latent_frames * self.config.temporal_downsample_factor

    @staticmethod
    def schedule(n_latent_frames: int, chunk: int = CHUNK) -> list[int]:
        """Latent frames per chunk of a stream: `chunk` each, the last one what is left. Any cut
        decodes to the same frames; it sets only what one chunk holds at a time."""
        if n_latent_frames < 1 or chunk < 1:
            raise ValueError(f"n_latent_frames {n_latent_frames} and chunk {chunk} must be positive")
        return [min(chunk, n_latent_frames - start) for start in range(0, n_latent_frames, chunk)]

    def front(self, codes: torch.Tensor, cache: Cache) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (B, t, h, w) -> z and zq (B, C, 4t, h, w), the 2D decoder's inputs, continuing
        the clip whose causal context `cache` holds (an empty dict: the clip starts here)."""
        quant = self.quantize.lookup(codes)
        return self.decoder.temporal(self.post_quant_conv(quant, cache), quant, cache)

    def pictures(self, z: torch.Tensor, zq: torch.Tensor, per_call: int | None = None) -> torch.Tensor:
        """z and zq (B, C, T, h, w) -> images (B, out, T, H, W): the 2D decoder on `per_call`
        frames at a time (default: `frames_per_call` of the grid), so that its activations stay
        those of a few frames."""
        batch, _, frames, rows, cols = z.shape
        per_call = per_call or frames_per_call((rows, cols))
        size = (batch, self.config.out_ch, frames, rows * self.config.factor, cols * self.config.factor)
        images = torch.empty(size, dtype=z.dtype, device=z.device)
        for start in range(0, frames, per_call):
            picked = slice(start, min(start + per_call, frames))
            z_frames, zq_frames = (_per_frame(x[:, :, picked]) for x in (z, zq))
            decoded = self.decoder(z_frames, zq_frames)  # (B * n, out, H, W)
            images[:, :, picked] = decoded.unflatten(0, (batch, -1)).transpose(1, 2)
        return images

    @torch.inference_mode()
    def decode_image(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (n, h, w) -> images (n, out, H, W), about [-1, 1]: frame 0 of each image's
        4-frame clip, as `Emu3VQVAE.decode` returns for 3-d codes. Every 2D layer works per frame,
        so the 2D decoder runs on frame 0 alone: the same pixels for a quarter of the work."""
        z, zq = self.front(codes[:, None], {})
        return self.decoder(*(_per_frame(x[:, :, :1]) for x in (z, zq)))

    @torch.inference_mode()
    def decode_stream(
        self, chunks: Iterable[torch.Tensor], independent: bool = False, per_call: int | None = None
    ) -> Iterator[torch.Tensor]:
        """Chunks of one clip's codes (1, t, h, w), int64 on the model's device, -> each chunk's
        frames (1, out, 4t, H, W), about [-1, 1], in the model's dtype, as soon as they are decoded.

        The chunks decode to the frames `Emu3VQVAE.decode` gives for the whole clip (1, T, h, w):
        each causal convolution carries its last input frames to the next chunk. `independent`:
        every latent frame is a clip of its own (what BAAI's autoencode.py encodes a video into:
        4-frame clips, B = N, T = 1), and nothing is carried. Between chunks the stream holds two
        frames per causal convolution at code resolution; `per_call` output frames (default:
        `frames_per_call` of the grid) go through the 2D decoder at a time.
        """
        cache: Cache = {}
        for codes in chunks:
            if independent:  # (1, t, h, w) -> t clips of one latent frame, each from a clean start
                z, zq = self.front(codes.transpose(0, 1), {})
                z, zq = (x.transpose(0, 1).flatten(1, 2)[None] for x in (z, zq))
            else:
                z, zq = self.front(codes, cache)
            yield self.pictures(z, zq, per_call)

    @staticmethod
    def to_pixels(images: torch.Tensor) -> torch.Tensor:
        """Images (n, 3, H, W) about [-1, 1] -> uint8 (n, H, W, 3), on their device, as Emu3's
        image processor makes them: x * 0.5 + 0.5, times 255, clipped to [0, 255], then cast, which
        truncates (it does not round: 254.9 is 254). In float32, as the processor computes."""
        scaled = (images.float() * 0.5 + 0.5) * 255
        return scaled.clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _per_frame(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, h, w) -> (B * T, C, h, w) frames, channels_last like the 2D decoder's activations
    (SpatialNorm's broadcasts were several times slower from a contiguous zq)."""
    return x.transpose(1, 2).flatten(0, 1).contiguous(memory_format=torch.channels_last)
