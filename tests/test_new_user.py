"""What a new user met, round two: a Hub id without a network, `movq convert`, sizes in one order,
and the smaller surprises."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_one_line_error, movq
from safetensors import safe_open

from movq_cli.checkpoints.bundled import default_weights
from movq_cli.io.targets import MANIFEST


def _child_environment(**extra: str) -> dict[str, str]:
    proxies = {"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"}
    keep = {key: value for key, value in os.environ.items() if key not in proxies and not key.startswith("HF_")}
    return {**keep, "COLUMNS": "40", **extra}


@pytest.mark.slow
def test_a_hub_id_without_a_network_fails_in_one_quiet_line(tmp_path):
    (tmp_path / "cache").mkdir()
    np.save(tmp_path / "codes.npy", np.zeros((1, 2, 2), np.int64))
    done = subprocess.run(
        [sys.executable, "-m", "movq_cli", "decode", str(tmp_path / "codes.npy"), str(tmp_path / "out.png"),
         "-w", "owner/name"],
        capture_output=True, text=True, timeout=120,
        env=_child_environment(HF_HUB_CACHE=str(tmp_path / "cache"), HF_ENDPOINT="http://127.0.0.1:9"),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: weights not found: owner/name"), done.stderr
    assert "no such file or folder" in lines[0] and "the Hub cannot be reached" in lines[0]
    assert "hf download owner/name" in lines[0] or "huggingface-cli download owner/name" in lines[0]
    assert not (tmp_path / "out.png").exists()


# movq convert


def test_convert_keeps_the_encoder_says_what_it_wrote_and_respects_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        result = movq("convert", default_weights(), tmp_path / "movq.safetensors")
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert "wrote the decoder and the encoder" in result.stderr
    with safe_open(tmp_path / "movq.safetensors", framework="pt") as converted:
        assert any(name.startswith("encoder.") for name in converted.keys())
    assert stat.S_IMODE((tmp_path / "movq.safetensors").stat().st_mode) == 0o644
    from PIL import Image

    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    encoded = movq("encode", tmp_path / "grey.png", tmp_path / "grey.npy", "-w", tmp_path / "movq.safetensors")
    assert encoded.exit_code == 0, encoded.output


def test_convert_leaves_the_encoder_out_when_asked_and_is_quiet_with_q(tmp_path):
    result = movq("convert", default_weights(), tmp_path / "decoder.safetensors", "--no-encoder", "-q")
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and result.stdout.strip() == str(tmp_path / "decoder.safetensors")
    with safe_open(tmp_path / "decoder.safetensors", framework="pt") as converted:
        assert not any(name.startswith("encoder.") for name in converted.keys())


# Sizes: height x width in every line of text, named in JSON


def test_sizes_read_height_by_width_everywhere_and_are_named_in_json(small_folder, tmp_path):
    np.save(tmp_path / "codes.npy", np.zeros((1, 3, 4), np.int64))  # 3 rows of 4 codes: 6x8 pixels
    decoded = movq("decode", tmp_path / "codes.npy", tmp_path / "out.png", "-w", small_folder[0], "--json")
    assert decoded.exit_code == 0, decoded.output
    assert "wrote 1 frame(s) of 6x8 " in decoded.stderr
    row = json.loads(decoded.stdout)
    assert (row["height"], row["width"]) == (6, 8) == tuple(row["frame_size"])
    inspected = movq("inspect", tmp_path / "codes.npy", "-w", small_folder[0])
    assert "3x4 codes" in inspected.stdout and "1 frame(s) of 6x8" in inspected.stdout, inspected.stdout
    report = json.loads(movq("inspect", tmp_path / "codes.npy", "-w", small_folder[0], "--json").stdout)
    assert (report["rows"], report["columns"], report["height"], report["width"]) == (3, 4, 6, 8)
    assert "height x width" in " ".join(movq("--help").stdout.replace("│", " ").split())


# Threads on a busy machine


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_command_lets_waiting_threads_sleep_unless_told_otherwise(given, expected):
    environment = {key: value for key, value in _child_environment().items() if key != "OMP_WAIT_POLICY"}
    if given is not None:
        environment["OMP_WAIT_POLICY"] = given
    script = "import os, sys, movq_cli.cli; assert 'torch' not in sys.modules; print(os.environ['OMP_WAIT_POLICY'])"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


# Smaller things


@pytest.fixture
def clip(tmp_path):
    path = tmp_path / "clip.npy"
    np.save(path, np.random.default_rng(4).integers(0, 64, (12, 3, 4)))
    return path


def test_frames_n_decodes_that_one_frame(clip, small_folder, tmp_path):
    import movq_cli

    model = movq_cli.load(small_folder[0], device="cpu")
    expected = list(movq_cli.decode_frames(clip, model, frames=[10]))[0]
    for selection, number in (("10", 10), ("-1", 11)):
        result = movq("decode", clip, tmp_path / f"frame{number}.png", "-w", small_folder[0], "--frames", selection)
        assert result.exit_code == 0, result.output
        from imageio.v3 import imread

        if number == 10:
            assert np.array_equal(imread(tmp_path / "frame10.png"), expected)


def test_source_numbers_name_png_frames_by_their_number_in_the_clip(clip, small_folder, tmp_path):
    result = movq("decode", clip, tmp_path / "every5/", "-w", small_folder[0], "--frames", "::5", "--source-numbers")
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in (tmp_path / "every5").iterdir()) == [
        MANIFEST,
        "00000.png",
        "00005.png",
        "00010.png",
    ]
    plain = movq("decode", clip, tmp_path / "plain/", "-w", small_folder[0], "--frames", "::5")
    assert plain.exit_code == 0
    assert sorted(path.name for path in (tmp_path / "plain").glob("*.png")) == ["00000.png", "00001.png", "00002.png"]
    refused = movq("decode", clip, tmp_path / "one.mp4", "-w", small_folder[0], "--source-numbers")
    assert_one_line_error(refused, 2, "--source-numbers names the files of a folder of PNG frames")


def test_out_dash_is_refused_rather_than_made_a_folder(clip, small_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(movq("decode", clip, "-", "-w", small_folder[0]), 2, "OUT - would be standard output")
    assert not (tmp_path / "-").exists()


def test_out_the_inputs_own_folder_says_to_name_a_file(clip, small_folder):
    result = movq("decode", clip, clip.parent, "-w", small_folder[0])
    assert_one_line_error(result, 2, f"to write one file there, name it: {clip.parent / 'clip'}.mp4")


def test_fp16_on_the_cpu_gets_a_note(clip, small_folder, tmp_path):
    result = movq("decode", clip, tmp_path / "f.png", "-w", small_folder[0], "--frames", "0", "--dtype", "fp16",
                  "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "fp16 is slow on the CPU" in result.stderr and "--dtype bf16" in result.stderr
    quiet = movq("decode", clip, tmp_path / "g.png", "-w", small_folder[0], "--frames", "0", "--dtype", "bf16")
    assert "is slow on the CPU" not in quiet.stderr


# a Ctrl-C that lands while the command's modules are still loading (here: as typer is imported)
INTERRUPTED_START = """
import importlib.abc, sys

