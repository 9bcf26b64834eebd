"""Scanning a code file looks at bounded pieces: bands of rows when one frame is too big."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SMALL_CONFIG

from movq_cli.errors import InputError
from movq_cli.io import codes as codes_io
from movq_cli.report import code_stats, latent_stats


@pytest.fixture
def tiny_scans(monkeypatch):
    monkeypatch.setattr(codes_io, "SCAN_BYTES", 200)  # a 40x30 int16 frame is 2400 bytes: 3-row bands


def test_pieces_cover_every_code_once_in_bands_of_rows(tmp_path, tiny_scans):
    array = np.random.default_rng(0).integers(0, 500, (3, 40, 30), dtype=np.int16)
    np.save(tmp_path / "big.npy", array)
    clip = codes_io.read(tmp_path / "big.npy")
    pieces = list(clip.pieces())
    assert all(block.nbytes <= 200 for _, _, block in pieces)
    rebuilt = np.zeros_like(array)
    for frame, row, block in pieces:
        rebuilt[frame, row : row + block.shape[1]] = block[0]
    assert np.array_equal(rebuilt, array)
    values, counts = np.unique(array, return_counts=True)
    stats = code_stats(clip)
    assert (stats["min"], stats["max"], stats["distinct"]) == (values.min(), values.max(), len(values))
    assert stats["top"][0][1] == counts.max()


def test_a_bad_code_deep_in_a_big_frame_is_reported_at_its_place(tmp_path, tiny_scans):
    array = np.zeros((2, 40, 30), dtype=np.int16)
    array[1, 37, 11] = 999
    np.save(tmp_path / "big.npy", array)
    with pytest.raises(InputError, match="code 999 at frame 1, row 37, column 11"):
        codes_io.check_fits(codes_io.read(tmp_path / "big.npy"), SMALL_CONFIG.embed_dim, SMALL_CONFIG.n_codes)


def test_a_bad_latent_deep_in_a_big_frame_is_reported_at_its_place(tmp_path, tiny_scans):
    array = np.zeros((1, 4, 20, 10), dtype=np.float32)
    array[0, 2, 17, 3] = np.nan
    np.save(tmp_path / "big.npy", array)
    clip = codes_io.read(tmp_path / "big.npy")
    with pytest.raises(InputError, match="latent nan at frame 0, channel 2, row 17, column 3"):
        codes_io.check_fits(clip, SMALL_CONFIG.embed_dim, SMALL_CONFIG.n_codes)
    assert latent_stats(clip)["nan"] == 1
