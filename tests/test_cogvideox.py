"""The CogVideoX decoder against diffusers' AutoencoderKLCogVideoX, built small and random."""

from __future__ import annotations

import copy
import gc
import math
import re
import weakref

import pytest
import torch
from conftest import make_cogvideox_vae

from movq_cli.checkpoints import cogvideox as checkpoint
from movq_cli.checkpoints.building import build
from movq_cli.errors import InputError
from movq_cli.models.cogvideox import CausalConv3d, CogVideoX, use_fast_paths
from movq_cli.models.config import COGVIDEOX_PRESETS as PRESETS
from movq_cli.models.config import CogVideoXConfig
from movq_cli.models.config import cogvideox_preset as preset

# Three levels, both upsamplers doubling time: the chunk and first-frame rules at a small cost.
SMALL = dict(block_out_channels=(16, 16, 32), layers_per_block=1, norm_num_groups=8, temporal_compression_ratio=4)
# The released 2b/5b structure (4 up blocks, 3 + 1 resnets each, time doubled twice) at small width.
REAL = dict(block_out_channels=(32, 32, 32, 64), layers_per_block=3, norm_num_groups=8, temporal_compression_ratio=4)


def built(structure: dict, seed: int = 0):
    """A random diffusers VAE of `structure`, and movq's decoder holding its weights."""
    vae = make_cogvideox_vae(seed=seed, **structure)
    return vae, build(CogVideoXConfig(**structure), checkpoint.diffusers_to_native(vae.state_dict()))


@pytest.fixture(scope="module")
def small():
    return built(SMALL)


@pytest.fixture(scope="module")
def real():
    return built(REAL, seed=1)


def reference(vae, latents: torch.Tensor) -> torch.Tensor:
    vae.disable_tiling()
    with torch.no_grad():
        return vae.decode(latents).sample


def stream(model: CogVideoX, latents: torch.Tensor, tile: tuple[int, int] | None = None) -> torch.Tensor:
    chunks = torch.split(latents, model.schedule(latents.shape[2]), dim=2)
    return torch.cat(list(model.decode_stream(chunks, tile=tile)), dim=2)


def latents(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 16, frames, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("frames", "height", "width"), [(1, 4, 6), (2, 4, 6), (3, 4, 6), (4, 4, 6), (5, 4, 6), (3, 6, 10)]
)
def test_streamed_chunks_equal_diffusers_decode(small, frames, height, width):
    vae, model = small
    z = latents(frames, height, width, seed=frames)
    expected = reference(vae, z)
    got = stream(model, z)
    assert got.shape == expected.shape == (1, 3, model.output_frames(frames), 4 * height, 4 * width)
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("frames", [3, 4])
def test_released_structure_at_small_width_equals_diffusers(real, frames):
    vae, model = real
    z = latents(frames, 4, 6, seed=10 + frames)
    expected = reference(vae, z)
    got = stream(model, z)
    assert got.shape == expected.shape == (1, 3, model.output_frames(frames), 32, 48)
    assert (got - expected).abs().max().item() <= 1e-4


def test_fast_paths_equal_the_plain_path_which_equals_diffusers_exactly(small):
    vae, model = small
    plain = copy.deepcopy(model)
    use_fast_paths(plain, False)
    z = latents(5, 4, 6, seed=7)
    expected = stream(plain, z)
    assert torch.equal(expected, reference(vae, z))  # the plain path computes diffusers' way, op for op
    assert (stream(model, z) - expected).abs().max().item() <= 1e-4


def test_bfloat16_stays_close_to_float32(small):
    vae, model = small
    state = {name: t.to(torch.bfloat16) for name, t in checkpoint.diffusers_to_native(vae.state_dict()).items()}
    half = build(CogVideoXConfig(**SMALL), state)
    z = latents(3, 4, 6, seed=3)
    got, expected = stream(half, z.to(torch.bfloat16)), stream(model, z)
    assert got.dtype == torch.bfloat16
    mse = (got.float() - expected).pow(2).mean().item()
    assert 10 * math.log10(4 / mse) >= 35  # PSNR over the [-1, 1] range


@pytest.mark.parametrize(
    ("frames", "chunks", "output"),
    [(1, [1], 1), (2, [2], 8), (3, [3], 9), (4, [2, 2], 16), (5, [3, 2], 17), (13, [3, 2, 2, 2, 2, 2], 49)],
)
def test_schedule_and_frame_count_follow_diffusers(frames, chunks, output):
    with torch.device("meta"):  # schedule and frame counts need only the structure
        model = CogVideoX(preset("cogvideox-2b"))
    assert CogVideoX.schedule(frames) == chunks
    assert model.output_frames(frames) == output


