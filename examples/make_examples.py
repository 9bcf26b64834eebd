"""Regenerate the example code files from real photographs, with the bundled model.

    python examples/make_examples.py

Makes two camera moves of 64 frames at 256x256 and encodes them with the default model:
- coffee_pan_zoom.npy: a slow pan-and-zoom across scikit-image's `coffee` (a photo the
  default model never saw in training);
- hubble_pan.npy: a pan across the Hubble deep field (872x1000).

and reconstruction.png: 256x256 centre crops of the held-out `coffee` and `chelsea`, each
beside its encode -> decode reconstruction, with the PSNR printed here.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import skimage.data
import torch
import torch.nn.functional as F

import movq_cli as movq
from movq_cli.checkpoints import weights
from movq_cli.checkpoints.bundled import default_weights
from movq_cli.encoding import code_dtype, encode_chunk

HERE = Path(__file__).resolve().parent
PHOTOS = Path(skimage.data.__file__).parent
FRAMES, SIZE = 64, 256


def ease(t: float) -> float:
    """Smooth start and stop, like a camera operator."""
    return 0.5 - 0.5 * np.cos(np.pi * t)


def camera_move(photo: np.ndarray, start: tuple[float, float, float], end: tuple[float, float, float]) -> np.ndarray:
    """FRAMES views of `photo`; each view is a square window (top, left, side) eased from start to end."""
    image = torch.from_numpy(photo).permute(2, 0, 1).float()[None]
    frames = []
    for index in range(FRAMES):
        t = ease(index / (FRAMES - 1))
        top, left, side = (round(a + (b - a) * t) for a, b in zip(start, end, strict=True))
        window = image[:, :, top : top + side, left : left + side]
        view = F.interpolate(window, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
        frames.append(view[0].permute(1, 2, 0).clamp(0, 255).round().byte().numpy())
    return np.stack(frames)


def footage() -> dict[str, np.ndarray]:
    """The example clips as pictures: name -> (FRAMES, SIZE, SIZE, 3) uint8."""
    coffee = iio.imread(PHOTOS / "coffee.png")[..., :3]  # 400 x 600
    hubble = iio.imread(PHOTOS / "hubble_deep_field.jpg")[..., :3]  # 872 x 1000
    return {
        "coffee_pan_zoom": camera_move(coffee, start=(0, 0, 400), end=(90, 250, 220)),
        "hubble_pan": camera_move(hubble, start=(40, 20, 256), end=(560, 700, 300)),
    }


def reconstruction_sheet(model) -> np.ndarray:
    """Originals (left) beside their reconstructions (right), one held-out photo a row."""
    rows = []
    for name in ("coffee.png", "chelsea.png"):
        photo = iio.imread(PHOTOS / name)[..., :3]
        top, left = (photo.shape[0] - SIZE) // 2, (photo.shape[1] - SIZE) // 2
        crop = np.ascontiguousarray(photo[top : top + SIZE, left : left + SIZE])[None]
        codes = encode_chunk(model, crop, torch.device("cpu"), latents=False).numpy()
        recon = np.stack(list(movq.decode_frames(codes, model)))
        mse = np.mean((recon.astype(np.float64) - crop) ** 2)
        print(f"{name}: PSNR {10 * np.log10(255**2 / mse):.2f} dB over the 256x256 centre crop")
        rows.append(np.concatenate([crop[0], np.full((SIZE, 4, 3), 255, np.uint8), recon[0]], axis=1))
    return np.concatenate([rows[0], np.full((4, rows[0].shape[1], 3), 255, np.uint8), rows[1]], axis=0)


def main() -> None:
    model = weights.load(default_weights(), encoder=True)
    iio.imwrite(HERE / "reconstruction.png", reconstruction_sheet(model))
    for name, frames in footage().items():
        chunks = [
            encode_chunk(model, frames[i : i + 8], torch.device("cpu"), latents=False) for i in range(0, FRAMES, 8)
        ]
        codes = torch.cat(chunks).numpy()
        np.save(HERE / f"{name}.npy", codes.astype(code_dtype(model.config.n_codes)))
        print(f"{name}.npy: codes {codes.shape}, {len(np.unique(codes))} distinct")


if __name__ == "__main__":
    main()
