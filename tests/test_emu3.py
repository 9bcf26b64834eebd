"""The Emu3 vision tokenizer's decoder against transformers' Emu3VQVAE, built random: at small
width with the released structure, and at the released width on tiny grids."""

from __future__ import annotations

import math
from itertools import chain
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import Emu3Config as Emu3LanguageModelConfig
from transformers import Emu3ImageProcessor, Emu3VQVAE, Emu3VQVAEConfig

from movq_cli.checkpoints import emu3 as checkpoint
from movq_cli.checkpoints.building import build
from movq_cli.errors import InputError
from movq_cli.models.cogvideox import CogVideoX
from movq_cli.models.config import EMU3_PRESETS, CogVideoXConfig, Emu3Config, emu3_preset
from movq_cli.models.emu3 import Emu3

ROOT = Path(__file__).resolve().parents[1]
# The released structure (4 levels, 2 temporal blocks, 3 ResBlocks a level, attention at the
# lowest level, time x4) at an eighth of its width.
SMALL = dict(base_channels=32, hidden_size=128, codebook_size=64)
# The released decoder, width and all.
RELEASED: dict = {}


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter and buffer random, at scales that keep activations near 1: kernels by
    1/sqrt(fan in), norm scales near 1, shifts, biases and BatchNorm statistics away from 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in chain(model.named_parameters(), model.named_buffers()):
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif name.startswith("quantize."):
                tensor.copy_(noise)
            elif tensor.ndim >= 2:
                tensor.copy_(noise / math.sqrt(tensor[0].numel()))
            elif name.endswith(".weight"):  # GroupNorm and BatchNorm scales
                tensor.copy_(1 + 0.1 * noise)
            else:
                tensor.copy_(0.1 * noise)


def reference_model(structure: dict, seed: int, encoder: bool = True) -> Emu3VQVAE:
    """A random transformers Emu3VQVAE; without `encoder`, only what decoding uses is made."""
    config = Emu3VQVAEConfig(**structure)
    if encoder:
        model = Emu3VQVAE(config)
    else:
        with torch.device("meta"):
            model = Emu3VQVAE(config)
        model.encoder = model.quant_conv = None
        model.to_empty(device="cpu")
    randomize(model, seed)
    return model.eval()


def built(structure: dict, seed: int, encoder: bool = True) -> tuple[Emu3VQVAE, Emu3]:
    reference = reference_model(structure, seed, encoder)
    state = checkpoint.transformers_to_native(reference.state_dict())
    return reference, build(checkpoint.infer_config(_shapes(state)), state)


def _shapes(state: dict) -> dict:
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


@pytest.fixture(scope="module")
def small():
    return built(SMALL, seed=0)


@pytest.fixture(scope="module")
def released():
    return built(RELEASED, seed=1, encoder=False)


def codes(shape: tuple[int, ...], n_codes: int, seed: int) -> torch.Tensor:
    return torch.randint(0, n_codes, shape, generator=torch.Generator().manual_seed(seed))


def expected(reference: Emu3VQVAE, codes: torch.Tensor) -> torch.Tensor:
    """transformers' decode, as movq lays frames out: (B, 3, T, H, W) for a clip, (n, 3, H, W) for images."""
    with torch.no_grad():
        out = reference.decode(codes)
    return out if codes.ndim == 3 else out.transpose(1, 2)


def streamed(model: Emu3, clip: torch.Tensor, chunk: int, independent: bool = False, per_call: int = 1) -> torch.Tensor:
    """A clip (1, T, h, w) decoded chunk by chunk, the chunks' frames joined: (1, 3, 4T, H, W)."""
    chunks = torch.split(clip, model.schedule(clip.shape[1], chunk), dim=1)
    return torch.cat(list(model.decode_stream(chunks, independent=independent, per_call=per_call)), dim=2)


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize("grid", [(2, 2), (2, 3), (3, 1)])
def test_images_equal_transformers_decode(small, grid):
    reference, model = small
    images = codes((2, *grid), 64, seed=sum(grid))
    want = expected(reference, images)
    got = model.decode_image(images)
    assert got.shape == (2, 3, 8 * grid[0], 8 * grid[1])
    assert max_difference(got, want) <= 1e-4
    assert want.abs().mean() > 0.05  # a picture, not the near-zero output of a dead network


