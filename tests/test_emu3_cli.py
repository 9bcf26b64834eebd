"""Emu3 through the whole tool: weights folders in both layouts, `movq decode` of clips, per-clip
codes and token streams, frame selection, `info`, `inspect` and `convert`, against transformers."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, movq
from safetensors.torch import save_file
from test_emu3 import SMALL, randomize
from test_hub import cache, cache_repo, model_files, no_network  # noqa: F401, F811 (fixtures)
from test_token_streams import emu3_image
from transformers import Emu3VQVAE, Emu3VQVAEConfig

import movq_cli
from movq_cli.checkpoints import emu3 as checkpoint
from movq_cli.checkpoints import hub, reading

SMALL_CODES = SMALL["codebook_size"]


@pytest.fixture(scope="module")
def reference() -> Emu3VQVAE:
    model = Emu3VQVAE(Emu3VQVAEConfig(**SMALL))
    randomize(model, seed=3)
    return model.eval()


@pytest.fixture(scope="module")
def baai_folder(reference, tmp_path_factory):
    """A folder as BAAI/Emu3-VisionTokenizer has it: its config.json and model.safetensors in BAAI's names."""
    folder = tmp_path_factory.mktemp("Emu3-VisionTokenizer")
    config = reference.config
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["Emu3VisionVQModel"], "model_type": "Emu3VisionVQ", "codebook_size": config.codebook_size,
        "embed_dim": config.embed_dim, "z_channels": config.latent_channels, "double_z": False,
        "ch": config.base_channels, "ch_mult": list(config.channel_multiplier), "num_res_blocks": config.num_res_blocks,
        "attn_resolutions": list(config.attn_resolutions), "temporal_downsample_factor": config.temporal_downsample_factor,
        "in_channels": 3, "out_channels": 3, "dropout": 0.0,
    }))  # fmt: skip
    state = checkpoint.transformers_to_native(reference.state_dict())
    state["encoder.conv_in.weight"] = torch.zeros(4, 3, 3, 3)  # BAAI's file holds the encoder too
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, folder / "model.safetensors")
    return folder


def pixels(reference: Emu3VQVAE, codes: np.ndarray) -> np.ndarray:
    """transformers' decode of `codes` (B, T, h, w) or (B, h, w), as Emu3's processor makes pixels:
    (frames, H, W, 3) uint8, truncated."""
    with torch.no_grad():
        images = reference.decode(torch.from_numpy(codes))
    frames = images.flatten(0, 1) if images.ndim == 5 else images  # (B, T, 3, H, W) -> (B * T, 3, H, W)
    return ((frames * 0.5 + 0.5) * 255).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def assert_same_pixels(got: np.ndarray, want: np.ndarray) -> None:
    """The same pixels but where float noise (1e-5) crosses a truncation boundary: off by one, rarely."""
    assert got.shape == want.shape
    difference = np.abs(got.astype(int) - want)
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3


def png_folder(folder) -> np.ndarray:
    return np.stack([iio.imread(path) for path in sorted(folder.glob("*.png"))])


def test_a_clip_decodes_as_transformers_decodes_it(reference, baai_folder, tmp_path):
    codes = np.random.default_rng(0).integers(0, SMALL_CODES, (3, 2, 3))
    np.save(tmp_path / "clip.npy", codes)
    result = movq("decode", tmp_path / "clip.npy", tmp_path / "frames/", "-w", baai_folder)
    assert result.exit_code == 0, result.output
    assert_same_pixels(png_folder(tmp_path / "frames"), pixels(reference, codes[None]))


def test_a_selection_of_frames_is_the_same_frames_of_the_whole(reference, baai_folder, tmp_path):
    codes = np.random.default_rng(1).integers(0, SMALL_CODES, (3, 2, 2))
    model = movq_cli.load(baai_folder)
    whole = np.stack(list(movq_cli.decode_frames(codes, model)))
    some = np.stack(list(movq_cli.decode_frames(codes, model, frames=[2, 5, 9])))
    assert whole.shape[0] == 12 and np.array_equal(some, whole[[2, 5, 9]])


