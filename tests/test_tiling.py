"""Exact spatial tiling of CogVideoX chunks: tiled frames equal untiled ones and diffusers' untiled decode."""

from __future__ import annotations

import weakref

import pytest
import torch
from test_cogvideox import REAL, SMALL, built, latents, reference, stream
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from movq_cli.checkpoints import cogvideox as checkpoint
from movq_cli.checkpoints.building import build
from movq_cli.models.config import CogVideoXConfig


@pytest.fixture(scope="module")
def small():
    return built(SMALL, seed=3)


@pytest.mark.parametrize(
    ("frames", "height", "width", "tile"),
    [
        (1, 4, 6, (2, 2)),  # one latent frame: the single-frame norms
        (3, 5, 7, (2, 3)),  # odd F, ragged edge tiles
        (4, 6, 4, (1, 1)),  # even F, one latent per tile: every pixel next to a tile border
        (5, 4, 6, (4, 6)),  # one tile: the tiled code path on its own
    ],
)
def test_tiled_equals_untiled_and_diffusers(small, frames, height, width, tile):
    vae, model = small
    z = latents(frames, height, width, seed=20 + frames)
    expected = reference(vae, z)
    untiled = stream(model, z)
    got = stream(model, z, tile)
    assert got.shape == untiled.shape == expected.shape
    assert (got - untiled).abs().max().item() <= 1e-4
    assert (got - expected).abs().max().item() <= 1e-4


def test_tiled_released_structure_equals_diffusers():
    vae, model = built(REAL, seed=4)
    z = latents(3, 4, 6, seed=30)
    assert (stream(model, z, (2, 3)) - reference(vae, z)).abs().max().item() <= 1e-4


def test_tiling_carries_the_causal_cache_in_host_memory(small):
    _, model = small
    z = latents(5, 4, 6, seed=5)
    cache = {}
    for chunk in torch.split(z, model.schedule(5), dim=2):
        model.decode_chunk_tiled(chunk, cache, (2, 2))
    # two past frames per 3x3x3 convolution, whole frames, however the chunk was tiled
    assert cache and all(t.shape[2] == 2 and t.device.type == "cpu" for t in cache.values())
    assert {t.shape[-2:] for t in cache.values()} == {(4, 6), (8, 12), (16, 24)}


def test_group_statistics_combine_exactly_across_uneven_tiles(small):
    """Tiles of different sizes weigh in by their pixel counts: 3x5, 3x1, 1x5 and 1x1 latents."""
    vae, model = small
    z = latents(2, 4, 6, seed=9)
    assert (stream(model, z, (3, 5)) - reference(vae, z)).abs().max().item() <= 1e-4


def test_tiled_bfloat16_stays_close_to_float32(small):
    import math

    vae, model = small
    state = {name: t.to(torch.bfloat16) for name, t in checkpoint.diffusers_to_native(vae.state_dict()).items()}
    half = build(CogVideoXConfig(**SMALL), state)
    z = latents(3, 6, 8, seed=11)
    got = stream(half, z.to(torch.bfloat16), (3, 3))
    assert got.dtype == torch.bfloat16
    mse = (got.float() - stream(model, z)).pow(2).mean().item()
    assert 10 * math.log10(4 / mse) >= 35  # PSNR over the [-1, 1] range, as untiled bf16 is held to


