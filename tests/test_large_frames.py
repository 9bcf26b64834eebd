"""Large frames: attention in query blocks, exact 2D tiling, and memory estimates that hold."""

from __future__ import annotations

from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, movq

import movq_cli
import movq_cli.memory
from movq_cli.checkpoints.building import build
from movq_cli.errors import InputError, as_flags
from movq_cli.io import codes as codes_io
from movq_cli.models import attention as attention_module
from movq_cli.models import footprint
from movq_cli.models.attention import attention, blocked_attention, builds_matrix
from movq_cli.models.config import MovqConfig, preset
from movq_cli.models.family import family_of
from movq_cli.models.movq import Movq

# The Kandinsky layout (four levels, widths 1, 2, 2, 4, attention in the middle and at the
# lowest level), narrow: 16 channels per unit, 8 groups.
KANDINSKY_LIKE = MovqConfig(ch=16, ch_mult=(1, 2, 2, 4), num_res_blocks=1, attn_levels=(3,), norm_groups=8, n_embed=64)


def reference_attention(q, k, v):
    """softmax(q k^T / sqrt(C)) v, written out, in float64."""
    q, k, v = q.double(), k.double(), v.double()
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v


def random_model(config: MovqConfig, seed: int = 0) -> Movq:
    """Random weights with norm affines and biases perturbed, built as a loaded checkpoint is."""
    torch.manual_seed(seed)
    model = Movq(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.2)
    return build(config, model.state_dict())


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_blocked_attention_equals_the_reference(block):
    generator = torch.Generator().manual_seed(block)
    q, k, v = (torch.randn(2, 1, 100, 24, generator=generator) for _ in range(3))
    got = blocked_attention(q, k, v, block)
    assert got.shape == q.shape
    assert (got.double() - reference_attention(q, k, v)).abs().max().item() <= 1e-5


def test_attention_computes_in_blocks_of_queries_where_the_kernel_builds_the_matrix(monkeypatch):
    calls = []
    sdpa = attention_module.F.scaled_dot_product_attention

    def recorded(q, k, v):
        calls.append(q.shape[-2])
        return sdpa(q, k, v)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", recorded)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 300, 32, generator=generator) for _ in range(3))
    strided = q.transpose(-1, -2).contiguous().transpose(-1, -2)  # a head dimension of stride > 1: the math kernel
    got = attention(strided, k, v)
    assert calls == [32] * 9 + [300 - 9 * 32]
    assert (got.double() - reference_attention(q, k, v)).abs().max().item() <= 1e-5


def test_the_cpu_kernel_for_a_kandinsky_head_does_not_build_the_matrix():
    """torch's flash attention for the CPU takes heads of 512 (Kandinsky) and 1024 (Emu3)."""
    for channels in (512, 1024):
        assert not builds_matrix(torch.device("cpu"), torch.float32, channels)


def test_the_estimate_counts_a_block_of_the_matrix_only_where_it_is_built(monkeypatch):
    config = preset("kandinsky-2.2")
    fused = footprint.layer_peaks(config, (64, 64), torch.device("cpu"), torch.float32)
    monkeypatch.setattr(footprint, "builds_matrix", lambda *args: True)
    small = footprint.layer_peaks(config, (64, 64), torch.device("cpu"), torch.float32)
    large = footprint.layer_peaks(config, (128, 128), torch.device("cpu"), torch.float32)
    attention_peak = 6 * 512 * 64 * 64
    assert attention_peak in fused and attention_peak + 2 * 512 * 64 * 64 in small
    assert max(large) == 4 * max(small)  # linear in the frame's area, matrix or not


@pytest.mark.parametrize(
    ("grid", "tile"),
    [
        ((7, 9), (2, 3)),  # odd sizes, ragged edge tiles
        ((3, 4), (1, 1)),  # one latent per tile: every pixel next to a tile border
        ((6, 10), (4, 4)),
        ((5, 6), (5, 6)),  # one tile: the tiled code path on its own
    ],
)
def test_tiled_frames_equal_untiled_ones(grid, tile):
    model = random_model(KANDINSKY_LIKE, seed=grid[0])
    zq = torch.randn(2, 4, *grid, generator=torch.Generator().manual_seed(grid[1]))
    with torch.inference_mode():
        whole = model(zq)
        tiled = model.decode_tiled(zq, tile)
    assert tiled.shape == whole.shape == (2, 3, 8 * grid[0], 8 * grid[1])
    assert (tiled - whole).abs().max().item() <= 1e-4


