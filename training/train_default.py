"""Train the default model that ships in weights/: one command, fixed seeds, CPU.

    python training/train_default.py                                  # both stages
    python training/train_default.py --finetune-from STAGE1.safetensors  # stage 2 alone

Trains a small MoVQ (encoder + SpatialNorm decoder, downsampling by 4, 1024 codes of 4
dimensions) on random crops and flips of the photographs inside scikit-image, holding out
`coffee` and `chelsea` (and `cat`, the same photo) for evaluation, in two stages:

1. Everything from scratch: 3600 steps of 16 random 64x64 crops (85 minutes on 2 cores). The
   codebook is learnt by exponential moving averages (k-means style) and unused codes are
   restarted from encoder outputs, so it does not collapse.
2. The decoder alone (with post_quant_conv), on crops of 128, 192 and 256 pixels, about
   2 x 256 x 256 pixels a step: 50 steps, 11 minutes on 2 cores shared with other work.
   The encoder and codebook are frozen, so stage 2 changes no code.

Stage 2 is there because a decoder trained only on 64x64 frames draws the edge of larger
frames wrong: its GroupNorms and its attention in the middle take their statistics over the
whole frame, so what it learnt to do next to the zero padding at the edge fits 64x64 frames
(16x16 codes) and not 256x256 ones. From the same codes, the same corner came out darker the
larger the frame (a one-pixel dark border on the 256x256 examples). Stage 2 brought the error
of the outer 2 pixels of held-out 256x256 crops from 9.2 to 7.6 levels (interior 6.9 to
6.2) and raised the held-out PSNR (training/border_error.py measures the border).

Writes weights/movq-default.safetensors (after every evaluation) and prints the held-out PSNR,
codebook usage and border/interior error as it goes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import skimage.data
import torch
import torch.nn.functional as F

from movq_cli.checkpoints import weights
from movq_cli.models.config import MovqConfig
from movq_cli.models.movq import Movq

CONFIG = MovqConfig(
    ch=32, ch_mult=(1, 2, 4), num_res_blocks=1, attn_levels=(), mid_attn=True,
    z_channels=4, embed_dim=4, n_embed=1024, encoder=True,
)  # fmt: skip
PHOTOS = Path(skimage.data.__file__).parent  # the images that ship inside scikit-image
HELD_OUT = ("coffee.png", "chelsea.png")  # `cat` is chelsea under another name
TRAINING_PHOTOS = (
    "astronaut.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg",
    "retina.jpg", "ihc.png", "coins.png", "camera.png", "brick.png", "grass.png", "gravel.png", "moon.png",
    "page.png", "text.png", "logo.png", "microaneurysms.png", "cell.png", "clock_motion.png", "color.png",
)  # fmt: skip
# stage 2: decoder fine-tune at the frame sizes the model is used at, about FINETUNE_PIXELS a step
FINETUNE_SIZES = (128, 192, 256)
FINETUNE_PIXELS = 2 * 256 * 256
FINETUNE_STEPS = 50
FINETUNE_LR = 2e-4
OUT = Path(__file__).resolve().parents[1] / "weights" / "movq-default.safetensors"


def load_photo(name: str) -> torch.Tensor:
    """A scikit-image photo as (3, H, W) float in [-1, 1]."""
    image = np.asarray(iio.imread(PHOTOS / name))
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = image[..., :3].astype(np.float32)
    if image.max() > 255:  # 16-bit images
        image = image / image.max() * 255
    return torch.from_numpy(image).permute(2, 0, 1) / 127.5 - 1


def training_photos() -> list[torch.Tensor]:
    assert not set(TRAINING_PHOTOS) & set(HELD_OUT)
    return [load_photo(name) for name in TRAINING_PHOTOS]


def held_out_crops() -> dict[str, torch.Tensor]:
    """256x256 centre crops of the held-out photos."""
    crops = {}
    for name in HELD_OUT:
        photo = load_photo(name)
        top, left = (photo.shape[1] - 256) // 2, (photo.shape[2] - 256) // 2
        crops[name] = photo[:, top : top + 256, left : left + 256]
    return crops


def random_batch(photos: list[torch.Tensor], size: int, crop: int, generator: torch.Generator) -> torch.Tensor:
    """Random crops at random scales (0.5x to 1x), with flips, from the photos at least `crop` on each side
    (never blown up: at 64 that is every photo)."""
    photos = [photo for photo in photos if min(photo.shape[1:]) >= crop]
    batch = []
    weights_ = torch.tensor([math.sqrt(p.shape[1] * p.shape[2]) for p in photos])
    for index in torch.multinomial(weights_, size, replacement=True, generator=generator).tolist():
        photo = photos[index]
        height, width = photo.shape[1:]
        # a window of crop/scale pixels, brought down to crop x crop: zoomed out by up to 2x
        window = min(height, width, int(crop / (0.5 + 0.5 * torch.rand((), generator=generator).item())))
        top = torch.randint(0, height - window + 1, (), generator=generator).item()
        left = torch.randint(0, width - window + 1, (), generator=generator).item()
        patch = photo[:, top : top + window, left : left + window]
        if window != crop:
            patch = F.interpolate(patch[None], size=(crop, crop), mode="area")[0]
        if torch.rand((), generator=generator) < 0.5:
            patch = patch.flip(-1)
        batch.append(patch)
    return torch.stack(batch)


class EmaCodebook:
    """k-means style codebook updates (van den Oord et al.), with dead codes restarted."""

    def __init__(self, codebook: torch.Tensor, decay: float = 0.99) -> None:
        self.codebook = codebook  # the model's embedding weight, updated in place
        self.decay = decay
        self.counts = torch.ones(codebook.shape[0])
        self.sums = codebook.detach().clone()
        self.usage = torch.zeros(codebook.shape[0])

    @torch.no_grad()
    def update(self, latents: torch.Tensor, rows: torch.Tensor) -> None:
        flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        onehot = F.one_hot(rows.reshape(-1), self.codebook.shape[0]).float()
        self.counts.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.sums.mul_(self.decay).add_(onehot.T @ flat, alpha=1 - self.decay)
        total = self.counts.sum()
        smoothed = (self.counts + 1e-5) / (total + self.codebook.shape[0] * 1e-5) * total
        self.codebook.copy_(self.sums / smoothed[:, None])
        self.usage.add_(onehot.sum(0))

    @torch.no_grad()
    def restart_dead(self, latents: torch.Tensor, generator: torch.Generator) -> int:
        """Codes unused since the last restart take the values of random current latents."""
        dead = (self.usage == 0).nonzero().squeeze(1)
        flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        if len(dead):
            picks = torch.randint(0, len(flat), (len(dead),), generator=generator)
            self.codebook[dead] = flat[picks]
            self.sums[dead] = flat[picks]
            self.counts[dead] = 1
        self.usage.zero_()
        return len(dead)


def reconstruct(model: Movq, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images -> (reconstructions, codes), through the codebook as `movq encode`/`decode` do."""
    codes = model.quantize.nearest(model.encode(images))
    return model.decode_codes(codes), codes


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> 8-bit levels, as `movq decode` writes them."""
    return torch.round(torch.clamp((x + 1) / 2, 0, 1) * 255)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [-1, 1], compared as 8-bit pictures."""
    mse = (to_pixels(a) - to_pixels(b)).pow(2).mean().item()
    return 10 * math.log10(255**2 / max(mse, 1e-10))


