"""Arrays that stay in their file: frames read a few at a time with ordinary reads.

A memory map would be simpler, but a mapped file that shrinks while it is read (truncated,
or rewritten by `np.save`) kills the process with SIGBUS. Reads instead see the end of the file,
and the file's size and modification time, checked before each read, show a rewrite: both
become one InputError, and memory stays flat however long the clip.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from movq_cli.errors import InputError, reason


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading, if it is a regular file (a link to one too); InputError for a
    folder, a pipe or a device, which are refused before they can block or be read only once."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once rather than blocking
    except FileNotFoundError:
        if os.path.islink(path):
            raise InputError(f"{path} is a link to {os.readlink(path)}, which does not exist") from None
        raise InputError(f"codes file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, not a code file") from None
    except OSError as error:
        raise InputError(f"cannot read {path}: {reason(error)}") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        if stat.S_ISDIR(mode):
            raise InputError(f"{path} is a folder, not a code file")
        what = "a pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise InputError(f"{path} is {what}, not a file; save the codes to a file first")
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")


class FileSource:
    """Bytes of one file, read at offsets; InputError when the file changes or ends early."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open_regular(path)
        self.signature = self._signature()

    def _signature(self) -> tuple[int, int]:
        status = os.fstat(self.file.fileno())
        return status.st_size, status.st_mtime_ns

    @property
    def size(self) -> int:
        return self.signature[0]

    def check(self) -> None:
        """InputError if the file was changed (truncated, rewritten) since it was opened."""
        if self._signature() != self.signature:
            raise InputError(f"{self.path} changed while it was being read; decode it again once it is written")

    def read_into(self, offset: int, buffer: memoryview) -> None:
        self.check()
        self.file.seek(offset)
        _fill(self.file, buffer, self.path)

    def __getstate__(self) -> dict:
        raise TypeError("a code file being read stays in its process")


class ZipMemberSource(FileSource):
    """Bytes of one compressed member of a zip file, inflated as they are read: reading on from
    where the last read ended costs only what is read; going back inflates from the start again."""

    def __init__(self, path: Path, name: str) -> None:
        super().__init__(path)
        self.archive = zipfile.ZipFile(self.file)
        self.name = name
        self.member = self.archive.open(name)

    def read_into(self, offset: int, buffer: memoryview) -> None:
        self.check()
        if offset < self.member.tell():
            self.member = self.archive.open(self.name)
        try:
            self.member.seek(offset)
            _fill(self.member, buffer, self.path)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
            raise InputError(f"{self.path}: damaged .npz file ({error})") from None


READ_BYTES = 4 << 20  # at most this much in one read: a zip member's read makes copies of it


def _fill(file: BinaryIO, buffer: memoryview, path: Path) -> None:
    done = 0
    while done < len(buffer):
        count = file.readinto(buffer[done : done + READ_BYTES])
        if not count:
            raise InputError(f"{path} ended {len(buffer) - done} bytes early: it was cut short while being read")
        done += count


class StoredArray:
    """A C-ordered array of `dtype` and `shape` at `offset` in `source`, never read whole.

    It takes what the code reading it needs of a numpy array: `shape` and friends, `reshape` (its
    layout stays the file's), slicing along the first axis (lazy, as a view), a list of indices
    or a band of rows of one frame (`[i:i + 1, ..., r0:r1, :]`, read now), and `np.array()`.
    """

    def __init__(
        self, source: FileSource, offset: int, dtype: np.dtype, shape: tuple[int, ...], rows: range | None = None
    ) -> None:
        self.source, self.offset, self.dtype, self.shape = source, offset, np.dtype(dtype), tuple(shape)
        self.rows = range(self.shape[0]) if rows is None else rows  # the file's indices along the first axis
        if rows is not None:
            self.shape = (len(rows), *self.shape[1:])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def reshape(self, *shape) -> StoredArray:
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], tuple) else tuple(shape)
        if self.rows != range(len(self.rows)) or math.prod(shape) != self.size:
            raise ValueError(f"cannot reshape {self.shape} to {shape}")
        return StoredArray(self.source, self.offset, self.dtype, shape)

    def _row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    def __getitem__(self, index):
        if isinstance(index, slice):
            return StoredArray(self.source, self.offset, self.dtype, self.shape, self.rows[index])
        if isinstance(index, (int, np.integer)):
            return self._read([self.rows[index]])[0]
        if isinstance(index, tuple) and len(index) == 4 and index[1] is Ellipsis:
            frames, _, band, _ = index
            return np.stack([self._read_band(self.rows[i], band) for i in range(len(self.rows))[frames]])
        return self._read([self.rows[i] for i in index])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self._read(self.rows)
        return array if dtype is None else array.astype(dtype, copy=False)

    def _read(self, rows) -> np.ndarray:
        """The rows (file indices along the first axis) in memory, runs of neighbours in one read each."""
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        flat, size, i = out.reshape(len(rows), -1).view(np.uint8), self._row_bytes(), 0
        while i < len(rows):
            run = 1
            while i + run < len(rows) and rows[i + run] == rows[i] + run:
                run += 1
            self.source.read_into(self.offset + rows[i] * size, memoryview(flat[i : i + run]).cast("B"))
            i += run
        return out

    def _read_band(self, row: int, band: slice) -> np.ndarray:
        """Rows `band` of the last-but-one axis of one frame (a frame of codes, or every channel of latents)."""
        *planes, height, width = self.shape[1:]
        start, stop, _ = band.indices(height)
        line = width * self.dtype.itemsize
        out = np.empty((math.prod(planes), max(0, stop - start), width), self.dtype)
        for plane in range(out.shape[0]):
            where = self.offset + row * self._row_bytes() + (plane * height + start) * line
            self.source.read_into(where, memoryview(out[plane].reshape(-1).view(np.uint8)).cast("B"))
        return out.reshape(*planes, out.shape[1], width)
