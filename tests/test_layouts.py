"""Every checkpoint layout loads and decodes like diffusers; configs are inferred from the tensors.

Foreign checkpoints are built from a diffusers VQModel through conftest's mapping (written from
the published names of both layouts), not through the project's converters.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SMALL_CONFIG, RunsCode, diffusers_decode, original_state, write_lightning_ckpt
from safetensors.torch import save_file

from movq_cli.checkpoints import building, reading, weights
from movq_cli.checkpoints.infer import infer_config
from movq_cli.checkpoints.layouts import detect_layout, find_prefix
from movq_cli.errors import InputError
from movq_cli.models.config import MovqConfig, preset
from movq_cli.models.movq import Movq

TOLERANCE = 1e-4


def _bare_pt_with_linear_attention(reference, path):
    torch.save(original_state(reference, linear_attention=True), path)


def _nested_model_module_pth(reference, path):
    torch.save({"model": {f"module.vae.{name}": t for name, t in original_state(reference).items()}}, path)


def _original_safetensors(reference, path):
    save_file(original_state(reference), path)


def _diffusers_safetensors_without_config(reference, path):
    save_file({name: t.contiguous() for name, t in reference.state_dict().items()}, path)


CHECKPOINTS = {
    "lightning.ckpt": (write_lightning_ckpt, "original"),
    "bare.pt": (_bare_pt_with_linear_attention, "original"),
    "nested.pth": (_nested_model_module_pth, "original"),
    "original.safetensors": (_original_safetensors, "original"),
    "diffusion_pytorch_model.safetensors": (_diffusers_safetensors_without_config, "diffusers"),
}


@pytest.fixture(scope="module")
def reference(small_folder):
    return small_folder[1]


@pytest.fixture(scope="module")
def latents_and_pixels(reference):
    latents = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    return latents, diffusers_decode(reference, latents)


@pytest.mark.parametrize("name", list(CHECKPOINTS))
@pytest.mark.parametrize("with_config", [False, True], ids=["inferred", "given"])
def test_every_layout_decodes_like_diffusers(name, with_config, reference, latents_and_pixels, tmp_path):
    make, layout = CHECKPOINTS[name]
    path = tmp_path / name
    make(reference, path)
    checkpoint = reading.read_checkpoint(path, dtype=torch.float32, config=SMALL_CONFIG if with_config else None)
    assert checkpoint.layout == layout
    assert checkpoint.config == SMALL_CONFIG
    assert checkpoint.config_source == ("given" if with_config else "inferred")
    model = building.build(checkpoint.config, checkpoint.state) if with_config else weights.load(path)
    latents, expected = latents_and_pixels
    with torch.inference_mode():
        got = model(latents)
    assert (got - expected).abs().max().item() <= TOLERANCE


def test_an_original_checkpoint_keeps_its_encoder(reference, tmp_path):
    write_lightning_ckpt(reference, tmp_path / "m.ckpt")
    model = weights.load(tmp_path / "m.ckpt", encoder=True)
    assert model.config.encoder and model.encoder is not None
    images = torch.rand(2, 3, 8, 12, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected = reference.encode(images).latents
    with torch.inference_mode():
        assert (model.encode(images) - expected).abs().max().item() <= TOLERANCE


def test_pickled_tensors_arrive_on_the_requested_dtype(reference, tmp_path):
    write_lightning_ckpt(reference, tmp_path / "m.ckpt")
    model = weights.load(tmp_path / "m.ckpt", "cpu", torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_a_pickle_that_would_run_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"decoder.conv_in.weight": RunsCode(marker)}}, tmp_path / "evil.ckpt")
    with pytest.raises(InputError, match="needs code execution to unpickle; refused"):
        weights.load(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_unknown_layout_names_its_keys_and_the_supported_ones(tmp_path):
    save_file({"generator.layer1.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(InputError, match=r"keys: generator\.layer1\.weight.*supported layouts: native, diffusers"):
        weights.load(tmp_path / "other.safetensors")


def test_layout_is_detected_by_telltale_names():
    assert detect_layout(["decoder.up_blocks.0.resnets.0.conv1.weight"]) == "diffusers"
    assert detect_layout(["decoder.up.0.block.0.conv1.weight", "quantize.embedding.weight"]) == "original"
    with pytest.raises(ValueError, match="unknown checkpoint layout"):
        detect_layout(["decoder.conv_in.weight"])


def test_the_shortest_prefix_before_the_decoder_wins():
    names = ["ema.model.decoder.conv_in.weight", "model.decoder.conv_in.weight", "loss.logvar"]
    assert find_prefix(names) == "model."
    assert find_prefix(["decoder.conv_in.weight"]) == ""
    assert find_prefix(["xdecoder.conv_in.weight"]) == ""


ARCHITECTURES = {
    "kandinsky-shape": MovqConfig(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=2, attn_levels=(3,), n_embed=128),
    "one-level-no-attention-no-codebook": MovqConfig(
        ch=64, ch_mult=(1,), num_res_blocks=0, attn_levels=(), mid_attn=False, z_channels=8, embed_dim=3, n_embed=None
    ),
    "attention-at-two-levels-add-conv-remap": MovqConfig(
        ch=32, ch_mult=(1, 3, 2), num_res_blocks=1, attn_levels=(0, 2), add_conv=True, n_embed=16, n_used=10, out_ch=4
    ),
    "kandinsky-3": preset("kandinsky-3"),
    "movqgan-102m": preset("movqgan-102m"),
}


def _shapes(config: MovqConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {name: tuple(tensor.shape) for name, tensor in Movq(config).state_dict().items()}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_inference_recovers_the_exact_config(name):
    assert infer_config(_shapes(ARCHITECTURES[name])) == ARCHITECTURES[name]


def test_a_level_with_a_missing_block_is_named():
    shapes = {k: v for k, v in _shapes(SMALL_CONFIG).items() if not k.startswith("decoder.up.1.block.1.")}
    with pytest.raises(ValueError, match=r"missing tensors decoder\.up\.1\.block\.1\.\*: level 1 has 1 ResBlocks"):
        infer_config(shapes)


def test_a_block_of_the_wrong_width_is_named():
    shapes = _shapes(SMALL_CONFIG)
    shapes["decoder.up.0.block.1.conv1.weight"] = (48, 32, 3, 3)
    with pytest.raises(ValueError, match=r"decoder\.up\.0\.block\.1\.conv1\.weight has shape \(48, 32, 3, 3\)"):
        infer_config(shapes)


def test_attention_on_only_some_blocks_of_a_level_is_named():
    shapes = {k: v for k, v in _shapes(SMALL_CONFIG).items() if not k.startswith("decoder.up.1.attn.1.")}
    with pytest.raises(ValueError, match=r"decoder\.up\.1\.attn has 1 layers, not 2"):
        infer_config(shapes)


def test_a_checkpoint_without_a_decoder_input_is_named(reference, tmp_path):
    state = {k: v for k, v in original_state(reference).items() if k != "post_quant_conv.weight"}
    save_file(state, tmp_path / "broken.safetensors")
    with pytest.raises(InputError, match=r"broken\.safetensors: missing tensor post_quant_conv\.weight"):
        weights.load(tmp_path / "broken.safetensors")