def test_per_clip_codes_decode_each_latent_frame_as_its_own_clip(reference, baai_folder, tmp_path):
    codes = np.random.default_rng(2).integers(0, SMALL_CODES, (3, 2, 2))
    np.save(tmp_path / "clips.npy", codes)
    result = movq("decode", tmp_path / "clips.npy", tmp_path / "frames/", "-w", baai_folder, "--per-clip")
    assert result.exit_code == 0, result.output
    assert_same_pixels(png_folder(tmp_path / "frames"), pixels(reference, codes[:, None]))
    joint = movq_cli.decode_frames(codes, movq_cli.load(baai_folder))
    assert not np.array_equal(np.stack(list(joint))[4:], png_folder(tmp_path / "frames")[4:])  # not the same thing


def test_an_image_decodes_to_frame_0_of_its_clip(reference, baai_folder, tmp_path):
    codes = np.random.default_rng(3).integers(0, SMALL_CODES, (2, 3))
    np.save(tmp_path / "image.npy", codes)
    result = movq("decode", tmp_path / "image.npy", tmp_path / "image.png", "-w", baai_folder)
    assert result.exit_code == 0, result.output
    assert_same_pixels(iio.imread(tmp_path / "image.png")[None], pixels(reference, codes[None]))


def test_a_token_stream_decodes_to_one_picture_an_image(reference, baai_folder, tmp_path):
    rng = np.random.default_rng(4)
    first, second = rng.integers(0, SMALL_CODES, (2, 3)), rng.integers(0, SMALL_CODES, (2, 3))
    ids = np.concatenate([[1, 2, 3], emu3_image(first), [4, 5], emu3_image(second)])
    np.save(tmp_path / "ids.npy", ids)
    result = movq("decode", tmp_path / "ids.npy", tmp_path / "images/", "-w", baai_folder, "--tokens", "emu3")
    assert result.exit_code == 0, result.output
    assert_same_pixels(png_folder(tmp_path / "images"), pixels(reference, np.stack([first, second])))


def test_a_saved_transformers_model_and_its_native_conversion_decode_alike(reference, baai_folder, tmp_path):
    reference.save_pretrained(tmp_path / "hf")
    codes = np.random.default_rng(5).integers(0, SMALL_CODES, (2, 2, 2))
    from_baai = np.stack(list(movq_cli.decode_frames(codes, movq_cli.load(baai_folder))))
    from_hf = np.stack(list(movq_cli.decode_frames(codes, movq_cli.load(tmp_path / "hf"))))
    result = movq("convert", tmp_path / "hf", tmp_path / "emu3.safetensors", "-q")
    assert result.exit_code == 0, result.output
    native = np.stack(list(movq_cli.decode_frames(codes, movq_cli.load(tmp_path / "emu3.safetensors"))))
    assert np.array_equal(from_baai, from_hf) and np.array_equal(from_hf, native)
    assert reading.locate(tmp_path / "emu3.safetensors").config_source == "metadata"


def test_a_language_model_folder_needs_only_the_shards_that_hold_its_tokenizer(reference, tmp_path):
    folder = tmp_path / "Emu3-Gen-hf"
    folder.mkdir()
    language = {"model.text_model.embed_tokens.weight": torch.zeros(8, 4), "lm_head.weight": torch.zeros(8, 4)}
    vision = {f"model.vqmodel.{name}": tensor.contiguous() for name, tensor in reference.state_dict().items()}
    save_file(vision, folder / "model-00002-of-00002.safetensors")
    weight_map = {name: "model-00001-of-00002.safetensors" for name in language}
    weight_map |= {name: "model-00002-of-00002.safetensors" for name in vision}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "emu3", "vq_config": reference.config.to_dict()}))
    assert hub._shards(folder / "model.safetensors.index.json") == ["model-00002-of-00002.safetensors"]
    codes = np.random.default_rng(6).integers(0, SMALL_CODES, (1, 2, 2))
    got = np.stack(list(movq_cli.decode_frames(codes, movq_cli.load(folder))))  # shard 1 is not there
    assert_same_pixels(got, pixels(reference, codes[None]))


