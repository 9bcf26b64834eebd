"""The decoder matches diffusers' VQModel number for number."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import SMALL, SMALL_CONFIG, codes_to_zq, diffusers_decode, make_vqmodel
from safetensors.torch import load_file, save_file

from movq_cli.checkpoints import building, weights
from movq_cli.errors import InputError
from movq_cli.models.config import preset
from movq_cli.models.movq import Movq, SpatialNorm

TOLERANCE = 1e-4

CONFIGS = {
    "two-levels-attn-low": SMALL,
    "three-levels-attn-middle-no-mid-attn": dict(
        widths=(32, 32, 64), layers=2, attn=(False, True, False), latent=3, n_e=40, mid_attn=False
    ),
    "one-level": dict(widths=(64,), layers=0, attn=(True,), latent=8, n_e=16),
    "four-levels-kandinsky-shape": dict(widths=(32, 64, 64, 128), layers=1, attn=(True, False, False, False)),
}
GRIDS = {"two-levels-attn-low": (5, 7), "three-levels-attn-middle-no-mid-attn": (4, 4),
         "one-level": (6, 3), "four-levels-kandinsky-shape": (3, 5)}  # fmt: skip


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    """(diffusers model, movq from its folder, movq from a native file, grid)."""
    reference = make_vqmodel(**CONFIGS[request.param])
    folder = tmp_path_factory.mktemp(request.param)
    reference.save_pretrained(folder)
    from_folder = weights.load(folder)
    native = folder / "native.safetensors"
    weights.save(from_folder, native)
    return reference, from_folder, weights.load(native), GRIDS[request.param]


@pytest.mark.parametrize("source", ["folder", "native"])
def test_integer_codes_decode_like_diffusers(pair, source):
    reference, from_folder, from_native, (rows, cols) = pair
    model = from_folder if source == "folder" else from_native
    codes = torch.randint(
        0, reference.config.num_vq_embeddings, (3, rows, cols), generator=torch.Generator().manual_seed(1)
    )
    expected = diffusers_decode(reference, codes_to_zq(reference, codes))
    with torch.inference_mode():
        got = model.decode_codes(codes)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= TOLERANCE
    assert expected.abs().max().item() > 0.05  # a real picture, not a constant


@pytest.mark.parametrize("source", ["folder", "native"])
def test_latents_decode_like_diffusers(pair, source):
    reference, from_folder, from_native, (rows, cols) = pair
    model = from_folder if source == "folder" else from_native
    latents = torch.randn(2, reference.config.latent_channels, rows, cols, generator=torch.Generator().manual_seed(2))
    expected = diffusers_decode(reference, latents)
    with torch.inference_mode():
        got = model(latents)
    assert (got - expected).abs().max().item() <= TOLERANCE


def test_decoding_frame_by_frame_equals_decoding_the_batch(pair):
    _, model, _, (rows, cols) = pair
    codes = torch.randint(0, model.config.n_embed, (4, rows, cols))
    with torch.inference_mode():
        whole = model.decode_codes(codes)
        single = torch.cat([model.decode_codes(codes[i : i + 1]) for i in range(4)])
    assert (whole - single).abs().max().item() <= TOLERANCE  # batch size changes only GEMM blocking


def test_native_file_round_trips_exactly(pair, tmp_path):
    _, model, _, _ = pair
    path = tmp_path / "model.safetensors"
    weights.save(model, path)
    again = weights.load(path)
    assert again.config == model.config
    original, loaded = model.state_dict(), again.state_dict()
    assert original.keys() == loaded.keys()
    assert all(torch.equal(original[name], loaded[name]) for name in original)


def test_old_diffusers_attention_names_load(tmp_path):
    reference = make_vqmodel(**CONFIGS["two-levels-attn-low"])
    reference.save_pretrained(tmp_path)
    state = load_file(tmp_path / "diffusion_pytorch_model.safetensors")
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    old = {}
    for name, tensor in state.items():
        for new_name, old_name in renames.items():
            name = name.replace(new_name, old_name)
        old[name] = tensor
    assert any(".proj_attn." in name for name in old)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    save_file(old, tmp_path / "diffusion_pytorch_model.fp16.safetensors")
    codes = torch.randint(0, 64, (1, 4, 4))
    with torch.inference_mode():
        got = weights.load(tmp_path).decode_codes(codes)
    expected = diffusers_decode(reference, codes_to_zq(reference, codes))
    assert (got - expected).abs().max().item() <= TOLERANCE


def test_safetensors_file_with_config_beside_it_loads(small_folder):
    folder, reference = small_folder
    model = weights.load(folder / "diffusion_pytorch_model.safetensors")
    latents = torch.randn(1, 4, 3, 3)
    with torch.inference_mode():
        assert (model(latents) - diffusers_decode(reference, latents)).abs().max().item() <= TOLERANCE


def test_mismatched_weights_name_the_offending_tensors(small_folder, tmp_path):
    folder, _ = small_folder
    config = json.loads((folder / "config.json").read_text())
    config["block_out_channels"] = [32, 96]
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(
        (folder / "diffusion_pytorch_model.safetensors").read_bytes()
    )
    with pytest.raises(
        InputError, match=r"wrong shape: decoder\.conv_in\.weight \(64, 4, 3, 3\) \(expected \(96, 4, 3, 3\)\)"
    ):
        weights.load(tmp_path)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    model = Movq(SMALL_CONFIG)
    state = {name: tensor for name, tensor in model.state_dict().items() if name != "decoder.conv_out.bias"}
    state["decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(InputError, match=r"missing: decoder\.conv_out\.bias; unexpected: decoder\.extra\.weight"):
        building.build(model.config, state)


def test_used_remap_selects_codebook_rows():
    torch.manual_seed(0)
    model = Movq(replace(SMALL_CONFIG, n_embed=16, n_used=5)).eval()
    model.quantize.used.copy_(torch.tensor([3, 9, 0, 15, 7]))
    codes = torch.tensor([[[0, 1], [4, 2]]])
    with torch.inference_mode():
        got = model.decode_codes(codes)
        expected = model(model.quantize.embedding.weight[torch.tensor([[[3, 9], [7, 0]]])].permute(0, 3, 1, 2))
    assert torch.equal(got, expected)


def test_spatial_norm_with_add_conv_follows_the_formula():
    torch.manual_seed(0)
    norm = SpatialNorm(32, 4, add_conv=True, groups=32)
    f, zq = torch.randn(2, 32, 8, 12), torch.randn(2, 4, 2, 3)
    with torch.no_grad():
        zq_up = norm.conv(torch.nn.functional.interpolate(zq, size=(8, 12), mode="nearest"))
        expected = norm.norm_layer(f) * norm.conv_y(zq_up) + norm.conv_b(zq_up)
        assert (norm(f, zq) - expected).abs().max().item() <= 1e-5
    with torch.inference_mode():
        assert (norm(f, zq) - expected).abs().max().item() <= 1e-5


def test_optional_parts_are_none_and_leave_the_tensor_names_alone():
    bare = Movq(replace(SMALL_CONFIG, mid_attn=False, n_embed=None))
    assert bare.encoder is None and bare.quant_conv is None and bare.quantize is None
    assert bare.decoder.mid.attn_1 is None and bare.decoder.up[0].upsample is None
    assert bare.decoder.norm_out.conv is None
    assert not any(name.startswith(("encoder.", "quant_conv.", "quantize.")) for name in bare.state_dict())
    full = Movq(replace(SMALL_CONFIG, add_conv=True, n_used=8, encoder=True))
    names = set(full.state_dict())
    assert {
        "quantize.embedding.weight", "quantize.used", "quant_conv.weight", "decoder.mid.attn_1.q.weight",
        "decoder.up.1.upsample.conv.weight", "decoder.norm_out.conv.weight", "encoder.down.0.downsample.conv.weight",
        "encoder.mid.attn_1.norm.weight",
    } <= names  # fmt: skip
    assert full.encoder.down[1].downsample is None and "encoder.down.1.downsample.conv.weight" not in names


def test_presets_describe_the_published_models():
    k22 = preset("kandinsky-2.2")
    assert k22.widths == (128, 256, 256, 512) and k22.factor == 8 and k22.n_embed == 16384
    assert preset("kandinsky-3").n_embed is None and preset("kandinsky-3").widths[-1] == 1024
    assert preset("movqgan-102m").num_res_blocks == 4
    with torch.device("meta"):
        decoder_params = sum(p.numel() for p in Movq(preset("movqgan-67m")).decoder.parameters())
    assert 35e6 < decoder_params < 45e6  # "about 40 M parameters"
