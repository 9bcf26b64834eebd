"""How much worse the bundled model (or any MoVQ with an encoder) does at the edge of the frame.

    python training/border_error.py                      # the bundled model
    python training/border_error.py --weights other.safetensors --sizes 64,128,256,384

Prints the mean absolute error in 8-bit levels (mean over pixels and the three colours) of the
outer ring of the frame (the outer 2 pixels, and the outermost one alone) against the interior
(everything inside those 2 pixels), with the signed mean of the outermost ring (negative: darker
than the source), and the ratio border / interior, for:
- the held-out photos `coffee` and `chelsea`: centre crops at each of --sizes, encoded and
  decoded as `movq encode` and `movq decode` do;
- the Hubble example, examples/hubble_pan.npy, decoded against the footage it was encoded from
  (examples/make_examples.py), every --every'th frame.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import skimage.data
import torch

import movq_cli as movq
from movq_cli.checkpoints import weights
from movq_cli.checkpoints.bundled import default_weights
from movq_cli.encoding import encode_chunk

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = Path(skimage.data.__file__).parent
CPU = torch.device("cpu")


def ring_errors(decoded: np.ndarray, source: np.ndarray, ring: int = 2) -> dict[str, float]:
    """Errors of uint8 frames (N, H, W, 3) against their sources over the outer ring and the interior."""
    difference = decoded.astype(np.float64) - source.astype(np.float64)
    error = np.abs(difference).mean(-1)  # (N, H, W)
    height, width = error.shape[1:]
    inside = np.zeros((height, width), bool)
    inside[ring : height - ring, ring : width - ring] = True
    outermost = ~inside.copy()
    outermost[1 : height - 1, 1 : width - 1] = False
    border, interior = error[:, ~inside].mean(), error[:, inside].mean()
    return {
        "border": border,
        "outermost": error[:, outermost].mean(),
        "interior": interior,
        "ratio": border / interior,
        "outermost_bias": difference.mean(-1)[:, outermost].mean(),
    }


def report(label: str, errors: dict[str, float]) -> None:
    print(
        f"{label:<28} border(2px) {errors['border']:6.2f}  outermost {errors['outermost']:6.2f}"
        f"  interior {errors['interior']:6.2f}  border/interior {errors['ratio']:.2f}"
        f"  outermost bias {errors['outermost_bias']:+6.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--sizes", default="256", help="sides of the centre crops of the held-out photos")
    parser.add_argument("--every", type=int, default=1, help="Hubble example: every N-th frame")
    args = parser.parse_args()

    model = weights.load(args.weights or default_weights(), encoder=True)
    print(f"weights: {args.weights or default_weights()}")
    for size in (int(side) for side in args.sizes.split(",")):
        for name in ("coffee.png", "chelsea.png"):
            photo = iio.imread(PHOTOS / name)[..., :3]
            side = min(size, *photo.shape[:2]) // model.config.factor * model.config.factor
            top, left = (photo.shape[0] - side) // 2, (photo.shape[1] - side) // 2
            crop = np.ascontiguousarray(photo[top : top + side, left : left + side])[None]
            codes = encode_chunk(model, crop, CPU, latents=False).numpy()
            report(f"{name[:-4]} {side}x{side}", ring_errors(np.stack(list(movq.decode_frames(codes, model))), crop))

    spec = importlib.util.spec_from_file_location("make_examples", ROOT / "examples" / "make_examples.py")
    make_examples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_examples)
    source = make_examples.footage()["hubble_pan"][:: args.every]
    clip = np.load(ROOT / "examples" / "hubble_pan.npy")[:: args.every]
    decoded = np.stack(list(movq.decode_frames(clip, model, chunk=8)))
    report(f"hubble_pan.npy, {len(clip)} frames", ring_errors(decoded, source))
    edge_columns = decoded[:, :, [0, -1]].mean(), source[:, :, [0, -1]].mean()
    print(f"  hubble edge columns: decoded mean level {edge_columns[0]:.1f}, source {edge_columns[1]:.1f}")


if __name__ == "__main__":
    main()
