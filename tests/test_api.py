"""The public API, used as a script would use it: `import movq_cli as movq`."""

from __future__ import annotations

import subprocess
import sys

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from conftest import codes_to_zq, diffusers_decode, to_pixels

import movq_cli as movq


@pytest.fixture(scope="module")
def clip(tmp_path_factory, small_folder):
    _, reference = small_folder
    codes = np.random.default_rng(7).integers(0, 64, (5, 3, 4))
    path = tmp_path_factory.mktemp("api") / "clip.npy"
    np.save(path, codes)
    return path, to_pixels(diffusers_decode(reference, codes_to_zq(reference, torch.from_numpy(codes))))


def test_load_decode_frames_equal_the_reference(clip, small_folder):
    path, expected = clip
    model = movq.load(small_folder[0], device="cpu", dtype="fp32")
    frames = list(movq.decode_frames(path, model, chunk=2))
    assert len(frames) == 5 and all(frame.shape == (6, 8, 3) and frame.dtype == np.uint8 for frame in frames)
    assert np.abs(np.stack(frames).astype(int) - expected).max() <= 1


def test_decode_frames_selects_with_a_slice(clip, small_folder):
    path, expected = clip
    model = movq.load(small_folder[0], device="cpu")
    frames = np.stack(list(movq.decode_frames(path, model, frames=slice(1, None, 2))))
    assert frames.shape[0] == 2
    assert np.abs(frames.astype(int) - expected[1::2]).max() <= 1


def test_decode_writes_a_file_and_reports_it(clip, small_folder, tmp_path):
    path, expected = clip
    model = movq.load(small_folder[0], device="cpu")
    seen = []
    result = movq.decode(path, tmp_path / "frames", model, on_frames=seen.append)
    assert result.frames == 5 and result.frame_size == (6, 8) and sum(seen) == 5
    written = np.stack([iio.imread(tmp_path / "frames" / f"{i:05d}.png") for i in range(5)])
    assert np.abs(written.astype(int) - expected).max() <= 1


def test_decode_to_mp4_takes_the_encoder(clip, small_folder, tmp_path):
    from movq_cli.errors import InputError

    path, _ = clip
    model = movq.load(small_folder[0], device="cpu")
    result = movq.decode(path, tmp_path / "clip.mp4", model, encoder="x264-ultrafast", crf=0)
    assert result.frames == 5 and imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "clip.mp4"))[0] == 5
    with pytest.raises(InputError, match="encoder"):
        movq.decode(path, tmp_path / "other.mp4", model, encoder="x264-warp-speed")
    assert not (tmp_path / "other.mp4").exists()


def test_encode_then_decode_with_the_bundled_model(tmp_path):
    image = np.zeros((32, 48, 3), np.uint8)
    image[:, 24:] = 200
    iio.imwrite(tmp_path / "picture.png", image)
    encoder = movq.load(encoder=True)
    result = movq.encode(tmp_path / "picture.png", tmp_path / "picture.npy", encoder)
    assert result.shape == (8, 12)
    decoded = next(movq.decode_frames(tmp_path / "picture.npy", movq.load()))
    assert decoded.shape == (32, 48, 3)
    assert decoded[:, :20].mean() < 60 and decoded[:, 28:].mean() > 150


def test_bad_input_raises_one_clear_error(small_folder, tmp_path):
    from movq_cli.errors import InputError

    model = movq.load(small_folder[0], device="cpu")
    np.save(tmp_path / "bad.npy", np.full((1, 2, 2), 10_000))
    with pytest.raises(InputError, match="outside"):
        next(movq.decode_frames(tmp_path / "bad.npy", model))
    with pytest.raises(InputError, match="not found"):
        movq.load(tmp_path / "missing.safetensors")


def test_importing_the_package_does_not_import_torch():
    done = subprocess.run(
        [sys.executable, "-c", "import sys, movq_cli; print(movq_cli.__version__, 'torch' in sys.modules)"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [movq.__version__, "False"]


def test_a_library_error_names_the_keyword_and_carries_its_hint(tmp_path):
    from movq_cli.errors import InputError, OutOfMemory, as_flags

    clip = np.zeros((1, 4, 4), dtype=np.int64)
    model = movq.load()
    with pytest.raises(InputError) as refused:
        movq.decode(clip, tmp_path / "one.png", model, fps=5)
    assert "fps=... has no use for .png output" in str(refused.value)
    assert "--" not in str(refused.value)
    assert as_flags(str(refused.value)).startswith("--fps has no use")
    error = OutOfMemory("out of memory on cpu while decoding x")
    assert str(error) == "out of memory on cpu while decoding x; try a smaller chunk=..."
    assert as_flags(str(error)).endswith("try a smaller --chunk")
    assert list(tmp_path.iterdir()) == []


def test_the_api_exports_its_model_result_and_error_types(tmp_path):
    for name in movq.__all__:
        assert getattr(movq, name) is not None, name
    assert issubclass(movq.InputError, movq.MovqError) and issubclass(movq.OutOfMemory, movq.RunError)
    model = movq.load()
    assert isinstance(model, movq.Model)
    result = movq.decode(np.zeros((1, 4, 4), dtype=np.int64), tmp_path / "one.png", model)
    assert isinstance(result, movq.DecodeResult) and result.frame_size == (16, 16)


def test_the_readme_lists_every_keyword_of_every_function():
    import inspect
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## From Python") :]
    section = " ".join(section[: section.index("\n## ")].split())
    for function in (movq.load, movq.decode, movq.decode_frames, movq.contact_sheet, movq.encode):
        listed = re.search(rf"`{function.__name__}\(([^`]*)\)`", section)
        assert listed, function.__name__
        names = [re.split(r"[=*]", word.strip())[0] for word in listed.group(1).split(",")]
        assert [n for n in names if n] == list(inspect.signature(function).parameters), function.__name__