def test_tiling_takes_the_optional_zq_convolution():
    config = MovqConfig(
        ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), norm_groups=8, n_embed=64, add_conv=True
    )
    model = random_model(config, seed=5)
    zq = torch.randn(1, 4, 5, 7, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        assert (model.decode_tiled(zq, (2, 2)) - model(zq)).abs().max().item() <= 1e-4


def test_the_cli_decodes_2d_frames_in_tiles_to_the_same_pixels(small_folder, tmp_path):
    codes = np.random.default_rng(0).integers(0, 64, (2, 9, 11))
    np.save(tmp_path / "codes.npy", codes)
    whole = movq("decode", tmp_path / "codes.npy", tmp_path / "whole/", "-w", small_folder[0], "-q")
    tiled = movq("decode", tmp_path / "codes.npy", tmp_path / "tiled/", "-w", small_folder[0], "-q", "--tile", "12x20")
    assert whole.exit_code == 0 and tiled.exit_code == 0, tiled.output
    for name in ("00000.png", "00001.png"):
        whole_pixels, tiled_pixels = (iio.imread(tmp_path / side / name).astype(int) for side in ("whole", "tiled"))
        assert np.abs(whole_pixels - tiled_pixels).max() <= 1


def test_a_frame_too_large_whole_decodes_in_tiles_under_the_limit(tmp_path, monkeypatch):
    model = movq_cli.load("default")
    family = family_of(model)
    grid = (48, 48)
    codes = np.random.default_rng(1).integers(0, 1024, (1, *grid))
    np.save(tmp_path / "codes.npy", codes)
    whole = movq_cli.decode(tmp_path / "codes.npy", tmp_path / "whole.png", model)
    clip = codes_io.read(tmp_path / "codes.npy")
    weights = sum(parameter.nbytes for parameter in model.parameters())
    untiled = footprint.call_bytes(footprint.frame_bytes(model.config, grid, torch.float32), weights)
    tiled, _ = family.tiled_bytes(grid, (16, 16))  # on the CPU the tile and the layers share one memory
    assert tiled < untiled
    limit = (tiled + untiled) // 2
    monkeypatch.setattr(movq_cli.memory, "device_memory", lambda device: limit)
    with pytest.raises(InputError, match="a frame of 48x48 codes needs about") as refused:
        family.check_memory(clip)
    assert "tile=" in refused.value.hint and "in host memory" in refused.value.hint  # the CLI says --tile
    assert as_flags(refused.value.hint).startswith("--tile ")
    movq_cli.decode(tmp_path / "codes.npy", tmp_path / "tiled.png", model, tile=64)
    assert whole.frame_size == (192, 192)
    whole_pixels, tiled_pixels = (iio.imread(tmp_path / f"{side}.png").astype(int) for side in ("whole", "tiled"))
    assert np.abs(whole_pixels - tiled_pixels).max() <= 1


def test_the_refusal_names_the_host_memory_tiles_would_need(small_folder, tmp_path):
    path = tmp_path / "huge.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=(1, 20_000, 20_000))  # sparse
    result = movq("decode", path, tmp_path / "out.png", "-w", small_folder[0])
    assert_one_line_error(result, 2, "decoded in tiles it still needs about")
    tiled = movq("decode", path, tmp_path / "out.png", "-w", small_folder[0], "--tile", "64")
    assert_one_line_error(tiled, 2, "in tiles of 64x64 pixels needs about")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.npy"]


def test_the_bundled_model_takes_a_384x384_grid_on_an_8_gib_machine(tmp_path, monkeypatch):
    """Once refused as needing 82.1 GiB: its attention matrix was counted, which the kernel never builds."""
    np.lib.format.open_memmap(tmp_path / "codes.npy", mode="w+", dtype=np.int64, shape=(1, 384, 384))
    monkeypatch.setattr(movq_cli.memory, "device_memory", lambda device: 8 << 30)
    family_of(movq_cli.load("default")).check_memory(codes_io.read(tmp_path / "codes.npy"))


@pytest.mark.slow
def test_the_bundled_model_decodes_a_frame_whose_attention_matrix_would_not_fit(tmp_path, monkeypatch):
    """A 192x192 grid: its matrix alone would take 5 GiB; under a 4 GiB limit the frame decodes."""
    np.save(tmp_path / "codes.npy", np.random.default_rng(2).integers(0, 1024, (1, 192, 192)))
    monkeypatch.setattr(movq_cli.memory, "device_memory", lambda device: 4 << 30)
    result = movq_cli.decode(tmp_path / "codes.npy", tmp_path / "frame.png", movq_cli.load("default"))
    assert result.frame_size == (768, 768) and (tmp_path / "frame.png").stat().st_size > 0


def test_a_small_frames_estimate_counts_what_the_allocators_heap_keeps():
    """The bundled model at 256x256 (64x64 codes): 34 MiB of live activations, but peaks of 46
    to 95 MiB of resident memory from run to run, freed blocks staying in glibc's heap
    (benchmarks/results-large-frames-cpu-epyc-2026-12-06.txt): the estimate covers the highest."""
    model = movq_cli.load("default")
    weights = sum(parameter.nbytes for parameter in model.parameters())
    estimate = footprint.call_bytes(footprint.frame_bytes(model.config, (64, 64), torch.float32), weights)
    assert footprint.call_bytes(0, 0) == footprint.OVERHEAD + footprint.HEAP
    assert estimate >= 95 << 20


def test_a_cogvideox_clip_of_one_chunk_is_estimated_without_a_causal_past(monkeypatch):
    from movq_cli.models.cogvideox import CogVideoX
    from movq_cli.models.config import CogVideoXConfig

    config = CogVideoXConfig(block_out_channels=(16, 16, 32), layers_per_block=1, norm_num_groups=8)
    with torch.device("meta"):
        family = family_of(CogVideoX(config))
    asked = []
    monkeypatch.setattr(movq_cli.models.family, "check_fits_in_memory", lambda size, *_: asked.append(size))
    for frames in (3, 5):
        clip = SimpleNamespace(n_frames=frames, grid=(30, 45), is_latents=True)
        family.check_memory(clip)
    one_chunk, two_chunks = asked
    assert one_chunk == footprint.chunk_bytes(config, (30, 45), 3, torch.float32, keeps=False)
    assert two_chunks == footprint.chunk_bytes(config, (30, 45), 3, torch.float32, keeps=True) > one_chunk