class StorageCounter(TorchDispatchMode):
    """The peak bytes of host tensor storage that the operators run under it create and keep alive."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.level = self.peak = 0

    def _freed(self, address: int) -> None:
        self.level -= self.live.pop(address)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                storage = tensor.untyped_storage()
                address = storage.data_ptr()
                if address and address not in self.live:
                    self.live[address] = storage.nbytes()
                    self.level += storage.nbytes()
                    self.peak = max(self.peak, self.level)
                    weakref.finalize(storage, self._freed, address)
        return out


def peak_bytes(model, z, tile=None) -> tuple[int, torch.Tensor]:
    with StorageCounter() as counter:
        frames = stream(model, z, tile)
    return counter.peak, frames


@pytest.mark.slow
def test_tiled_chunk_holds_a_layer_input_and_output_at_most(small):
    """The largest activation (16 channels, 9 frames of 64x96) is A: the old store held a layer's
    input, output and a ResBlock's input, and two past frames of each convolution (4.6 A); the
    bands of each input are freed as the output is written, a ResBlock without a shortcut
    convolution adds to its input in place, and the last chunk keeps no past (2.2 A)."""
    _, model = small
    z = latents(3, 16, 24, seed=1)
    largest = 16 * 9 * 64 * 96 * 4
    peak, tiled = peak_bytes(model, z, (4, 4))
    assert peak <= 2.5 * largest
    assert (tiled - stream(model, z)).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_the_last_chunk_keeps_no_causal_past(small):
    """Untiled, the last chunk's copies of two frames per convolution are not made (6.4 A before, 5.1 A now)."""
    _, model = small
    peak, _ = peak_bytes(model, latents(3, 16, 24, seed=1))
    assert peak <= 5.5 * 16 * 9 * 64 * 96 * 4


def test_tiles_are_normalized_by_the_norms_own_scale_and_shift(small, monkeypatch):
    """Tiling folds its gathered statistics into SpatialNorm3D.scale_shift, as the whole-chunk
    path does: a change there reaches both paths alike."""
    from movq_cli.models.cogvideox import SpatialNorm3D

    _, model = small
    z = latents(3, 4, 6, seed=12)
    before = stream(model, z, (2, 3))
    scale_shift = SpatialNorm3D.scale_shift

    def shifted(self, *args, **kwargs):
        scale, shift = scale_shift(self, *args, **kwargs)
        return scale, shift + 0.5

    monkeypatch.setattr(SpatialNorm3D, "scale_shift", shifted)
    untiled, tiled = stream(model, z), stream(model, z, (2, 3))
    assert (tiled - before).abs().max().item() > 0.1
    assert (tiled - untiled).abs().max().item() <= 1e-4


def test_tiles_take_their_causal_past_from_the_convolutions_own_cache_code(small, monkeypatch):
    from movq_cli.models.cogvideox import CausalConv3d

    _, model = small
    z = latents(5, 4, 6, seed=13)
    past = CausalConv3d.past
    monkeypatch.setattr(CausalConv3d, "past", lambda self, *args, **kwargs: past(self, *args, **kwargs) * 0)
    untiled, tiled = stream(model, z), stream(model, z, (2, 2))
    assert (tiled - untiled).abs().max().item() <= 1e-4
    monkeypatch.undo()
    assert (stream(model, z, (2, 2)) - tiled).abs().max().item() > 0.01


@pytest.mark.parametrize(("structure", "frames"), [("small", 1), ("small", 3), ("small", 5), ("real", 4)])
def test_the_chunk_estimate_covers_the_tensors_a_chunk_holds(small, structure, frames):
    """footprint.chunk_bytes before its fixed terms: never below the peak of tensor storage,
    at most 1.5x above it, with and without the causal past kept for a next chunk."""
    from movq_cli.models import footprint

    config = CogVideoXConfig(**(SMALL if structure == "small" else REAL))
    _, model = small if structure == "small" else built(REAL, seed=1)
    peak, _ = peak_bytes(model, latents(frames, 16, 24, seed=1))
    schedule = model.schedule(frames)
    peaks = [max(footprint.chunk_peaks(config, (16, 24), t, keeps=len(schedule) > 1)) for t in schedule]
    estimate = footprint.MARGIN * max(peaks) * 4
    assert peak <= estimate <= 1.5 * peak


@pytest.mark.slow
def test_a_tile_is_normalized_in_place_in_its_convolutions_padded_input(small):
    """One tile as large as the frame shows what a tile holds beyond the bands: its padded input,
    normalized there in place, the convolution's output and the shortcut's (4.3 A); a tile that
    made the norm's output, its scale, shift and products apart, and joined the past to it, held 7.3 A."""
    _, model = small
    z = latents(3, 16, 24, seed=1)
    peak, tiled = peak_bytes(model, z, (16, 24))
    assert peak <= 4.6 * 16 * 9 * 64 * 96 * 4
    assert (tiled - stream(model, z)).abs().max().item() <= 1e-4
