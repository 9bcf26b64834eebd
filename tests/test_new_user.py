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
from conftest import movq
from safetensors import safe_open

from movq_cli.checkpoints.bundled import default_weights


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
