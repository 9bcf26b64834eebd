"""`movq preview`: a contact sheet of evenly spaced, numbered frames, decoded alone."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import assert_one_line_error, movq

from movq_cli.preview import BACKGROUND, GAP, contact_sheet, draw_number, frame_numbers, label_box


@pytest.mark.parametrize(
    "n_frames, count, expected",
    [(10, 4, [0, 3, 6, 9]), (3, 8, [0, 1, 2]), (1, 8, [0]), (100, 2, [0, 99]), (7, 1, [0])],
)
def test_frame_numbers_are_evenly_spaced_from_first_to_last(n_frames, count, expected):
    assert frame_numbers(n_frames, count) == expected


def test_numbers_are_drawn_inside_their_box_only():
    tile = np.full((40, 40, 3), 100, np.uint8)
    draw_number(tile, 1234)
    height, width = label_box(1234, 40)
    assert (tile[height:] == 100).all() and (tile[:, width:] == 100).all()
    assert (tile[:height, :width] == 255).any() and (tile[:height, :width] == 0).any()


def test_sheet_layout_leaves_gaps_and_fills_unused_tiles_with_background():
    frames = np.full((5, 6, 8, 3), 7, np.uint8)
    sheet = contact_sheet(frames, [0, 1, 2, 3, 4], columns=3)
    assert sheet.shape == (2 * 6 + GAP, 3 * 8 + 2 * GAP, 3)
    assert (sheet[6:8] == BACKGROUND).all() and (sheet[8:, 2 * (8 + GAP) :] == BACKGROUND).all()


def test_preview_tiles_equal_the_decoded_frames(small_folder, tmp_path):
    np.save(tmp_path / "clip.npy", np.random.default_rng(0).integers(0, 64, (10, 8, 8)))
    assert movq("decode", tmp_path / "clip.npy", tmp_path / "all", "-w", small_folder[0], "-q").exit_code == 0
    result = movq(
        "preview",
        tmp_path / "clip.npy",
        tmp_path / "sheet.png",
        "-w",
        small_folder[0],
        "--count",
        "4",
        "--columns",
        "3",
    )
    assert result.exit_code == 0, result.output
    assert "frames 0, 3, 6, 9 of 10" in result.stderr
    sheet = iio.imread(tmp_path / "sheet.png")
    assert sheet.shape == (2 * 16 + GAP, 3 * 16 + 2 * GAP, 3)
    for i, number in enumerate([0, 3, 6, 9]):
        top, left = (i // 3) * (16 + GAP), (i % 3) * (16 + GAP)
        tile = sheet[top : top + 16, left : left + 16].astype(int)
        frame = iio.imread(tmp_path / "all" / f"{number:05d}.png").astype(int)
        box_height, box_width = label_box(number, 16)
        drawn = np.zeros((16, 16), bool)
        drawn[:box_height, :box_width] = True
        assert np.abs(tile - frame)[~drawn].max() <= 1
        assert (tile[drawn] != frame[drawn]).any()


def test_preview_refuses_what_is_not_a_png(small_folder, tmp_path):
    np.save(tmp_path / "clip.npy", np.zeros((3, 4, 4), np.int64))
    assert_one_line_error(
        movq("preview", tmp_path / "clip.npy", tmp_path / "s.mp4", "-w", small_folder[0]), 2, "NAME.png"
    )
    np.save(tmp_path / "bad.npy", np.full((3, 4, 4), 70))
    assert_one_line_error(
        movq("preview", tmp_path / "bad.npy", tmp_path / "s.png", "-w", small_folder[0]), 2, "code 70 at frame 0"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy", "clip.npy"]
