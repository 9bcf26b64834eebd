"""`movq compare` and `movq roundtrip`: two versions of the same frames in one sheet, scored
frame by frame with PSNR and an SSIM that equals scikit-image's."""

from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import skimage.data
from conftest import SMALL, assert_one_line_error, make_vqmodel, movq
from conftest import psnr as reference_psnr
from skimage.metrics import structural_similarity

from movq_cli.compare import DIFFERENCE_GAIN, compare, psnr, ssim
from movq_cli.errors import InputError
from movq_cli.preview import GAP, label_box

LABEL = 14  # the label strip above each row


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(
        a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )


@pytest.mark.parametrize("size", [(11, 11), (16, 24), (67, 45)])
def test_ssim_equals_scikit_images_on_random_pictures(size):
    rng = np.random.default_rng(sum(size))
    a = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, b) == pytest.approx(skimage_ssim(a, b), abs=1e-10)


def test_ssim_equals_scikit_images_on_a_photograph_and_its_blur():
    photo = skimage.data.astronaut()[:200, :300]
    blurred = ((photo[:-1, :-1].astype(int) + photo[1:, 1:]) // 2).astype(np.uint8)
    photo = photo[:-1, :-1]
    assert ssim(photo, blurred) == pytest.approx(skimage_ssim(photo, blurred), abs=1e-10)
    assert 0.5 < ssim(photo, blurred) < 0.99


def test_equal_frames_score_infinite_psnr_and_ssim_one_and_json_says_null():
    frames = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    result = compare(("a", frames), ("b", frames.copy()), [0, 5])
    assert math.isinf(result.psnr) and result.ssim == pytest.approx(1.0)
    assert result.as_json()["psnr"] is None and result.as_json()["frames"][1] == {"frame": 5, "psnr": None, "ssim": 1.0}
    _, _, gap = rows_of(result.sheet, 16, 16, 2)
    assert result.sheet.shape[0] == 3 * (LABEL + 16) + 2 * GAP
    assert not gap[outside_labels([0, 5], 16, 16)].any()


def test_psnr_of_different_frames_is_the_usual_one():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    assert psnr(a, b) == pytest.approx(reference_psnr(a, b))


def test_ssim_is_none_for_frames_smaller_than_its_window():
    assert ssim(np.zeros((10, 40, 3), np.uint8), np.zeros((10, 40, 3), np.uint8)) is None


def rows_of(sheet: np.ndarray, height: int, width: int, tiles: int) -> list[np.ndarray]:
    """The frames (tiles, H, W, 3) of each of the three rows of a comparison sheet."""
    rows = []
    for row in range(3):
        top = row * (LABEL + height + GAP) + LABEL
        rows.append(np.stack([sheet[top : top + height, i * (width + GAP) :][:, :width] for i in range(tiles)]))
    return rows


def outside_labels(numbers: list[int], height: int, width: int) -> np.ndarray:
    """(tiles, H, W) True where a tile shows its frame, not its number."""
    mask = np.ones((len(numbers), height, width), bool)
    for i, number in enumerate(numbers):
        box_height, box_width = label_box(number, height)
        mask[i, :box_height, :box_width] = False
    return mask


@pytest.fixture(scope="module")
def second_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("other") / "movq"
    make_vqmodel(**SMALL, seed=1).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_two_checkpoints_side_by_side_are_their_decodes_with_their_scores(small_folder, second_folder, tmp_path):
    np.save(tmp_path / "clip.npy", np.random.default_rng(2).integers(0, 64, (7, 8, 12)))
    for name, weights in (("a", small_folder[0]), ("b", second_folder)):
        assert movq("decode", tmp_path / "clip.npy", tmp_path / name, "-w", weights, "-q").exit_code == 0
    result = movq(
        "compare", tmp_path / "clip.npy", tmp_path / "sheet.png", "-w", small_folder[0],
        "--against-weights", second_folder, "--count", "3", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    numbers = [frame["frame"] for frame in report["frames"]]
    assert numbers == [0, 3, 6]
    a = np.stack([iio.imread(tmp_path / "a" / f"{n:05d}.png") for n in numbers])
    b = np.stack([iio.imread(tmp_path / "b" / f"{n:05d}.png") for n in numbers])
    for frame, x, y in zip(report["frames"], a, b, strict=True):
        assert frame["psnr"] == pytest.approx(psnr(x, y), abs=1e-4)
        assert frame["ssim"] == pytest.approx(skimage_ssim(x, y), abs=1e-9)
    assert report["psnr"] == pytest.approx(psnr(a, b), abs=1e-4)
    assert report["compared"].startswith(second_folder.name)
    shown = outside_labels(numbers, 16, 24)
    first, second, gap = rows_of(iio.imread(tmp_path / "sheet.png"), 16, 24, 3)
    assert np.array_equal(first[shown], a[shown]) and np.array_equal(second[shown], b[shown])
    expected_gap = np.clip(np.abs(a.astype(int) - b).max(-1) * DIFFERENCE_GAIN, 0, 255)
    assert np.array_equal(gap[shown][:, 0], expected_gap[shown])
    assert "PSNR" in result.stderr and "SSIM" in result.stderr


@pytest.mark.slow
def test_a_decode_beside_its_own_frames_as_source_is_equal(small_folder, tmp_path):
    np.save(tmp_path / "clip.npy", np.random.default_rng(3).integers(0, 64, (5, 8, 8)))
    assert movq("decode", tmp_path / "clip.npy", tmp_path / "frames", "-w", small_folder[0], "-q").exit_code == 0
    result = movq(
        "compare", tmp_path / "clip.npy", tmp_path / "s.png", "-w", small_folder[0], "--source", tmp_path / "frames",
        "--json", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["reference"] == "source: frames" and [f["frame"] for f in report["frames"]] == [0, 1, 2, 3, 4]
    assert report["psnr"] is None and all(f["psnr"] is None and f["ssim"] == 1.0 for f in report["frames"])
    np.save(tmp_path / "longer.npy", np.random.default_rng(3).integers(0, 64, (6, 8, 8)))
    result = movq(
        "compare", tmp_path / "longer.npy", tmp_path / "t.png", "-w", small_folder[0], "--source", tmp_path / "frames"
    )
    assert_one_line_error(result, 2, "has 5 frame(s)")
    assert not (tmp_path / "t.png").exists()


@pytest.mark.slow
def test_roundtrip_is_encode_then_decode_against_the_source(small_folder, tmp_path):
    photo = skimage.data.astronaut()[:37, :50]  # cropped to 36x50 by a factor of 2
    iio.imwrite(tmp_path / "photo.png", photo)
    assert movq("encode", tmp_path / "photo.png", tmp_path / "codes.npy", "-w", small_folder[0], "-q").exit_code == 0
    assert movq("decode", tmp_path / "codes.npy", tmp_path / "decoded.png", "-w", small_folder[0], "-q").exit_code == 0
    decoded, source = iio.imread(tmp_path / "decoded.png"), photo[:36, :50]
    result = movq("roundtrip", tmp_path / "photo.png", tmp_path / "sheet.png", "-w", small_folder[0], "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["frames"][0]["psnr"] == pytest.approx(psnr(source, decoded), abs=1e-4)
    assert report["frames"][0]["ssim"] == pytest.approx(skimage_ssim(source, decoded), abs=1e-9)
    first, second, _ = rows_of(iio.imread(tmp_path / "sheet.png"), 36, 50, 1)
    shown = outside_labels([0], 36, 50)
    assert np.array_equal(first[shown], source[None][shown]) and np.array_equal(second[shown], decoded[None][shown])


def test_compare_needs_exactly_one_thing_to_compare_with(small_folder, tmp_path):
    np.save(tmp_path / "clip.npy", np.zeros((2, 4, 4), np.int64))
    args = ["compare", tmp_path / "clip.npy", tmp_path / "s.png", "-w", small_folder[0]]
    assert_one_line_error(movq(*args), 2, "compare with one of")
    assert_one_line_error(movq(*args, "--against-dtype", "bf16", "--source", tmp_path), 2, "compare with one of")
    assert_one_line_error(movq(*args[:2], "--against-dtype", "bf16"), 2, "stdout is not a terminal")
    assert_one_line_error(movq(*args[:2], "--against-dtype", "bf16", "--json"), 2, "where --json prints")
    assert_one_line_error(movq(*args[:2], tmp_path / "s.mp4", "--against-dtype", "bf16"), 2, "NAME.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.npy"]


def test_a_comparison_of_frames_of_two_sizes_is_refused():
    with pytest.raises(InputError, match="8x4"):
        compare(("a", np.zeros((1, 4, 4, 3), np.uint8)), ("b", np.zeros((1, 4, 8, 3), np.uint8)), [0])