@pytest.mark.parametrize("frames", [1, 2, 5])
def test_clips_streamed_in_chunks_equal_transformers_decode_of_the_whole(small, frames):
    reference, model = small
    clip = codes((1, frames, 2, 3), 64, seed=frames)
    want = expected(reference, clip)
    assert want.shape == (1, 3, model.output_frames(frames), 16, 24)
    for chunk in sorted({1, 2, frames}):
        # the 2D decoder one frame a call (the default) once; a latent frame's 4 a call elsewhere, to save time
        per_call = 1 if (frames, chunk) == (2, 1) else 4
        assert max_difference(streamed(model, clip, chunk, per_call=per_call), want) <= 1e-4, chunk


def test_independent_clips_equal_transformers_decode_of_each_latent_frame(small):
    reference, model = small
    clip = codes((1, 3, 3, 2), 64, seed=5)
    want = expected(reference, clip.transpose(0, 1))  # 3 clips of one latent frame: (3, 3, 4, H, W)
    want = want.transpose(0, 1).flatten(1, 2)[None]  # one after the other: (1, 3, 12, H, W)
    for chunk in (1, 2):
        assert max_difference(streamed(model, clip, chunk, independent=True, per_call=4), want) <= 1e-4
    # and the joint decode is another video after the first latent frame
    joint = streamed(model, clip, 3, per_call=12)
    assert max_difference(joint[:, :, :4], want[:, :, :4]) <= 1e-4
    assert max_difference(joint[:, :, 4:], want[:, :, 4:]) > 1e-2


@pytest.mark.slow
def test_released_width_equals_transformers_decode(released):
    reference, model = released
    assert model.config == emu3_preset("emu3")
    image = codes((1, 2, 2), 32768, seed=7)
    assert max_difference(model.decode_image(image), expected(reference, image)) <= 1e-4
    clip = codes((1, 2, 2, 2), 32768, seed=8)
    # one 2D call a chunk: at this width and size a call costs what its weights cost, not its pixels
    assert max_difference(streamed(model, clip, 1, per_call=4), expected(reference, clip)) <= 1e-4


def test_the_stream_decodes_each_chunk_as_it_arrives(small):
    _, model = small
    clip = codes((1, 3, 1, 1), 64, seed=10)
    taken = []

    def chunks():
        for frame in range(3):
            taken.append(frame)
            yield clip[:, frame : frame + 1]

    stream = model.decode_stream(chunks())
    assert next(stream).shape == (1, 3, 4, 8, 8) and taken == [0]
    assert next(stream).shape == (1, 3, 4, 8, 8) and taken == [0, 1]


def test_batchnorm_uses_its_running_statistics_in_training_mode_too(small):
    _, model = small
    clip = codes((1, 1, 2, 2), 64, seed=9)
    evaluated = streamed(model, clip, 1, per_call=4)
    model.train()
    try:
        assert max_difference(streamed(model, clip, 1, per_call=4), evaluated) == 0
    finally:
        model.eval()


def test_pixels_are_the_image_processors_truncated_to_uint8(small):
    _, model = small
    processor = Emu3ImageProcessor(image_mean=0.5, image_std=0.5)  # Emu3's preprocessor_config.json
    images = model.decode_image(codes((2, 2, 3), 64, seed=11))
    images = (images - images.min()) / (images.max() - images.min()) * 2.4 - 1.2  # beyond [-1, 1] both ways
    want = processor.postprocess(list(images), return_tensors="np")["pixel_values"].reshape(images.shape)
    got = Emu3.to_pixels(images)
    assert got.dtype == torch.uint8 and got.shape == (2, 16, 24, 3)
    np.testing.assert_array_equal(got.numpy(), want.transpose(0, 2, 3, 1))
    assert {0, 255} <= set(np.unique(want).tolist())  # clipping was exercised
    # truncation, not rounding: 254.9 -> 254, 0.6 -> 0
    edges = torch.tensor([254.9, 0.6, 127.5]) / 255 * 2 - 1
    assert Emu3.to_pixels(edges.view(1, 3, 1, 1)).flatten().tolist() == [254, 0, 127]


