"""Pickled PyTorch checkpoints (.ckpt, .pt, .pth, .bin), read without running any of their code.

`torch.load(weights_only=True)` only rebuilds tensors, containers and plain values; a file that
needs anything else (a class, a function) is refused rather than executed.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from movq_cli.checkpoints.layouts import TELLTALES
from movq_cli.errors import InputError, first_line
from movq_cli.io.codes import ZIP_MAGIC

SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# Keys under which training code nests the model's state dict (Lightning, DDP, plain scripts).
WRAPPERS = ("state_dict", "model", "module")


def read_pickled(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the model's state dict in a pickled checkpoint, on the CPU, names as stored."""
    try:
        with open(path, "rb") as file:
            # the zip format (torch >= 1.6) can be memory-mapped, so a file of many GB costs no RAM
            mmap = file.read(4) == ZIP_MAGIC
        with warnings.catch_warnings():
            # torch warns about pickle protocols it may not handle; a failure is reported below
            warnings.simplefilter("ignore")
            contents = torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
    except pickle.UnpicklingError as error:
        # torch's message is a page long; the line naming what was blocked is the useful one
        blocked = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        detail = f" ({blocked[0][:160]})" if blocked else ""
        raise InputError(f"{path}: needs code execution to unpickle; refused{detail}") from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
        detail = f"{type(error).__name__}: {first_line(error)}" if str(error).strip() else type(error).__name__
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({detail})") from None
    state = unwrap(contents)
    if not state:
        raise InputError(f"{path}: holds no tensors (expected a state dict, possibly under 'state_dict')")
    return state


def unwrap(contents: object) -> dict[str, torch.Tensor]:
    """The tensors of the innermost state dict in `contents`: wrappers opened, other values dropped."""
    while isinstance(contents, Mapping) and not any(str(key).endswith(TELLTALES) for key in contents):
        inner = next((contents[key] for key in WRAPPERS if isinstance(contents.get(key), Mapping)), None)
        if inner is None:
            break
        contents = inner
    if not isinstance(contents, Mapping):
        return {}
    return {key: value for key, value in contents.items() if isinstance(key, str) and isinstance(value, torch.Tensor)}