def test_schedule_refuses_an_empty_video():
    with pytest.raises(ValueError, match="at least one frame"):
        CogVideoX.schedule(0)


def test_stream_cache_stays_the_same_size_however_long_the_video(small):
    _, model = small
    z = latents(13, 2, 4)
    cache: dict = {}
    sizes = []
    for chunk in torch.split(z, model.schedule(13), dim=2):
        model.decode_chunk(chunk, cache)
        sizes.append(sum(t.numel() * t.element_size() for t in cache.values()))
    causal = [m for m in model.modules() if isinstance(m, CausalConv3d) and m.context > 0]
    assert len(cache) == len(causal)
    assert all(t.shape[2] == 2 for t in cache.values())
    assert sizes[1] == sizes[5] > 0


def test_the_stream_keeps_no_decoded_frames(small):
    _, model = small
    z = latents(5, 4, 6)
    frames = model.decode_stream(torch.split(z, model.schedule(5), dim=2))
    first = weakref.ref(next(frames))
    gc.collect()
    assert first() is None
    assert next(frames).shape[2] == 8


def test_one_model_serves_two_interleaved_streams(small):
    _, model = small
    a, b = latents(5, 2, 4, seed=1), latents(5, 2, 4, seed=2)
    alone_a, alone_b = stream(model, a), stream(model, b)
    streams = [model.decode_stream(torch.split(z, model.schedule(5), dim=2)) for z in (a, b)]
    first_a, first_b = next(streams[0]), next(streams[1])
    second_a, second_b = next(streams[0]), next(streams[1])
    assert torch.equal(torch.cat([first_a, second_a], dim=2), alone_a)
    assert torch.equal(torch.cat([first_b, second_b], dim=2), alone_b)


def test_unscale_divides_by_scaling_factor_for_every_preset():
    z = torch.ones(1, 16, 1, 2, 2)
    for name in PRESETS:
        with torch.device("meta"):
            model = CogVideoX(preset(name))
        assert torch.allclose(model.unscale(z), z / model.config.scaling_factor)


def test_config_round_trips_through_json():
    config = CogVideoXConfig(**REAL, scaling_factor=0.7, invert_scale_latents=True)
    assert CogVideoXConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown config keys: ch"):
        CogVideoXConfig.from_dict({"ch": 128})


def test_presets_are_the_released_configs():
    assert preset("cogvideox-2b") == CogVideoXConfig()
    assert preset("cogvideox-5b").scaling_factor == 0.7
    assert preset("cogvideox1.5-5b").invert_scale_latents
    assert preset("cogvideox-5b").factor == 8


def test_config_from_diffusers_config_json(small):
    vae, _ = small
    assert checkpoint.config_from_diffusers(dict(vae.config)) == CogVideoXConfig(**SMALL)
    with pytest.raises(ValueError, match="post_quant_conv"):
        checkpoint.config_from_diffusers({**vae.config, "use_post_quant_conv": True})


def test_config_inferred_from_shapes_equals_the_real_one(real):
    vae, _ = real
    shapes = {name: tuple(t.shape) for name, t in checkpoint.diffusers_to_native(vae.state_dict()).items()}
    # groups and temporal ratio do not show in the tensors: the released values are assumed; the
    # scaling factor, which differs between released models, is left unknown
    expected = CogVideoXConfig(**{**REAL, "norm_num_groups": 32, "scaling_factor": None})
    assert checkpoint.infer_config(shapes) == expected


def test_inferring_names_the_tensor_that_is_off(real):
    vae, _ = real
    shapes = {name: tuple(t.shape) for name, t in checkpoint.diffusers_to_native(vae.state_dict()).items()}
    off = "decoder.up_blocks.1.resnets.2.conv1.conv.weight"
    with pytest.raises(ValueError, match=off.replace(".", r"\.")):
        checkpoint.infer_config({**shapes, off: (32, 48, 3, 3, 3)})
    gone = "decoder.conv_out.conv.weight"
    with pytest.raises(ValueError, match=gone.replace(".", r"\.")):
        checkpoint.infer_config({name: shape for name, shape in shapes.items() if name != gone})


