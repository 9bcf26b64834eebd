"""Faster ways to compute the decoder's 3x3 convolutions, each equal to the plain one up to rounding.

- Upsampling: a 3x3 convolution of a nearest-upsampled (x2) image sees, at each of the four
  output phases (row and column parity), only a 2x2 neighbourhood of the small image with
  some kernel taps summed. Four 2x2 convolutions at the small size therefore give the same
  result with 4/9 of the multiplications and without materialising the upsampled image.
- Winograd F(4x4, 3x3) (Lavin & Gray, 2016) on the CPU in float32, off unless switched on
  (`use_winograd`): each 6x6 input tile and each kernel are moved to a 36-point transform space
  where the convolution is 36 independent matrix products, then 4x4 output tiles come back:
  2.25x fewer multiplications than direct convolution. Tiles are processed in bands of rows so
  that the transformed tiles stay in cache. Whether that pays depends on the CPU: it made the
  Kandinsky decode 1.2-1.6x faster on a 2-core Intel Xeon, but no faster on a 2-core AMD EPYC
  whose direct convolution (oneDNN, AVX-512) runs at ~250 GFLOP/s a core, and 1.5-5x slower there
  while other processes shared the cores (its many small operators each wait for both threads).
  Its transformed kernels are also 4x the size of the 3x3 weights (490 MB for Kandinsky 2.2).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import product

import torch
import torch.nn.functional as F
from torch import nn

# Winograd F(4x4, 3x3): Y = A^T [(G g G^T) * (B^T d B)] A for a 6x6 tile d and 3x3 kernel g.
_BT = torch.tensor(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=torch.float64,
)
_G = torch.tensor(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=torch.float64,
)
_AT = torch.tensor(
    [
        [1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1],
    ],
    dtype=torch.float64,
)
# Both sides of a transform at once: vec(B^T d B) = kron(B^T, B^T) vec(d), as one small matmul.
_TILE_IN = torch.kron(_BT, _BT).float()  # (36, 36)
_TILE_OUT = torch.kron(_AT, _AT).float()  # (16, 36)
_KERNEL_IN = torch.kron(_G, _G).float()  # (36, 9): vec(G g G^T) for a kernel g

# Tiles per band: measured on 2 cores, bands of ~256 tiles keep the working set in cache
# (whole-frame transforms were up to 2x slower than direct convolution at 256x256).
_BAND_TILES = 256
# Below these widths the transforms cost more than the multiplications they save.
_MIN_CHANNELS = 96


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """A (Cout, Cin, 3, 3) kernel -> its transform (36, Cin, Cout), float32.

    One float32 matmul: every entry is a sum of at most 9 products with G's entries, so it is
    within a few float32 roundings of the float64 transform, which took 6-15x as long.
    """
    out_channels, in_channels = weight.shape[:2]
    taps = weight.detach().float().cpu().permute(2, 3, 1, 0).reshape(9, in_channels * out_channels)
    return (_KERNEL_IN @ taps).view(36, in_channels, out_channels)


def winograd_conv3x3(x: torch.Tensor, transformed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv2d(x, weight, bias, padding=1) for float32 x (N, Cin, H, W); returns channels_last."""
    batch, channels, height, width = x.shape
    out_channels = transformed.shape[2]
    tile_rows, tile_cols = -(-height // 4), -(-width // 4)
    padded = _pad_to_tiles(x, tile_rows, tile_cols)
    s_frame, s_row, s_col, s_chan = padded.stride()
    out = torch.empty(batch, 4 * tile_rows, 4 * tile_cols, out_channels, dtype=x.dtype)
    band = max(1, _BAND_TILES // tile_cols)
    for frame in range(batch):
        for row in range(0, tile_rows, band):
            rows = min(band, tile_rows - row)
            tiles = padded.as_strided(
                (6, 6, rows, tile_cols, channels),
                (s_row, s_col, 4 * s_row, 4 * s_col, s_chan),
                padded.storage_offset() + frame * s_frame + 4 * row * s_row,
            )
            count = rows * tile_cols
            spectra = (_TILE_IN @ tiles.reshape(36, count * channels)).view(36, count, channels)
            products = torch.bmm(spectra, transformed).view(36, count * out_channels)
            result = (_TILE_OUT @ products).view(4, 4, rows, tile_cols, out_channels).permute(2, 0, 3, 1, 4)
            target = out[frame, 4 * row : 4 * (row + rows)].view(rows, 4, tile_cols, 4, out_channels)
            if bias is None:
                target.copy_(result)
            else:
                torch.add(result, bias, out=target)
    if 4 * tile_rows != height or 4 * tile_cols != width:
        out = out[:, :height, :width].contiguous()
    return out.permute(0, 3, 1, 2)


def _pad_to_tiles(x: torch.Tensor, tile_rows: int, tile_cols: int) -> torch.Tensor:
    """x (N, C, H, W) -> (N, 4*tile_rows + 2, 4*tile_cols + 2, C): one zero pixel for the
    convolution around x, and zeros up to whole tiles at the bottom and right."""
    batch, channels, height, width = x.shape
    padded = x.new_empty(batch, 4 * tile_rows + 2, 4 * tile_cols + 2, channels)
    padded[:, 1 : height + 1, 1 : width + 1].copy_(x.permute(0, 2, 3, 1))
    padded[:, 0].zero_()  # zeroing only the border: filling the whole buffer first cost ~10% of a conv
    padded[:, height + 1 :].zero_()
    padded[:, 1 : height + 1, 0].zero_()
    padded[:, 1 : height + 1, width + 1 :].zero_()
    return padded


# Along one axis, output phase 0 of an upsampled image sees the small image at offsets (-1, 0) with
# taps (k0, k1 + k2), phase 1 at offsets (0, +1) with taps (k0 + k1, k2): each phase's two kernel
# positions sum these ranges of the three taps.
_PHASE_TAPS = (((0, 1), (1, 3)), ((0, 2), (2, 3)))


def upsample_weight(weight: torch.Tensor) -> torch.Tensor:
    """A (Cout, Cin, 3, 3) kernel -> (4*Cout, Cin, 2, 2), channels_last: one 2x2 kernel per output
    phase (a, b), its taps summed in float32 (or wider).

    Each of the 16 positions is summed from contiguous tap planes straight into the kernel, so the
    derivation holds one copy of the weight besides it (stacking and concatenating the phases
    held several: 250 MB more for a 1024-channel kernel of 38 MB, which the heap then kept).
    """
    if _training(weight):
        return _upsample_weight_differentiable(weight)
    out_channels, in_channels = weight.shape[:2]
    wide = torch.promote_types(weight.dtype, torch.float32)
    planes = weight.detach().permute(2, 3, 0, 1).contiguous()  # (3, 3, Cout, Cin): each tap contiguous
    kernel = weight.new_empty((4 * out_channels, 2, 2, in_channels)).permute(0, 3, 1, 2)
    for a, b, i, j in product(range(2), repeat=4):  # phase (a, b), its kernel position (i, j)
        (r0, r1), (c0, c1) = _PHASE_TAPS[a][i], _PHASE_TAPS[b][j]
        phase = slice((2 * a + b) * out_channels, (2 * a + b + 1) * out_channels)
        kernel[phase, :, i, j] = planes[r0:r1, c0:c1].sum((0, 1), dtype=wide)
    return kernel


def _upsample_weight_differentiable(weight: torch.Tensor) -> torch.Tensor:
    """`upsample_weight` by stacking, so that gradients reach the weight."""
    w = weight.to(torch.promote_types(weight.dtype, torch.float32))

    def phases(k: torch.Tensor, axis: int) -> list[torch.Tensor]:
        return [torch.stack([k.narrow(axis, r0, r1 - r0).sum(axis) for r0, r1 in taps], axis) for taps in _PHASE_TAPS]

    kernels = [kernel for rows in phases(w, 2) for kernel in phases(rows, 3)]
    return torch.cat(kernels, 0).to(weight.dtype).contiguous(memory_format=torch.channels_last)


def upsample_conv3x3(x: torch.Tensor, phase_weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv2d(nearest_upsample_x2(x), weight, bias, padding=1); returns channels_last."""
    batch, _, height, width = x.shape
    out_channels = phase_weight.shape[0] // 4
    # Output (i, j) of phase (a, b) is the 2x2 convolution of the padded input at (i + a, j + b).
    phase_bias = None if bias is None else bias.repeat(4)
    phased = F.conv2d(F.pad(x, (1, 1, 1, 1)), phase_weight, phase_bias).permute(0, 2, 3, 1)

    def phase(a: int, b: int) -> torch.Tensor:  # (N, H, W, Cout)
        channels = slice((2 * a + b) * out_channels, (2 * a + b + 1) * out_channels)
        return phased[:, a : a + height, b : b + width, channels]

    if torch.is_grad_enabled() or torch.compiler.is_compiling():  # functional: autograd and the compiler need it
        out = torch.stack([torch.stack([phase(a, 0), phase(a, 1)], 3) for a in range(2)], 2)
    else:  # each phase copied once into its place
        out = torch.empty(batch, height, 2, width, 2, out_channels, dtype=x.dtype, device=x.device)
        for a in range(2):
            for b in range(2):
                out[:, :, a, :, b].copy_(phase(a, b))
    return out.reshape(batch, 2 * height, 2 * width, out_channels).permute(0, 3, 1, 2)


def _training(weight: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and weight.requires_grad


def _version(weight: torch.Tensor) -> int:
    """How many times weight was changed in place; inference tensors keep no count."""
    return 0 if weight.is_inference() else weight._version


class _Derived:
    """A tensor derived from a weight, kept until the weight changes (values, dtype or device)."""

    def __init__(self) -> None:
        self.source: torch.Tensor | None = None
        self.version = -1
        self.value: torch.Tensor | None = None

    def get(self, weight: torch.Tensor, derive: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return derive(weight)  # traced once; the compiler folds it into a constant
        current = weight.detach()
        fresh = (
            self.source is not None
            and self.source.data_ptr() == current.data_ptr()  # holding source keeps its address unique
            and self.source.dtype == current.dtype
            and self.version == _version(weight)
        )
        if not fresh:
            self.source, self.version, self.value = current, _version(weight), derive(current)
        assert self.value is not None
        return self.value


class Conv3x3(nn.Conv2d):
    """A 3x3, stride 1, padding 1 convolution; by Winograd on the CPU in float32 inference when
    switched on (`use_winograd`), with the transformed kernel kept beside the plain weight."""

    winograd = False

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)
        self._transformed = _Derived()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._uses_winograd(x):
            return super().forward(x)
        transformed = self._transformed.get(self.weight, winograd_weight)
        return winograd_conv3x3(x, transformed, self.bias)

    def _uses_winograd(self, x: torch.Tensor) -> bool:
        return (
            self.winograd
            and not torch.compiler.is_compiling()  # the compiler chooses its own convolution
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and not _training(self.weight)
            and min(self.in_channels, self.out_channels) >= _MIN_CHANNELS
        )


class UpsampleConv3x3(nn.Conv2d):
    """conv3x3(nearest_upsample_x2(x)), computed as four 2x2 convolutions at x's own size."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 3, padding=1)
        self._phases = _Derived()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _training(self.weight):
            return upsample_conv3x3(x, upsample_weight(self.weight), self.bias)
        return upsample_conv3x3(x, self.phase_weight(), self.bias)

    def phase_weight(self) -> torch.Tensor:
        """The four phases' kernels, derived from the weight on first use and kept until it changes."""
        return self._phases.get(self.weight, upsample_weight)


def derive_kernels(model: nn.Module) -> None:
    """Derive now the kernels `model`'s upsampling convolutions keep beside their weights.

    Called before a decode's first activations: derived among them, on the first call of each
    convolution, they kept freed activations from going back to the system (a first Emu3 decode
    of 64x64 frames ended holding 76 MiB more than the kernels themselves).
    """
    for module in model.modules():
        if isinstance(module, UpsampleConv3x3) and not _training(module.weight):
            module.phase_weight()


def use_winograd(model: nn.Module, enabled: bool) -> None:
    """Switch Winograd convolution on or off (the default) for every 3x3 convolution of model.

    The plain weights stay, so it can be switched either way at any time; switching it off
    frees the transformed kernels, which are made again, once, on the next call that uses them.
    """
    for module in model.modules():
        if isinstance(module, Conv3x3):
            module.winograd = enabled
            if not enabled:
                module._transformed = _Derived()