def test_a_saved_transformers_model_loads_and_decodes_alike(small, tmp_path):
    reference, _ = small
    reference.save_pretrained(tmp_path)
    config = checkpoint.config_from_json(reference.config.to_dict())
    state = checkpoint.to_native(load_file(tmp_path / "model.safetensors"))[1]
    model = build(config, state, source=tmp_path)
    clip = codes((1, 2, 3, 2), 64, seed=12)
    assert max_difference(streamed(model, clip, 1, per_call=4), expected(reference, clip)) <= 1e-4


@pytest.mark.parametrize("prefix", ["vqmodel.", "model.vqmodel."])
def test_the_vision_tokenizer_inside_an_emu3_language_model_loads(small, prefix):
    reference, _ = small
    state = {prefix + name: tensor for name, tensor in reference.state_dict().items()}
    state["model.text_model.embed_tokens.weight"] = torch.zeros(8, 4)
    state["lm_head.weight"] = torch.zeros(8, 4)
    assert checkpoint.is_emu3(list(state))
    lm_config = Emu3LanguageModelConfig(vq_config=reference.config.to_dict()).to_dict()
    model = build(checkpoint.config_from_json(lm_config), checkpoint.to_native(state)[1])
    image = codes((1, 2, 2), 64, seed=13)
    assert max_difference(model.decode_image(image), expected(reference, image)) <= 1e-4


# Names from BAAI's Emu3VisionVQModel module tree (emu3/tokenizer/modeling_emu3visionvq.py)
BAAI_NAMES = [
    "quantize.embedding.weight",
    "post_quant_conv.conv.weight",
    "decoder.time_res_stack.1.norm2.running_var",
    "decoder.time_res_stack.0.norm1.num_batches_tracked",
    "decoder.time_res_stack.0.conv1.conv.weight",
    "decoder.time_conv.1.conv.conv.bias",
    "decoder.conv_in.weight",
    "decoder.mid.block_1.norm1.conv_y.weight",
    "decoder.mid.attn_1.norm.norm_layer.weight",
    "decoder.mid.attn_1.q.weight",
    "decoder.mid.attn_1.proj_out.bias",
    "decoder.up.3.attn.2.norm.conv_b.weight",
    "decoder.up.3.attn.0.k.weight",
    "decoder.up.2.block.0.nin_shortcut.weight",
    "decoder.up.1.upsample.conv.weight",
    "decoder.norm_out.norm_layer.bias",
    "decoder.conv_out.weight",
]


def test_native_names_are_baais_so_its_file_loads_without_its_encoder(small):
    reference, model = small
    state = model.state_dict()
    assert set(BAAI_NAMES) <= set(state)
    assert state["decoder.mid.attn_1.q.weight"].shape == (128, 128, 1, 1)  # BAAI's 1x1 convolutions
    baai = {**state, "encoder.conv_in.weight": torch.zeros(32, 3, 3, 3), "quant_conv.conv.weight": torch.zeros(1)}
    assert checkpoint.is_emu3(list(baai)) and not checkpoint.is_transformers(list(baai))
    loaded = build(model.config, checkpoint.to_native(baai)[1])
    image = codes((1, 3, 2), 64, seed=14)
    assert max_difference(loaded.decode_image(image), expected(reference, image)) <= 1e-4


def test_built_model_owns_its_memory_and_its_batchnorm_statistics(small):
    reference, _ = small
    state = checkpoint.transformers_to_native(reference.state_dict())
    model = build(checkpoint.infer_config(_shapes(state)), state)
    sources = {tensor.untyped_storage().data_ptr() for tensor in state.values()}
    owned = dict(chain(model.named_parameters(), model.named_buffers()))
    assert len(owned) == len(state)
    assert not sources & {tensor.untyped_storage().data_ptr() for tensor in owned.values()}
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        key = f"decoder.time_res_stack.1.norm2.{name}"
        assert torch.equal(owned[key], state[key]), key
    assert owned["decoder.time_res_stack.0.norm1.num_batches_tracked"].item() == 7


