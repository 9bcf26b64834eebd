"""Code files as PyTorch users write them: `torch.save` (.pt/.pth, zip and legacy formats) and
.safetensors, holding one tensor or a dict of them (nested, as training scripts save them).

Nothing here runs code from a file: pickles are read with `torch.load(weights_only=True)`, which
rebuilds only tensors and plain containers. A .safetensors tensor stays in its file and is read a
few frames at a time, like a .npy file (`stored.StoredArray`: never memory-mapped, so a file that
shrinks while it is read is an error, not SIGBUS); a .pt file is read whole.
"""

from __future__ import annotations

import json
import math
import pickle
import struct
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from movq_cli.errors import InputError, first_line
from movq_cli.io.stored import FileSource, StoredArray

MAX_HEADER = 100 << 20  # a .safetensors header larger than this is not one
# .safetensors dtype names -> numpy (BF16 is read as its 16 bits and widened, numpy has no bfloat16)
SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip


def is_safetensors(start: bytes) -> bool:
    """Whether a file's first bytes are a .safetensors header: its length (8 bytes), then '{'."""
    return len(start) >= 9 and start[8:9] == b"{" and 2 <= struct.unpack("<Q", start[:8])[0] <= MAX_HEADER


def is_torch_zip(path: Path) -> bool:
    """Whether the zip archive at `path` was written by torch.save (it holds NAME/data.pkl)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except Exception:  # any damage (zipfile raises half a dozen kinds): the .npz reader names it
        return False


def read_tensor_file(path: Path, key: str | None, safetensors: bool) -> np.ndarray | StoredArray:
    """The array named `key` (None: the only one) in a .safetensors or torch.save file.

    Nested dicts are named by their keys joined with dots ("latents.video"); lists by position."""
    tensors = _safetensors_arrays(path) if safetensors else _pickled_tensors(path)
    if not tensors:
        kind = "a .safetensors file" if safetensors else "a pickle (torch.save)"
        raise InputError(f"{path} is {kind} that holds no tensors")
    found = tensors[choose(tensors, key, path, "tensor", _listing(tensors))]
    return found() if callable(found) else _as_numpy(found, path)


def read_tensor_list(path: Path, key: str | None, safetensors: bool) -> list[np.ndarray | StoredArray]:
    """The tensors named `key` in a .safetensors or torch.save file: the one of that name, or every
    one under it (a list or dict saved as `key`), in the order they were saved (a .safetensors
    file: by name, numbers in order); without a key, every tensor in the file."""
    every = _safetensors_arrays(path) if safetensors else _pickled_tensors(path)
    if safetensors:
        every = dict(sorted(every.items(), key=lambda item: _name_order(item[0])))
    tensors = every
    if key is not None and key in every:
        tensors = {key: every[key]}
    elif key is not None:
        tensors = {name: tensor for name, tensor in every.items() if name.startswith(f"{key}.")}
        if not tensors:
            raise InputError(f"{path} has no tensor or list of tensors {key!r} (it has: {_listing(every) or 'none'})")
    if not tensors:
        raise InputError(f"{path} holds no tensors")
    return [found() if callable(found) else _as_numpy(found, path) for found in tensors.values()]


def _name_order(name: str) -> list[tuple[int, int | str]]:
    """A sort key for dotted names that puts "ids.2" before "ids.10"."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in name.split(".")]


def choose(named: Mapping, key: str | None, path: Path, noun: str, listing: str) -> str:
    """`key`, checked to name one of `named` (the arrays or tensors of the file `path`, listed as
    `listing`); without a key, the only name there is."""
    if key is None:
        if len(named) != 1:
            raise InputError(f"{path} holds {len(named)} {noun}s ({listing}); choose one with key=NAME")
        return next(iter(named))
    if key not in named:
        raise InputError(f"{path} has no {noun} {key!r} (it has: {listing or 'none'})")
    return key


