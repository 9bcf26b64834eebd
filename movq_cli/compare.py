"""Two versions of the same frames side by side: one sheet with a labelled row for each and a
row of their differences, and per-frame PSNR and SSIM.

The versions are two decodes of the same codes (two checkpoints, two dtypes, tiled and not),
or a decode beside the pictures it should show (a source video or pictures), or the source
beside its own encoding decoded again (`roundtrip`, the everyday check of a tokenizer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from movq_cli.errors import InputError
from movq_cli.io.images import Footage
from movq_cli.preview import BACKGROUND, GAP, contact_sheet, frame_numbers

SSIM_SIGMA = 1.5  # the Gaussian window of Wang et al. (2004): sigma 1.5, 11 taps
SSIM_RADIUS = 5
SSIM_K1, SSIM_K2 = 0.01, 0.03
DIFFERENCE_GAIN = 8  # the difference row shows |a - b| this many times brighter


@dataclass(frozen=True)
class Score:
    """How frame `frame` of the compared row differs from the reference row."""

    frame: int
    psnr: float  # dB; inf where the frames are equal
    ssim: float | None  # None where a frame is smaller than the SSIM window

    def as_json(self) -> dict:
        return {"frame": self.frame, "psnr": _finite(self.psnr), "ssim": self.ssim}


@dataclass(frozen=True)
class Comparison:
    labels: tuple[str, str]  # the reference row's, the compared row's
    scores: list[Score]
    psnr: float  # over every compared frame together
    ssim: float | None  # the mean of the frames'
    sheet: np.ndarray

    def as_json(self) -> dict:
        return {
            "reference": self.labels[0],
            "compared": self.labels[1],
            "frames": [score.as_json() for score in self.scores],
            "psnr": _finite(self.psnr),
            "ssim": self.ssim,
        }


def _finite(value: float) -> float | None:
    """A number for JSON, which has no infinity: None stands for equal frames' infinite PSNR."""
    return round(value, 4) if math.isfinite(value) else None


def psnr(reference: np.ndarray, compared: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 pictures (or stacks of them), in dB; inf when equal."""
    mse = np.mean((reference.astype(np.float64) - compared.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _gaussian_blur(planes: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) float64 -> the 11x11 Gaussian-weighted means of its full windows (N, 1, H-10, W-10)."""
    taps = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64)
    window = torch.exp(-0.5 * (taps / SSIM_SIGMA) ** 2)
    window /= window.sum()
    rows = torch.nn.functional.conv2d(planes, window.view(1, 1, 1, -1))
    return torch.nn.functional.conv2d(rows, window.view(1, 1, -1, 1))


def ssim(reference: np.ndarray, compared: np.ndarray) -> float | None:
    """Structural similarity (Wang et al., 2004) of two uint8 pictures (H, W, 3): a Gaussian
    window (sigma 1.5, 11 taps), K1 0.01, K2 0.03, range 255, each channel's mean over the
    windows that fit in the picture, averaged over channels. None when a side is under 11 pixels."""
    if min(reference.shape[:2]) < 2 * SSIM_RADIUS + 1:
        return None
    x, y = (torch.from_numpy(np.ascontiguousarray(p)).double().permute(2, 0, 1)[:, None] for p in (reference, compared))
    mean_x, mean_y = _gaussian_blur(x), _gaussian_blur(y)
    var_x = _gaussian_blur(x * x) - mean_x**2
    var_y = _gaussian_blur(y * y) - mean_y**2
    cov = _gaussian_blur(x * y) - mean_x * mean_y
    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    index = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
    return float(index.mean())


def difference(reference: np.ndarray, compared: np.ndarray) -> np.ndarray:
    """|reference - compared|, the largest of the channels, DIFFERENCE_GAIN times brighter, as grey pictures."""
    gap = np.abs(reference.astype(np.int16) - compared.astype(np.int16)).max(axis=-1, keepdims=True)
    return np.repeat(np.clip(gap * DIFFERENCE_GAIN, 0, 255).astype(np.uint8), 3, axis=-1)