def test_weights_that_do_not_fit_the_config_are_named(small):
    _, model = small
    state = dict(model.state_dict())
    del state["decoder.time_conv.1.conv.conv.weight"]
    state["decoder.up.0.block.0.conv1.weight"] = torch.zeros(1, 1, 3, 3)
    with pytest.raises(InputError, match=r"time_conv\.1\.conv\.conv\.weight.*|up\.0\.block\.0\.conv1\.weight"):
        build(model.config, state, source="emu3.safetensors")


def test_is_emu3_claims_neither_the_bundled_2d_model_nor_cogvideox():
    with safe_open(ROOT / "weights" / "movq-default.safetensors", framework="pt") as weights:
        bundled = list(weights.keys())
    assert "decoder.conv_in.weight" in bundled
    with torch.device("meta"):
        cogvideox = list(CogVideoX(CogVideoXConfig()).state_dict())
    for names in (bundled, cogvideox, ["vae." + name for name in cogvideox]):
        assert not checkpoint.is_emu3(names)
    with torch.device("meta"):
        native = list(Emu3(emu3_preset("emu3")).state_dict())
    assert checkpoint.is_emu3(native) and checkpoint.is_emu3(["model.vqmodel." + name for name in native])


BAAI_CONFIG = {  # BAAI/Emu3-VisionTokenizer's config.json
    "architectures": ["Emu3VisionVQModel"],
    "attn_resolutions": [3],
    "auto_map": {"AutoConfig": "configuration_emu3visionvq.Emu3VisionVQConfig"},
    "ch": 256,
    "ch_mult": [1, 2, 2, 4],
    "codebook_size": 32768,
    "double_z": False,
    "dropout": 0.0,
    "embed_dim": 4,
    "in_channels": 3,
    "model_type": "Emu3VisionVQ",
    "num_res_blocks": 2,
    "out_channels": 3,
    "temporal_downsample_factor": 4,
    "torch_dtype": "float32",
    "z_channels": 4,
}


def test_config_from_json_reads_baais_transformers_and_the_language_models():
    released = emu3_preset("emu3")
    assert checkpoint.config_from_json(BAAI_CONFIG) == released
    assert checkpoint.config_from_json(Emu3VQVAEConfig().to_dict()) == released
    assert checkpoint.config_from_json(Emu3LanguageModelConfig().to_dict()) == released
    small = Emu3VQVAEConfig(
        base_channels=64, channel_multiplier=[1, 2, 4], hidden_size=256, num_res_blocks=1, attn_resolutions=[2]
    )
    want = Emu3Config(ch=64, ch_mult=(1, 2, 4), num_res_blocks=1, attn_levels=(2,))
    assert checkpoint.config_from_json(small.to_dict()) == want
    assert checkpoint.config_from_json({**BAAI_CONFIG, "temporal_downsample_factor": 2}).time_doublings == 1


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model_type": "vqgan"}, "model_type is 'vqgan'"),
        ({"_class_name": "VQModel"}, "model_type is None"),
        ({"model_type": "emu3"}, "without a vq_config"),
        ({"model_type": "emu3_vqgan", "num_attention_heads": 2}, "num_attention_heads is 2"),
        ({"model_type": "emu3_vqgan", "hidden_size": 512}, "hidden_size 512"),
        ({**BAAI_CONFIG, "z_channels": 8}, "z_channels 8 must equal embed_dim 4"),
        ({**BAAI_CONFIG, "temporal_downsample_factor": 3}, "temporal_downsample_factor 3"),
    ],
)
def test_config_from_json_refuses_what_is_not_an_emu3_tokenizer(values, message):
    with pytest.raises(ValueError, match=message):
        checkpoint.config_from_json(values)


