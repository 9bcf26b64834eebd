"""CogVideoX latents through `movq`: the frames a CogVideoX pipeline would make, from every way the
weights come, streamed like 2D clips (selections, previews, batches, reports)."""

from __future__ import annotations

import json

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
from conftest import VIDEO_SMALL, assert_one_line_error, cogvideox_pipeline_frames, make_cogvideox_vae, movq

import movq_cli


def _latents(seed: int, frames: int, rows: int = 3, cols: int = 5) -> np.ndarray:
    """Latents as CogVideoXPipeline(output_type="latent") hands them: (1, F, C, h, w), scaled."""
    return np.random.default_rng(seed).standard_normal((1, frames, 16, rows, cols)).astype(np.float32)


def _frames(folder, count: int) -> np.ndarray:
    return np.stack([iio.imread(folder / f"{i:05d}.png") for i in range(count)])


@pytest.fixture(scope="module")
def clips(tmp_path_factory, video_folder):
    """Odd and even latent videos, and the pipeline's frames for each."""
    _, vae = video_folder
    root = tmp_path_factory.mktemp("latents")
    found = {}
    for frames in (1, 4, 5):
        latents = _latents(frames, frames)
        np.save(root / f"f{frames}.npy", latents)
        found[frames] = (root / f"f{frames}.npy", cogvideox_pipeline_frames(vae, latents))
    return found


@pytest.mark.parametrize("frames, expected_count", [(1, 1), (4, 16), (5, 17)])
def test_a_pipeline_folder_decodes_to_the_pipeline_frames(frames, expected_count, clips, video_folder, tmp_path):
    path, expected = clips[frames]
    result = movq("decode", path, tmp_path / "out", "-w", video_folder[0])
    assert result.exit_code == 0, result.output
    got = _frames(tmp_path / "out", expected_count)
    assert got.shape == expected.shape == (expected_count, 12, 20, 3)
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert (got == expected).mean() > 0.999
    assert f"wrote {expected_count} frame(s) of 12x20" in result.stderr


def test_unscaled_latents_and_frames_without_the_batch_axis(clips, video_folder, tmp_path):
    path, expected = clips[5]
    latents = np.load(path)[0] / video_folder[1].config.scaling_factor  # (F, C, h, w), already divided
    np.save(tmp_path / "unscaled.npy", latents.astype(np.float32))
    result = movq("decode", tmp_path / "unscaled.npy", tmp_path / "out", "-w", video_folder[0], "--unscaled")
    assert result.exit_code == 0, result.output
    assert np.abs(_frames(tmp_path / "out", 17).astype(int) - expected).max() <= 1


def test_frames_count_output_frames_and_stop_early(clips, video_folder, tmp_path):
    path, expected = clips[5]
    result = movq("decode", path, tmp_path / "out", "-w", video_folder[0], "--frames", "3:15:4", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["frames"] == 3 and report["frame_size"] == [12, 20]
    assert np.abs(_frames(tmp_path / "out", 3).astype(int) - expected[3:15:4]).max() <= 1
    assert_one_line_error(movq("decode", path, tmp_path / "e", "-w", video_folder[0], "--frames", "20:"), 2, "none")


def test_the_public_api_streams_the_same_frames(clips, video_folder):
    path, expected = clips[4]
    model = movq_cli.load(video_folder[0])
    frames = np.stack(list(movq_cli.decode_frames(path, model, frames=slice(0, 6))))
    assert np.abs(frames.astype(int) - expected[:6]).max() <= 1


def test_mp4_preview_and_batch(clips, video_folder, tmp_path):
    path, expected = clips[5]
    assert movq("decode", path, tmp_path / "clip.mp4", "-w", video_folder[0], "--crf", "0").exit_code == 0
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "clip.mp4"))
    assert next(reader)["size"] == (20, 12)
    assert len(list(reader)) == 17
    sheet = movq("preview", path, tmp_path / "sheet.png", "-w", video_folder[0], "--count", "3")
    assert sheet.exit_code == 0, sheet.output
    assert "frames 0, 8, 16 of 17" in sheet.stderr
    batch = movq("decode", path.parent, tmp_path / "videos", "-w", video_folder[0], "--format", "png-dir", "--json")
    assert batch.exit_code == 0, batch.output
    rows = {row["input"]: row for row in map(json.loads, batch.stdout.splitlines())}
    assert [rows[str(clips[n][0])]["frames"] for n in (1, 4, 5)] == [1, 16, 17]
    assert np.abs(_frames(tmp_path / "videos" / "f5", 17).astype(int) - expected).max() <= 1


