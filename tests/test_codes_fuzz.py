"""Random and corrupted code files: movq_cli.io.codes either reads them or raises InputError, nothing else."""

from __future__ import annotations

import io
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from conftest import SMALL_CONFIG
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from movq_cli.errors import InputError
from movq_cli.io import codes as codes_io

CONFIGS = [SMALL_CONFIG, replace(SMALL_CONFIG, n_embed=None)]  # integer codes need a codebook
DTYPES = st.sampled_from(["i1", "u1", "<i2", ">i4", "<u8", "<i8", "<f2", "<f4", ">f8", "?", "<c8", "U3", "S2"])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _read_and_check(data: bytes, suffix: str = ".npy", grid=None, frames=None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"codes{suffix}"
        path.write_bytes(data)
        try:
            clip = codes_io.read(path, grid=grid)
            if frames is not None:
                clip = clip.select(frames)
            for config in CONFIGS:
                try:
                    codes_io.check_fits(clip, config.embed_dim, config.n_codes)
                except InputError:
                    pass
            clip.describe()
        except InputError:
            pass


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


arrays = DTYPES.flatmap(lambda dtype: hnp.arrays(np.dtype(dtype), SHAPES))
grids = st.none() | st.tuples(st.integers(1, 5), st.integers(1, 5))
slices = st.none() | st.builds(
    slice, st.integers(-6, 6) | st.none(), st.integers(-6, 6) | st.none(), st.sampled_from([None, 1, 2, -1, 3])
)


@FUZZ
@given(array=arrays, grid=grids, frames=slices)
def test_random_arrays_are_read_or_refused(array, grid, frames):
    _read_and_check(_npy(array), grid=grid, frames=frames)


@FUZZ
@given(array=arrays, data=st.data())
def test_corrupted_bytes_are_read_or_refused(array, data):
    raw = bytearray(_npy(array))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    _read_and_check(bytes(raw[:cut] if data.draw(st.booleans()) else raw))


@FUZZ
@given(header=st.binary(max_size=200), body=st.binary(max_size=64))
def test_arbitrary_headers_are_read_or_refused(header, body):
    _read_and_check(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + body)


@FUZZ
@given(array=arrays, data=st.data())
def test_corrupted_npz_files_are_read_or_refused(array, data):
    buffer = io.BytesIO()
    np.savez(buffer, codes=array)
    raw = bytearray(buffer.getvalue())
    for _ in range(data.draw(st.integers(0, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _read_and_check(bytes(raw), suffix=".npz")