@pytest.mark.parametrize(
    "config",
    [
        emu3_preset("emu3"),
        Emu3Config(ch=32, codebook_size=64),
        Emu3Config(ch=32, ch_mult=(1, 2, 4), num_res_blocks=1, attn_levels=(1, 2), temporal_downsample_factor=2),
        Emu3Config(ch=64, ch_mult=(1, 1), num_res_blocks=3, attn_levels=(), temporal_downsample_factor=8),
        Emu3Config(ch=32, embed_dim=8, z_channels=8, out_ch=4, temporal_downsample_factor=1),
    ],
)
def test_infer_config_reads_back_the_config_the_tensors_came_from(config):
    with torch.device("meta"):
        shapes = _shapes(Emu3(config).state_dict())
    assert checkpoint.infer_config(shapes) == config


def test_infer_config_names_the_tensor_that_is_missing_or_off():
    with torch.device("meta"):
        shapes = _shapes(Emu3(Emu3Config(ch=32)).state_dict())
    missing = {name: shape for name, shape in shapes.items() if name != "post_quant_conv.conv.weight"}
    with pytest.raises(ValueError, match=r"missing tensor post_quant_conv\.conv\.weight"):
        checkpoint.infer_config(missing)
    short_stack = {name: shape for name, shape in shapes.items() if not name.startswith("decoder.time_res_stack.1.")}
    with pytest.raises(ValueError, match="time_res_stack has 1 blocks"):
        checkpoint.infer_config(short_stack)
    wide_latents = {**shapes, "decoder.conv_in.weight": (128, 8, 3, 3)}
    with pytest.raises(ValueError, match="z_channels 8 must equal embed_dim 4"):
        checkpoint.infer_config(wide_latents)
    odd = {**shapes, "decoder.time_conv.0.conv.conv.weight": (4, 4, 3, 1, 1)}
    with pytest.raises(ValueError, match=r"time_conv\.0\.conv\.conv\.weight \(4, 4, 3, 1, 1\)"):
        checkpoint.infer_config(odd)


def test_config_checks_name_the_knob_at_fault():
    with pytest.raises(ValueError, match="invalid Emu3 config: widths"):
        Emu3Config(ch=20)
    with pytest.raises(ValueError, match="codebook_size must be positive"):
        Emu3Config(codebook_size=0)
    with pytest.raises(KeyError, match="unknown preset 'emu4'"):
        emu3_preset("emu4")
    assert set(EMU3_PRESETS) == {"emu3"}
    assert Emu3Config.from_json(emu3_preset("emu3").to_json()) == emu3_preset("emu3")
    assert emu3_preset("emu3").factor == 8 and emu3_preset("emu3").n_codes == 32768


def test_the_schedule_cuts_any_clip_into_chunks():
    assert Emu3.schedule(5) == [1] * 5
    assert Emu3.schedule(5, 2) == [2, 2, 1]
    assert Emu3.schedule(3, 8) == [3]
    with pytest.raises(ValueError, match="chunk 0"):
        Emu3.schedule(3, 0)


def test_a_stream_decodes_each_latent_frames_four_frames_in_one_call_of_the_2d_decoder(small):
    _, model = small
    batches = []
    hook = model.decoder.register_forward_hook(lambda module, inputs, output: batches.append(len(inputs[0])))
    try:
        frames = torch.cat(list(model.decode_stream(torch.split(codes((1, 3, 2, 2), 64, seed=9), 1, dim=1))), dim=2)
    finally:
        hook.remove()
    assert frames.shape[2] == 12
    assert batches == [4, 4, 4]


def test_larger_frames_go_through_the_2d_decoder_fewer_at_a_time_to_the_same_frames(small):
    from movq_cli.models.emu3 import frames_per_call

    assert [frames_per_call((side, side)) for side in (2, 8, 16, 20, 32, 90)] == [4, 4, 4, 2, 1, 1]
    assert frames_per_call((8, 128)) == 1
    _, model = small
    clip = torch.split(codes((1, 2, 20, 20), 64, seed=10), 1, dim=1)
    batches = []
    hook = model.decoder.register_forward_hook(lambda module, inputs, output: batches.append(len(inputs[0])))
    try:
        frames = torch.cat(list(model.decode_stream(clip)), dim=2)
    finally:
        hook.remove()
    assert batches == [2, 2, 2, 2]
    assert max_difference(frames, torch.cat(list(model.decode_stream(clip, per_call=4)), dim=2)) <= 1e-5