def test_every_way_the_weights_come_gives_the_same_frames(clips, video_folder, tmp_path):
    """A sharded folder and a native file from `movq convert` decode like the pipeline folder."""
    root, vae = video_folder
    path, expected = clips[4]
    vae.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").exists()
    converted = movq("convert", root, tmp_path / "native.safetensors")
    assert converted.exit_code == 0, converted.output
    assert "read diffusers layout" in converted.stderr
    for weights in (tmp_path / "sharded", tmp_path / "native.safetensors"):
        out = tmp_path / f"out-{weights.stem}"
        result = movq("decode", path, out, "-w", weights)
        assert result.exit_code == 0, (weights, result.output)
        assert np.abs(_frames(out, 16).astype(int) - expected).max() <= 1, weights


def test_a_file_without_its_config_is_read_by_its_tensors(tmp_path):
    """The released structure's groups (32) and widths; no config.json: inferred, all but the scaling
    factor, which the weights do not show: scaled latents are refused until it is known."""
    structure = dict(
        block_out_channels=(32, 32, 64), layers_per_block=1, norm_num_groups=32, temporal_compression_ratio=4
    )
    vae = make_cogvideox_vae(seed=5, scaling_factor=1.15258426, **structure)
    vae.save_pretrained(tmp_path / "vae")
    alone = tmp_path / "vae.safetensors"
    alone.write_bytes((tmp_path / "vae" / "diffusion_pytorch_model.safetensors").read_bytes())
    info = movq("info", alone, "--json")
    assert info.exit_code == 0, info.output
    report = json.loads(info.stdout)
    assert report["config_source"] == "inferred" and report["config"]["block_out_channels"] == [32, 32, 64]
    assert report["config"]["scaling_factor"] is None
    latents = _latents(11, 2, 2, 3)
    np.save(tmp_path / "l.npy", latents)
    expected = cogvideox_pipeline_frames(vae, latents)
    refused = movq("decode", tmp_path / "l.npy", tmp_path / "out", "-w", alone)
    assert_one_line_error(refused, 2, "--unscaled")
    assert not (tmp_path / "out").exists()
    np.save(tmp_path / "unscaled.npy", latents / np.float32(1.15258426))
    result = movq("decode", tmp_path / "unscaled.npy", tmp_path / "out", "-w", alone, "--unscaled")
    assert result.exit_code == 0, result.output
    assert np.abs(_frames(tmp_path / "out", 8).astype(int) - expected).max() <= 1
    # the inferred config with the factor filled in (for the released structure: --config cogvideox-2b)
    (tmp_path / "2b.json").write_text(json.dumps({**report["config"], "scaling_factor": 1.15258426}))
    converted = movq("convert", alone, tmp_path / "2b.safetensors", "--config", tmp_path / "2b.json")
    assert converted.exit_code == 0, converted.output
    result = movq("decode", tmp_path / "l.npy", tmp_path / "from-2b", "-w", tmp_path / "2b.safetensors")
    assert result.exit_code == 0, result.output
    assert np.abs(_frames(tmp_path / "from-2b", 8).astype(int) - expected).max() <= 1