def label_strip(text: str, width: int, height: int) -> np.ndarray:
    """A strip (height, width, 3) with `text` in white on the sheet's background, cut where it does not fit."""
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new("RGB", (width, height), (BACKGROUND,) * 3)
    ImageDraw.Draw(strip).text((2, 1), text, fill=(255, 255, 255), font=ImageFont.load_default())
    return np.asarray(strip)


def side_by_side(rows: list[tuple[str, np.ndarray]], numbers: list[int]) -> np.ndarray:
    """One sheet: for each (label, frames (N, H, W, 3)), a strip with the label above a row of the
    frames, each numbered."""
    parts = []
    for label, frames in rows:
        row = contact_sheet(frames, numbers, columns=len(numbers))
        parts += [label_strip(label, row.shape[1], 14), row, np.full((GAP, row.shape[1], 3), BACKGROUND, np.uint8)]
    return np.concatenate(parts[:-1])


def compare(reference: tuple[str, np.ndarray], compared: tuple[str, np.ndarray], numbers: list[int]) -> Comparison:
    """Score and lay out two versions (label, frames (N, H, W, 3)) of the frames `numbers`."""
    (reference_label, a), (compared_label, b) = reference, compared
    if a.shape != b.shape:
        raise InputError(
            f"{compared_label} has frames of {b.shape[2]}x{b.shape[1]}, {reference_label} of {a.shape[2]}x{a.shape[1]}"
        )
    scores = [Score(number, psnr(x, y), ssim(x, y)) for number, x, y in zip(numbers, a, b, strict=True)]
    ssims = [score.ssim for score in scores if score.ssim is not None]
    sheet = side_by_side(
        [(reference_label, a), (compared_label, b), (f"difference x{DIFFERENCE_GAIN}", difference(a, b))], numbers
    )
    return Comparison(
        (reference_label, compared_label), scores, psnr(a, b), float(np.mean(ssims)) if ssims else None, sheet
    )


def footage_frames(footage: Footage, numbers: list[int], size: tuple[int, int]) -> np.ndarray:
    """Frames `numbers` of `footage`, cut to `size` (height, width) from the top-left corner, as
    encoding crops them: (N, H, W, 3) uint8."""
    height, width = size
    if footage.size[0] < height or footage.size[1] < width:
        raise InputError(
            f"{footage.path} is {footage.size[1]}x{footage.size[0]}, smaller than the decoded {width}x{height}"
        )
    wanted, frames = set(numbers), {}
    for number, frame in enumerate(footage.frames()):
        if number in wanted:
            frames[number] = frame[:height, :width]
        if number >= max(numbers):
            break
    return np.stack([frames[number] for number in numbers])


def roundtrip_frames(
    model: torch.nn.Module, footage: Footage, count: int = 8, chunk: int = 8
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Encode `count` evenly spaced frames of `footage` into codes and decode them again:
    (frame numbers, the source frames cropped as encoding crops them, the decoded frames)."""
    from movq_cli.encoding import check_encoder, encode_chunk
    from movq_cli.io.codes import from_array
    from movq_cli.models.family import DecodeOptions
    from movq_cli.pipeline import decode_frames, model_device, prepare

    check_encoder(model, latents=False)
    factor = model.config.factor
    size = (footage.size[0] // factor * factor, footage.size[1] // factor * factor)
    if min(size) == 0:
        raise InputError(f"{footage.path}: {footage.size[1]}x{footage.size[0]} is smaller than one code ({factor}px)")
    numbers = frame_numbers(footage.n_frames, count)
    source = footage_frames(footage, numbers, size)
    device = model_device(model)
    decoded = []
    for start in range(0, len(source), chunk):
        codes = encode_chunk(model, source[start : start + chunk], device, latents=False).cpu().numpy()
        decoded.extend(decode_frames(prepare(model, from_array(codes), options=DecodeOptions(chunk=len(codes)))))
    return numbers, source, np.concatenate(decoded)