def _listing(tensors: dict) -> str:
    names = [f"{name} {_shape(value)}" for name, value in tensors.items()]
    return ", ".join(names[:12]) + (f", ... {len(names) - 12} more" if len(names) > 12 else "")


def _shape(value) -> str:
    return str(tuple(value.shape))


def _pickled_tensors(path: Path) -> dict:
    import torch  # only here: reading .npy files must not pay for importing torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's warnings about old formats; failures are reported below
            contents = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        blocked = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        detail = f" ({blocked[0][:160]})" if blocked else ""
        raise InputError(
            f"{path}: a pickle that torch.load(weights_only=True) cannot read without running code; refused{detail}"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise InputError(f"{path}: damaged torch.save file ({first_line(error)})") from None
    return dict(_flatten(contents, "", torch.Tensor))


def _flatten(contents, prefix: str, tensor_type):
    """(dotted name, tensor) pairs of the tensors in nested dicts, lists and tuples."""
    if isinstance(contents, tensor_type):
        yield prefix, contents
    elif isinstance(contents, Mapping):
        for name, value in contents.items():
            yield from _flatten(value, f"{prefix}.{name}" if prefix else str(name), tensor_type)
    elif isinstance(contents, (list, tuple)):
        for index, value in enumerate(contents):
            yield from _flatten(value, f"{prefix}.{index}" if prefix else str(index), tensor_type)


def _as_numpy(tensor, path: Path) -> np.ndarray:
    """A CPU tensor as numpy, sharing its memory where numpy has its dtype; bfloat16 widened to float32."""
    import torch

    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        return tensor.float().numpy()
    if tensor.dtype.is_complex or tensor.dtype == torch.bool:
        return tensor.numpy()  # refused by its dtype, by name, with the rest of the checks
    try:
        return tensor.numpy()
    except TypeError:  # a dtype numpy lacks (float8, ...): refuse it by name
        dtype = str(tensor.dtype).removeprefix("torch.")
        raise InputError(f"{path} holds {dtype} numbers; codes must be integers and latents floats") from None


class _Stored:
    """One tensor of a .safetensors file: its shape now, its values when called (bfloat16 read and
    widened at once; other dtypes left in the file, read as they are used)."""

    def __init__(self, path: Path, name: str, entry: dict, data_start: int) -> None:
        self.path, self.name = path, name
        self.dtype_name = entry["dtype"]
        self.shape = tuple(int(size) for size in entry["shape"])
        self.start, self.stop = (data_start + int(offset) for offset in entry["data_offsets"])

    def __call__(self) -> np.ndarray | StoredArray:
        dtype = SAFETENSORS_DTYPES.get(self.dtype_name)
        if dtype is None:
            raise InputError(f"{self.path}: tensor {self.name!r} is {self.dtype_name}, not a number movq reads")
        dtype = np.dtype(dtype).newbyteorder("<")
        if self.stop - self.start != math.prod(self.shape) * dtype.itemsize:
            raise InputError(f"{self.path}: damaged .safetensors file (tensor {self.name!r} has the wrong size)")
        if math.prod(self.shape) == 0:
            return np.empty(self.shape, dtype)
        values = StoredArray(FileSource(self.path), self.start, dtype, self.shape)
        if self.dtype_name == "BF16":  # the high half of a float32
            return (np.array(values).astype(np.uint32) << 16).view(np.float32)
        return values


def _safetensors_arrays(path: Path) -> dict[str, _Stored]:
    try:
        with open(path, "rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
        size = path.stat().st_size
        stored = {
            name: _Stored(path, name, entry, 8 + length) for name, entry in header.items() if name != "__metadata__"
        }
    except (OSError, ValueError, KeyError, TypeError, struct.error) as error:
        raise InputError(f"{path}: damaged .safetensors file ({first_line(error)})") from None
    for tensor in stored.values():
        if not 8 + length <= tensor.start <= tensor.stop <= size:
            raise InputError(f"{path} is truncated: {size} bytes, tensor {tensor.name!r} ends at byte {tensor.stop}")
    return stored