def test_info_and_inspect_know_the_family(clips, video_folder):
    root, vae = video_folder
    info = movq("info", root, "--json")
    assert info.exit_code == 0, info.output
    report = json.loads(info.stdout)
    assert report["family"] == "cogvideox" and report["layout"] == "diffusers"
    assert report["config"]["block_out_channels"] == list(VIDEO_SMALL["block_out_channels"])
    assert report["config"]["scaling_factor"] == pytest.approx(vae.config.scaling_factor)
    assert report["encoder"]["present"] is False  # encoder tensors are not what movq reads of a CogVideoX
    assert report["decoder"]["parameters"] == sum(
        p.numel() for name, p in vae.named_parameters() if name.startswith("decoder.")
    )
    table = movq("info", root)
    assert table.exit_code == 0 and "cogvideox" in table.stdout
    inspect = movq("inspect", clips[5][0], "--weights", root, "--json")
    assert inspect.exit_code == 0, inspect.output
    report = json.loads(inspect.stdout)
    assert report["fits"] is True and report["frames"] == 5 and report["output_frames"] == 17


def test_what_cogvideox_cannot_take_is_one_line(video_folder, tmp_path):
    root, _ = video_folder
    np.save(tmp_path / "codes.npy", np.zeros((2, 3, 5), np.int64))
    np.save(tmp_path / "eight.npy", np.zeros((2, 8, 3, 5), np.float32))
    np.save(tmp_path / "ok.npy", _latents(0, 3))
    cases = [
        (["decode", tmp_path / "codes.npy", tmp_path / "a"], "CogVideoX decodes latents"),
        (["decode", tmp_path / "eight.npy", tmp_path / "b"], "8 channels"),
        (["decode", tmp_path / "ok.npy", tmp_path / "c", "--snap"], "--snap"),
        (["decode", tmp_path / "ok.npy", tmp_path / "d", "--chunk", "2"], "--chunk"),
        (["encode", tmp_path / "x.png", tmp_path / "x.npy"], "CogVideoX"),
    ]
    iio.imwrite(tmp_path / "x.png", np.zeros((12, 20, 3), np.uint8))
    for command, needle in cases:
        assert_one_line_error(movq(*command, "-w", root), 2, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.npy", "eight.npy", "ok.npy", "x.png"]


def test_a_2d_model_refuses_unscaled(tmp_path, small_folder):
    np.save(tmp_path / "latents.npy", np.zeros((1, 4, 3, 3), np.float32))
    result = movq("decode", tmp_path / "latents.npy", tmp_path / "x", "-w", small_folder[0], "--unscaled")
    assert_one_line_error(result, 2, "--unscaled is for CogVideoX")


def test_the_scaling_factor_comes_from_the_config(tmp_path):
    vae = make_cogvideox_vae(seed=3, scaling_factor=1.15258426, **VIDEO_SMALL)
    vae.save_pretrained(tmp_path / "vae")
    latents = _latents(9, 3)
    np.save(tmp_path / "l.npy", latents)
    assert movq("decode", tmp_path / "l.npy", tmp_path / "out", "-w", tmp_path / "vae").exit_code == 0
    assert np.abs(_frames(tmp_path / "out", 9).astype(int) - cogvideox_pipeline_frames(vae, latents)).max() <= 1


def test_a_hub_id_finds_the_vae_folder_of_a_cogvideox_repository(clips, video_folder, tmp_path, monkeypatch):
    """THUDM/CogVideoX-2b as the Hub cache holds it (sharded weights in vae/), offline."""
    import huggingface_hub.constants

    _, vae = video_folder
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--THUDM--CogVideoX-2b"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    vae.save_pretrained(repo / "snapshots" / commit / "vae", max_shard_size="20KB")
    (repo / "snapshots" / commit / "model_index.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    path, expected = clips[5]
    result = movq("decode", path, tmp_path / "out", "-w", "THUDM/CogVideoX-2b")
    assert result.exit_code == 0, result.output
    assert np.abs(_frames(tmp_path / "out", 17).astype(int) - expected).max() <= 1
    shard = next((repo / "snapshots" / commit / "vae").glob("*-00002-of-*.safetensors"))
    shard.unlink()  # a shard the index names is missing: not cached, one line
    assert_one_line_error(movq("decode", path, tmp_path / "x", "-w", "THUDM/CogVideoX-2b"), 2, "not in the cache")


def test_tiled_decoding_writes_the_pipeline_frames(clips, video_folder, tmp_path):
    path, expected = clips[5]
    untiled = movq("decode", path, tmp_path / "untiled", "-w", video_folder[0])
    result = movq("decode", path, tmp_path / "tiled", "-w", video_folder[0], "--tile", "8x4")  # 2x1 latents
    assert untiled.exit_code == 0 and result.exit_code == 0, result.output
    got = _frames(tmp_path / "tiled", 17)
    assert np.abs(got.astype(int) - expected).max() <= 1 and (got == expected).mean() > 0.999
    assert np.abs(got.astype(int) - _frames(tmp_path / "untiled", 17)).max() <= 1
    api = np.stack(list(movq_cli.decode_frames(path, movq_cli.load(video_folder[0]), tile=8)))
    assert np.abs(api.astype(int) - got).max() <= 1


def test_bad_tiles_are_one_line(clips, video_folder, tmp_path):
    path, _ = clips[4]
    for tile in ("0", "8x", "big", "-8"):
        assert_one_line_error(movq("decode", path, tmp_path / "a", "-w", video_folder[0], "--tile", tile), 2, "tile")
    assert list(tmp_path.iterdir()) == []


def test_a_chunk_too_large_for_the_device_points_to_tile(video_folder, tmp_path, monkeypatch):
    """Checked from the shape alone (sparse files): refused untiled with the hint, and tiled when
    even host memory cannot hold the chunk's layers; tiled, a chunk too large whole passes."""
    path = tmp_path / "huge.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(1, 16, 3000, 3000))
    untiled = movq("decode", path, tmp_path / "a", "-w", video_folder[0])
    assert_one_line_error(untiled, 2, "--tile 256")
    tiled = movq("decode", path, tmp_path / "b", "-w", video_folder[0], "--tile", "64")
    assert_one_line_error(tiled, 2, "a tiled chunk of 3000x3000 latents needs about")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.npy"]

    import movq_cli.memory
    from movq_cli.errors import InputError
    from movq_cli.io import codes as codes_io
    from movq_cli.models.family import DecodeOptions, family_of

    np.lib.format.open_memmap(tmp_path / "wide.npy", mode="w+", dtype=np.float32, shape=(1, 16, 200, 200))
    wide = codes_io.read(tmp_path / "wide.npy")
    family = family_of(movq_cli.load(video_folder[0]))
    whole = family.chunk_bytes(wide.grid, 1)
    monkeypatch.setattr(movq_cli.memory, "device_memory", lambda device: whole * 3 // 4)
    with pytest.raises(InputError, match="a chunk of 200x200 latents needs about"):
        family.check_memory(wide)
    family.check_memory(wide, DecodeOptions(tile=(64, 64)))  # a 16x16-latent tile, the layers in host memory


def test_preview_takes_tiles_and_unscaled_latents(clips, video_folder, tmp_path):
    path, _ = clips[5]
    root = video_folder[0]
    np.save(tmp_path / "unscaled.npy", np.load(path) / np.float32(video_folder[1].config.scaling_factor))
    plain = movq("preview", path, tmp_path / "plain.png", "-w", root, "--count", "3")
    tiled = movq("preview", path, tmp_path / "tiled.png", "-w", root, "--count", "3", "--tile", "8")
    unscaled = movq("preview", tmp_path / "unscaled.npy", tmp_path / "unscaled.png", "-w", root, "--count", "3",
                    "--unscaled")  # fmt: skip
    assert plain.exit_code == tiled.exit_code == unscaled.exit_code == 0, tiled.output + unscaled.output
    sheet = iio.imread(tmp_path / "plain.png").astype(int)
    for other in ("tiled.png", "unscaled.png"):
        assert np.abs(iio.imread(tmp_path / other).astype(int) - sheet).max() <= 1