def test_hub_ids_of_the_tokenizer_and_of_a_language_model_decode_alike(reference, baai_folder, cache, tmp_path):  # noqa: F811
    lm = tmp_path / "lm"
    lm.mkdir()
    vision = {f"vqmodel.{name}": tensor.contiguous() for name, tensor in reference.state_dict().items()}
    save_file(vision, lm / "model-00004-of-00004.safetensors")
    weight_map = {"lm_head.weight": "model-00001-of-00004.safetensors"} | dict.fromkeys(vision, "model-00004-of-00004.safetensors")
    (lm / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (lm / "config.json").write_text(json.dumps({"model_type": "emu3", "vq_config": reference.config.to_dict()}))
    cache_repo(cache, "BAAI/Emu3-VisionTokenizer", model_files(baai_folder))
    cache_repo(cache, "BAAI/Emu3-Gen-hf", model_files(lm))  # the language model's shards are not there
    codes = np.random.default_rng(7).integers(0, SMALL_CODES, (2, 2, 2))
    decoded = [
        np.stack(list(movq_cli.decode_frames(codes, movq_cli.load(weights))))
        for weights in (baai_folder, "BAAI/Emu3-VisionTokenizer", "BAAI/Emu3-Gen-hf")
    ]
    assert np.array_equal(decoded[0], decoded[1]) and np.array_equal(decoded[1], decoded[2])


def test_info_and_inspect_describe_an_emu3_tokenizer(baai_folder, tmp_path):
    info = movq("info", baai_folder, "--json")
    assert info.exit_code == 0, info.output
    report = json.loads(info.stdout)
    assert report["family"] == "emu3" and report["layout"] == "baai" and report["config_source"] == "config.json"
    np.save(tmp_path / "clip.npy", np.zeros((2, 2, 3), dtype=np.int64))
    inspected = movq("inspect", tmp_path / "clip.npy", "-w", baai_folder, "--json")
    assert inspected.exit_code == 0, inspected.output
    report = json.loads(inspected.stdout)
    assert report["output_frames"] == 8 and report["frame_size"] == [16, 24] and report["fits"] is True
    assert report["decoding"].startswith("one clip of 2 latent frame(s)") and "per_clip=True" in report["decoding"]
    table = movq("inspect", tmp_path / "clip.npy", "-w", baai_folder)
    assert table.exit_code == 0 and "--per-clip" in " ".join(table.stdout.split())


def test_what_emu3_cannot_decode_is_one_line(baai_folder, tmp_path):
    np.save(tmp_path / "latents.npy", np.zeros((1, 4, 2, 2), dtype=np.float32))
    result = movq("decode", tmp_path / "latents.npy", tmp_path / "out.png", "-w", baai_folder)
    assert_one_line_error(result, 2, "Emu3 decodes integer codes")
    np.save(tmp_path / "far.npy", np.full((1, 2, 2), SMALL_CODES))
    result = movq("decode", tmp_path / "far.npy", tmp_path / "out.png", "-w", baai_folder)
    assert_one_line_error(result, 2, "far.npy")
    np.save(tmp_path / "clip.npy", np.zeros((1, 2, 2), dtype=np.int64))
    result = movq("decode", tmp_path / "clip.npy", tmp_path / "out.mp4", "-w", baai_folder, "--tile", "8")
    assert_one_line_error(result, 2, "--tile is for 2D MoVQ and CogVideoX models")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clip.npy", "far.npy", "latents.npy"]