class CtrlC(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "typer":
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, CtrlC())
sys.argv = ["movq", "--version"]
from movq_cli.entry import main
main()
"""


def test_ctrl_c_while_the_command_starts_is_one_line_and_exit_130():
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_START], capture_output=True, text=True, env=_child_environment()
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == "interrupted" and done.stdout == ""


def test_a_batch_of_clips_to_png_names_png_dir(tmp_path, small_folder):
    folder = tmp_path / "clips"
    folder.mkdir()
    np.save(folder / "a.npy", np.zeros((3, 3, 4), np.int64))
    result = movq("decode", folder, tmp_path / "out", "-w", small_folder[0], "--format", "png", "--json")
    assert result.exit_code == 1
    assert "--format png-dir" in json.loads(result.stdout)["error"]


def test_encode_says_what_it_cropped(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((20, 27, 3), 100, np.uint8)).save(tmp_path / "odd.png")
    result = movq("encode", tmp_path / "odd.png", tmp_path / "odd.npy")
    assert result.exit_code == 0, result.output
    assert "cropped 20x27 to 20x24" in result.stderr, result.stderr  # the bundled model: 4 pixels a code
    exact = Image.fromarray(np.full((16, 24, 3), 100, np.uint8))
    exact.save(tmp_path / "exact.png")
    assert "cropped" not in movq("encode", tmp_path / "exact.png", tmp_path / "exact.npy").stderr


def test_inspect_exits_1_when_the_codes_do_not_fit_the_model(small_folder, tmp_path):
    np.save(tmp_path / "big.npy", np.full((1, 2, 2), 500))
    result = movq("inspect", tmp_path / "big.npy", "-w", small_folder[0])
    assert result.exit_code == 1 and "fits the model" in result.stdout and "no:" in result.stdout
    np.save(tmp_path / "fine.npy", np.zeros((1, 2, 2), np.int64))
    assert movq("inspect", tmp_path / "fine.npy", "-w", small_folder[0]).exit_code == 0


def test_a_failing_nvenc_quotes_the_encoders_own_line(monkeypatch):
    from movq_cli.errors import InputError
    from movq_cli.io import writers

    stderr = (
        "[h264_nvenc @ 0x55f9bb731b40] Cannot load libcuda.so.1\n"
        "[vost#0:0/h264_nvenc @ 0x55f9bb730fc0] [enc:h264_nvenc @ 0x55f] Error while opening encoder\n"
        "[out#0/null @ 0x55f9bb730400] Nothing was written into output file, because at least one of its streams "
        "received no packets.\n"
    )
    monkeypatch.setattr(
        writers.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 255, stdout="", stderr=stderr)
    )
    writers._check_nvenc.cache_clear()
    try:
        with pytest.raises(InputError, match=r"ffmpeg says: Cannot load libcuda\.so\.1$"):
            writers._check_nvenc()
    finally:
        writers._check_nvenc.cache_clear()


def test_decode_help_shows_no_python_types(small_folder):
    text = movq("decode", "--help").stdout
    assert "<list[str]>" not in text and "list[str]" not in text