def border_and_interior_error(a: torch.Tensor, b: torch.Tensor, ring: int = 2) -> tuple[float, float]:
    """Mean absolute difference in 8-bit levels of two images in [-1, 1] over the outer `ring` pixels of
    the frame, and over the rest."""
    error = (to_pixels(a) - to_pixels(b)).abs()
    inside = torch.zeros(error.shape[-2:], dtype=torch.bool)
    inside[ring:-ring, ring:-ring] = True
    return error[..., ~inside].mean().item(), error[..., inside].mean().item()


def evaluate(model: Movq, crops: dict[str, torch.Tensor]) -> dict:
    model.eval()
    with torch.inference_mode():
        scores, used, border, interior = {}, set(), [], []
        for name, crop in crops.items():
            recon, codes = reconstruct(model, crop[None])
            scores[name] = round(psnr(recon, crop[None]), 2)
            used.update(codes.unique().tolist())
            errors = border_and_interior_error(recon, crop[None])
            border.append(errors[0])
            interior.append(errors[1])
    model.train()
    return {
        "psnr": scores,
        "codes_used_on_held_out": len(used),
        "border_mae": round(sum(border) / len(border), 2),  # the outer 2-pixel ring of the frame
        "interior_mae": round(sum(interior) / len(interior), 2),
    }