def test_diffusers_state_loads_without_the_encoder(small):
    vae, _ = small
    state = vae.state_dict()
    assert any(name.startswith("encoder.") for name in state)
    native = checkpoint.diffusers_to_native(state)
    assert native and all(name.startswith("decoder.") for name in native)
    model = build(CogVideoXConfig(**SMALL), native)
    assert set(model.state_dict()) == set(native)
    assert all(p.device.type == "cpu" and not p.requires_grad for p in model.parameters())


def test_a_wrong_shaped_tensor_is_named(small):
    vae, _ = small
    native = checkpoint.diffusers_to_native(vae.state_dict())
    off = "decoder.up_blocks.0.resnets.1.norm2.conv_y.conv.weight"
    native[off] = torch.zeros(32, 8, 1, 1, 1)
    with pytest.raises(InputError, match=off.replace(".", r"\.") + r" \(32, 8, 1, 1, 1\)"):
        build(CogVideoXConfig(**SMALL), native)


def test_telltale_tells_cogvideox_from_2d_movq():
    assert checkpoint.is_cogvideox(["decoder.conv_in.conv.weight", "decoder.up_blocks.0.resnets.0.conv1.conv.weight"])
    assert checkpoint.is_cogvideox(["first_stage_model.decoder.conv_in.conv.weight"])
    assert not checkpoint.is_cogvideox(["decoder.conv_in.weight", "decoder.up_blocks.0.resnets.0.conv1.weight"])


# Names from the module tree of CogVideo's sat/vae_modules/cp_enc_dec.py (ContextParallelDecoder3D),
# for 4 levels, with the diffusers names the same tensors have.
SAT_NAMES = [
    ("decoder.conv_in.conv.weight", "decoder.conv_in.conv.weight"),
    ("decoder.mid.block_1.norm1.norm_layer.weight", "decoder.mid_block.resnets.0.norm1.norm_layer.weight"),
    ("decoder.mid.block_2.conv2.conv.bias", "decoder.mid_block.resnets.1.conv2.conv.bias"),
    ("decoder.up.3.block.0.norm1.conv_y.conv.weight", "decoder.up_blocks.0.resnets.0.norm1.conv_y.conv.weight"),
    ("decoder.up.3.upsample.conv.weight", "decoder.up_blocks.0.upsamplers.0.conv.weight"),
    ("decoder.up.2.block.0.nin_shortcut.weight", "decoder.up_blocks.1.resnets.0.conv_shortcut.weight"),
    ("decoder.up.0.block.3.conv2.conv.weight", "decoder.up_blocks.3.resnets.3.conv2.conv.weight"),
    ("decoder.norm_out.conv_b.conv.bias", "decoder.norm_out.conv_b.conv.bias"),
    ("encoder.down.0.block.0.conv1.conv.weight", None),
    ("loss.logvar", None),
]


def test_sat_names_become_diffusers_names():
    state = {sat: torch.tensor([float(i)]) for i, (sat, _) in enumerate(SAT_NAMES)}
    assert checkpoint.is_sat(list(state))
    assert not checkpoint.is_sat([d for _, d in SAT_NAMES if d])
    native = {name: tensor.item() for name, tensor in checkpoint.sat_to_native(state).items()}
    assert native == {d: float(i) for i, (_, d) in enumerate(SAT_NAMES) if d}


def test_a_sat_state_decodes_like_the_diffusers_one(small):
    vae, model = small
    native = checkpoint.diffusers_to_native(vae.state_dict())
    levels = len(SMALL["block_out_channels"])

    def sat_name(name: str) -> str:  # diffusers -> SAT, written against the table above
        name = re.sub(r"up_blocks\.(\d+)\.", lambda m: f"up.{levels - 1 - int(m.group(1))}.", name)
        name = name.replace("mid_block.resnets.0.", "mid.block_1.").replace("mid_block.resnets.1.", "mid.block_2.")
        return (
            name.replace(".resnets.", ".block.")
            .replace("upsamplers.0.", "upsample.")
            .replace("conv_shortcut", "nin_shortcut")
        )

    sat = {sat_name(name): tensor for name, tensor in native.items()}
    assert checkpoint.sat_to_native(sat).keys() == native.keys()
    loaded = build(CogVideoXConfig(**SMALL), checkpoint.sat_to_native(sat))
    z = latents(3, 4, 6)
    assert torch.equal(stream(loaded, z), stream(model, z))
