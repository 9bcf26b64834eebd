"""What a new user meets first: usage errors in one line, help like a man page, a fast start,
honest messages about the torch build, the summary line, --threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, movq

from movq_cli.io.targets import MANIFEST


@pytest.fixture
def codes_file(tmp_path):
    path = tmp_path / "codes.npy"
    np.save(path, np.random.default_rng(0).integers(0, 64, (3, 4, 4)))
    return path


USAGE_ERRORS = [
    (["decode", "{codes}", "{tmp}/x.mp4", "--chunk", "0"], "--chunk"),
    (["decode", "{codes}", "{tmp}/x.mp4", "--fps", "0"], "--fps"),
    (["decode", "{codes}", "{tmp}/x.mp4", "--crf", "60"], "--crf"),
    (["decode", "{codes}", "{tmp}/x.mp4", "--threads", "0"], "--threads"),
    (["decode", "{codes}", "{tmp}/x.mp4", "--dtype", "fp8"], "--dtype"),
    (["decode", "{codes}", "{tmp}/x.mp4", "--grid", "3x"], "--grid"),
    (["decode", "{codes}", "{tmp}/x.mp4", "--frames", "1:2:0"], "step cannot be zero"),
    (["decode", "{codes}", "{tmp}/x.mp4", "--no-such-flag"], "--no-such-flag"),
    (["decode"], "missing argument"),
    (["preview", "{codes}", "{tmp}/x.png", "--count", "0"], "--count"),
    (["info"], "missing argument"),
    (["nonsense"], "no such command"),
]


@pytest.mark.parametrize(
    "command, needle", USAGE_ERRORS, ids=lambda value: " ".join(value) if isinstance(value, list) else None
)
def test_usage_errors_are_one_line_and_exit_2(command, needle, codes_file, tmp_path):
    fill = {"codes": codes_file, "tmp": tmp_path}
    result = movq(*[part.format(**fill) for part in command])
    assert_one_line_error(result, 2, needle)
    assert "╭" not in result.output and "Usage:" not in result.output


def test_usage_errors_from_the_real_command_are_one_line(codes_file, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "movq_cli", "decode", str(codes_file), str(tmp_path / "x.mp4"), "--chunk", "0"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: Invalid value for '--chunk'")


@pytest.mark.parametrize(
    "command, usage",
    [
        ("decode", "movq decode [OPTIONS] CODES... OUT"),
        ("encode", "movq encode [OPTIONS] SOURCE OUT"),
        ("preview", "movq preview [OPTIONS] CODES... [OUT]"),
        ("compare", "movq compare [OPTIONS] CODES [OUT]"),
        ("roundtrip", "movq roundtrip [OPTIONS] SOURCE [OUT]"),
        ("convert", "movq convert [OPTIONS] WEIGHTS TARGET"),
        ("info", "movq info [OPTIONS] WEIGHTS"),
        ("inspect", "movq inspect [OPTIONS] CODES"),
    ],
)
def test_help_reads_like_a_man_page(command, usage):
    result = movq(command, "--help")
    assert result.exit_code == 0
    assert f"Usage: {usage}" in " ".join(result.stdout.split())
    assert "<bool>" not in result.stdout and "{" not in result.stdout.split("Usage:")[1].splitlines()[0]


def test_shell_completion_is_offered():
    from conftest import runner

    from movq_cli.cli import app

    result = runner.invoke(app, ["--help"], env={"COLUMNS": "120"})  # option names whole, however narrow the terminal
    assert result.exit_code == 0
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout


def test_version_and_help_do_not_import_torch():
    """torch takes about a second to import; --version and --help must not wait for it."""
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from movq_cli.cli import app\n"
        "for args in (['--version'], ['--help'], ['decode', '--help'], ['info', '--help'], ['compare', '--help']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
        "print('torch' in sys.modules, 'numpy' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_cuda_on_a_cpu_only_torch_build_says_so(codes_file, small_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    result = movq("decode", codes_file, tmp_path / "x.mp4", "-w", small_folder[0], "--device", "cuda")
    assert_one_line_error(result, 2, "this torch build")
    assert "no CUDA support" in result.stderr and "pip install torch" in result.stderr


def test_cuda_build_without_a_device_says_so(codes_file, small_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = movq("decode", codes_file, tmp_path / "x.mp4", "-w", small_folder[0], "--device", "cuda:0")
    assert_one_line_error(result, 2, "no CUDA device")


def test_summary_names_device_dtype_and_threads(codes_file, small_folder, tmp_path):
    previous = torch.get_num_threads()
    try:
        result = movq("decode", codes_file, tmp_path / "f", "-w", small_folder[0], "--threads", "1", "--dtype", "bf16")
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("wrote 3 frame(s) of 8x8") and "cpu, bf16, 1 thread(s)" in line


def test_batch_summary_names_the_decoder(codes_file, small_folder, tmp_path):
    result = movq("decode", tmp_path / "*.npy", tmp_path / "out", "-w", small_folder[0], "--format", "png-dir")
    assert result.exit_code == 0, result.output
    assert "1 done" in result.stderr and "(cpu, fp32," in result.stderr


def test_a_narrow_terminal_and_a_long_path_keep_file_names_whole(small_folder, tmp_path):
    """Summaries on a non-terminal stderr are never wrapped: people copy the paths."""
    deep = tmp_path / ("a_rather_long_folder_name_" * 5) / "codes"
    deep.mkdir(parents=True)
    np.save(deep / "good.npy", np.zeros((1, 4, 4), np.int64))
    np.save(deep / "a_file_with_a_long_name_that_fails.npy", np.full((1, 4, 4), 99))
    env = {**os.environ, "COLUMNS": "40"}
    done = subprocess.run(
        [sys.executable, "-m", "movq_cli", "decode", str(deep), str(tmp_path / "out"), "-w", str(small_folder[0]),
         "--json"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    bad = deep / "a_file_with_a_long_name_that_fails.npy"
    assert f"failed: {bad}: " in done.stderr
    assert any(str(bad) in line for line in done.stderr.splitlines())
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(row["status"] for row in rows) == ["done", "failed"]


def test_a_trailing_slash_names_a_folder_whatever_its_suffix(codes_file, small_folder, tmp_path):
    result = movq("decode", codes_file, f"{tmp_path / 'out.v2'}/", "-w", small_folder[0])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out.v2").iterdir()) == [MANIFEST, "00000.png", "00001.png", "00002.png"]
    assert_one_line_error(movq("decode", codes_file, tmp_path / "out.v3", "-w", small_folder[0]), 2, "cannot write .v3")


def test_skip_existing_on_one_file_leaves_it_and_says_so(codes_file, small_folder, tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"not touched")
    result = movq("decode", codes_file, tmp_path / "clip.mp4", "-w", small_folder[0], "--skip-existing", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "skipped" and "skipped:" in result.stderr
    assert (tmp_path / "clip.mp4").read_bytes() == b"not touched"


def test_info_in_a_narrow_terminal_keeps_each_value_on_one_line():
    env = {**os.environ, "COLUMNS": "40"}
    done = subprocess.run(
        [sys.executable, "-m", "movq_cli", "info", "default"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert any(
        line.startswith("file holds") and "229 tensors, 2,718,159 parameters" in line
        for line in done.stdout.splitlines()
    )
