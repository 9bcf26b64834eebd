"""`--encoder`: the H.264 encoder of MP4 outputs, an x264 preset or NVENC, refused for other outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, movq
from same_outputs import video_frames

from movq_cli.batch import BatchOptions, Job, _encoder
from movq_cli.io.writers import ENCODERS, WriteOptions, default_encoder, get_writer


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


def test_a_gpu_gets_a_faster_default_for_mp4_only():
    assert default_encoder("cpu") == "x264-medium" and default_encoder("cuda") == "x264-veryfast"
    cuda, cpu, options = torch.device("cuda"), torch.device("cpu"), BatchOptions()
    assert _encoder(Job(Path("a.npy"), Path("a.mp4")), cuda, options) == "x264-veryfast"
    assert _encoder(Job(Path("a.npy"), Path("a.mp4")), cpu, options) is None  # the writer's own: medium
    assert _encoder(Job(Path("a.npy"), Path("frames")), cuda, options) is None
    assert _encoder(Job(Path("a.npy"), Path("a.mp4")), cuda, BatchOptions(encoder="x264-slow")) == "x264-slow"


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