def warm_cosine(step: int, warmup: int, steps: int) -> float:
    """The learning rate's factor: a linear warm-up, then a cosine down to 5%."""
    return min(1.0, (step + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))


def pretrain(args: argparse.Namespace, photos: list[torch.Tensor], crops: dict[str, torch.Tensor]) -> Movq:
    """Stage 1: encoder, codebook and decoder from scratch, on 64x64 crops."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = Movq(CONFIG).train()
    params = [p for name, p in model.named_parameters() if not name.startswith("quantize.")]
    model.quantize.embedding.weight.requires_grad_(False)
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    warmup = max(1, min(200, args.steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warm_cosine(step, warmup, args.steps))
    codebook = EmaCodebook(model.quantize.embedding.weight)
    print(f"{len(photos)} training photos; {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")

    started, restarted = time.time(), 0
    for step in range(1, args.steps + 1):
        images = random_batch(photos, args.batch, args.crop, generator)
        latents = model.encode(images)
        rows = model.quantize.nearest(latents.detach())
        quantized = model.quantize.embedding.weight[rows].permute(0, 3, 1, 2)
        straight_through = latents + (quantized - latents).detach()
        recon = model(straight_through)
        commitment = F.mse_loss(latents, quantized)
        loss = F.l1_loss(recon, images) + F.mse_loss(recon, images) + 0.25 * commitment
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        codebook.update(latents.detach(), rows)
        if step % 100 == 0 and step <= args.steps * 0.8:
            restarted = codebook.restart_dead(latents.detach(), generator)
        if step % 250 == 0 or step == args.steps:
            report = evaluate(model, crops)
            minutes = round((time.time() - started) / 60, 1)
            report.update(stage=1, step=step, loss=round(loss.item(), 4), minutes=minutes, restarted=restarted)
            print(json.dumps(report), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            weights.save(model, args.out)
    print(f"stage 1: wrote {args.out} in {(time.time() - started) / 60:.1f} min", flush=True)
    return model


def finetune(model: Movq, args: argparse.Namespace, photos: list[torch.Tensor], crops: dict[str, torch.Tensor]) -> Movq:
    """Stage 2: the decoder alone, on crops of FINETUNE_SIZES, so that it draws frame edges right at the
    sizes it is used at. The encoder and the codebook stay as they are, so codes do not change."""
    torch.manual_seed(1)
    generator = torch.Generator().manual_seed(1)
    model.train().requires_grad_(False)
    params = [p for name, p in model.named_parameters() if name.startswith(("decoder.", "post_quant_conv."))]
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=args.finetune_lr, betas=(0.9, 0.99), weight_decay=0.0)
    warmup = max(1, args.finetune_steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warm_cosine(step, warmup, args.finetune_steps))
    print(json.dumps({"stage": 2, "step": 0, **evaluate(model, crops)}), flush=True)
    started = time.time()
    for step in range(1, args.finetune_steps + 1):
        crop = FINETUNE_SIZES[torch.randint(len(FINETUNE_SIZES), (), generator=generator).item()]
        images = random_batch(photos, max(1, round(FINETUNE_PIXELS / crop**2)), crop, generator)
        with torch.no_grad():
            codes = model.quantize.nearest(model.encode(images))
        recon = model.decode_codes(codes)
        loss = F.l1_loss(recon, images) + F.mse_loss(recon, images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == args.finetune_steps:
            report = evaluate(model, crops)
            minutes = round((time.time() - started) / 60, 1)
            report.update(stage=2, step=step, loss=round(loss.item(), 4), minutes=minutes)
            print(json.dumps(report), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            weights.save(model, args.out)
    print(f"stage 2: wrote {args.out} in {(time.time() - started) / 60:.1f} min", flush=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--finetune-from", type=Path, help="skip stage 1: fine-tune these weights (stage 1's output)")
    parser.add_argument("--finetune-steps", type=int, default=FINETUNE_STEPS, help="0 skips stage 2")
    parser.add_argument("--finetune-lr", type=float, default=FINETUNE_LR)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    started = time.time()
    photos = training_photos()
    crops = held_out_crops()
    if args.finetune_from is None:
        model = pretrain(args, photos, crops)
    else:
        model = weights.load(args.finetune_from, encoder=True)
    if args.finetune_steps > 0:
        model = finetune(model, args, photos, crops)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) in {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
