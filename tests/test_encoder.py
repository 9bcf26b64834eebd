"""`--encoder`: the H.264 encoder of MP4 outputs, an x264 preset or NVENC, refused for other outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, movq
from same_outputs import video_frames

from movq_cli.io.writers import ENCODERS, Mp4Writer, WriteOptions, default_encoder, get_writer


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("codes") / "clip.npy"
    np.save(path, np.random.default_rng(0).integers(0, 64, (4, 8, 8)))
    return path


def test_a_faster_preset_gives_nearly_the_same_frames(clip, small_folder, tmp_path):
    medium = movq("decode", clip, tmp_path / "medium.mp4", "-w", small_folder[0], "--encoder", "x264-medium")
    fast = movq("decode", clip, tmp_path / "fast.mp4", "-w", small_folder[0], "--encoder", "x264-ultrafast")
    assert medium.exit_code == fast.exit_code == 0, fast.output
    difference = video_frames(tmp_path / "fast.mp4").astype(int) - video_frames(tmp_path / "medium.mp4")
    assert np.abs(difference).mean() < 3


def test_each_encoder_is_its_ffmpeg_codec_and_preset(tmp_path):
    def arguments(encoder):
        writer = get_writer(tmp_path / "clip.mp4", (8, 8), 1, WriteOptions(crf=20, encoder=encoder))
        writer.abort()
        return " ".join(writer.process.args)

    assert "-c:v libx264 -preset medium -crf 20" in arguments(None)
    assert "-c:v libx264 -preset veryfast -crf 20" in arguments("x264-veryfast")
    assert {"x264-ultrafast", "x264-medium", "nvenc"} <= set(ENCODERS) and ENCODERS["nvenc"][0] == "h264_nvenc"
    assert list(tmp_path.iterdir()) == []


def test_a_gpu_gets_a_faster_default_for_mp4_only(tmp_path, monkeypatch):
    assert default_encoder("cpu") == "x264-medium" and default_encoder("cuda") == "x264-veryfast"
    chosen, encoding = [], Mp4Writer.encoding
    monkeypatch.setattr(Mp4Writer, "encoding", lambda self, options: chosen.append(options.encoder) or encoding(self, options))
    for device_type, options in (("cuda", WriteOptions()), ("cpu", WriteOptions()), ("cuda", WriteOptions(encoder="x264-slow"))):
        get_writer(tmp_path / "a.mp4", (8, 8), 1, options, device_type).abort()
    assert chosen == ["x264-veryfast", "x264-medium", "x264-slow"]
    get_writer(tmp_path / "frames", (8, 8), 1, WriteOptions(), "cuda").abort()  # no encoder for PNGs, and no error
    assert list(tmp_path.iterdir()) == []


def test_the_api_and_the_cli_choose_the_same_mp4_encoder(clip, small_folder, tmp_path, monkeypatch):
    import movq_cli

    chosen, encoding = [], Mp4Writer.encoding
    monkeypatch.setattr(Mp4Writer, "encoding", lambda self, options: chosen.append(options.encoder) or encoding(self, options))
    monkeypatch.setattr("movq_cli.io.writers.default_encoder", lambda device_type: f"x264-{device_type}-default")
    monkeypatch.setitem(ENCODERS, "x264-cpu-default", ENCODERS["x264-ultrafast"])
    movq_cli.decode(clip, tmp_path / "api.mp4", movq_cli.load(small_folder[0]))
    result = movq("decode", clip, tmp_path / "cli.mp4", "-w", small_folder[0], "-q")
    assert result.exit_code == 0, result.output
    assert chosen == ["x264-cpu-default", "x264-cpu-default"]


@pytest.mark.parametrize(
    "out, args, needle",
    [
        ("clip.webm", ["--encoder", "x264-fast"], "--encoder has no use for .webm output"),
        ("frames", ["--encoder", "x264-fast"], "--encoder has no use for a folder of PNG frames"),
        ("clip.mp4", ["--encoder", "x265"], "unknown --encoder 'x265'"),
    ],
)
def test_an_encoder_that_cannot_be_used_is_exit_2(out, args, needle, clip, small_folder, tmp_path):
    assert_one_line_error(movq("decode", clip, tmp_path / out, "-w", small_folder[0], *args), 2, needle)
    assert list(tmp_path.iterdir()) == []


def test_a_batch_refuses_an_encoder_its_format_has_no_use_for(clip, small_folder, tmp_path):
    result = movq(
        "decode", clip.parent, tmp_path / "out", "-w", small_folder[0], "--format", "png-dir", "--encoder", "nvenc"
    )
    assert_one_line_error(result, 2, "--encoder has no use for a folder of PNG frames")


def test_nvenc_without_an_nvidia_gpu_is_exit_2(clip, small_folder, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU, where NVENC may work")
    result = movq("decode", clip, tmp_path / "clip.mp4", "-w", small_folder[0], "--encoder", "nvenc")
    assert_one_line_error(result, 2, "--encoder nvenc needs an NVIDIA GPU")
    assert list(tmp_path.iterdir()) == []
