"""Choosing the device, the compute dtype and the chunk size."""

from __future__ import annotations

import os
import re

import torch

from movq_cli.errors import InputError
from movq_cli.models.config import MovqConfig
from movq_cli.models.footprint import frame_bytes, largest_activation

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BUDGET_BYTES = 512 << 20  # activations one chunk may use on the CPU: larger chunks are no faster there
# Values a chunk's activations need on the CPU to keep the cores busy. Past this, more frames per
# call were no faster (a Kandinsky frame of 128x128 pixels or more has them on its own) and held
# more memory; below it, per-operator overhead shows: the bundled model decoded 32x32-pixel
# frames 1.7x faster per frame four at a time than one at a time, 64x64 ones 1.2x.
CPU_BUSY_VALUES = 8 << 20
MAX_CHUNK = 64
# Activations of the largest size alive at once while a frame decodes, with room to spare: a
# ResBlock keeps its input for the shortcut while its norm and its convolution each make another.
LIVE_ACTIVATIONS = 4


def resolve_device(name: str) -> torch.device:
    """'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' -> a usable torch.device (InputError if not)."""
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise InputError("device=mps: Apple MPS is not available on this machine")
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise InputError(f"unknown device={name!r}; use auto, cpu, cuda, cuda:N or mps")
    if torch.version.cuda is None:
        raise InputError(
            f"device={name}: this torch build ({torch.__version__}) has no CUDA support; install a CUDA build "
            "of torch (https://pytorch.org/get-started/locally/), e.g. pip install torch --index-url "
            "https://download.pytorch.org/whl/cu126"
        )
    if not torch.cuda.is_available():
        raise InputError(f"device={name}: this torch build supports CUDA, but no CUDA device or driver was found")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise InputError(f"device={name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def resolve_devices(names: str) -> list[torch.device]:
    """A comma-separated --device list -> one usable device per worker (InputError if one is not).

    Each item is what `resolve_device` takes, or 'cuda:all' for every CUDA device; an item may
    repeat ('cpu,cpu': two workers sharing the CPU's cores)."""
    items = [item.strip().lower() for item in names.split(",")]
    if "" in items:
        raise InputError(f"--device {names!r} has an empty item; list devices as cuda:0,cuda:1 or cpu,cpu")
    devices = []
    for item in items:
        if item == "cuda:all":
            resolve_device("cuda")  # says why when there is no CUDA device
            devices += [torch.device("cuda", index) for index in range(torch.cuda.device_count())]
        else:
            devices.append(resolve_device(item))
    return devices


THREADS_PER_CPU = 4  # more threads than this for each CPU only make them wait for one another


def set_threads(threads: int | None) -> None:
    """Use `threads` CPU threads for torch's operators (None: leave torch's choice).
    InputError for more than THREADS_PER_CPU a CPU: thousands of threads would only stall."""
    if threads is not None:
        cpus = os.cpu_count() or 1
        if threads > THREADS_PER_CPU * cpus:
            raise InputError(f"threads {threads} is too many for {cpus} CPU(s); give at most {THREADS_PER_CPU * cpus}")
        torch.set_num_threads(threads)


def describe(model: torch.nn.Module) -> str:
    """Where and how a model computes, for summaries: "cpu, fp32, 2 threads" or "cuda:0, bf16"."""
    parameter = next(model.parameters())
    dtype = next((name for name, value in DTYPES.items() if value == parameter.dtype), str(parameter.dtype))
    device = parameter.device
    if device.type == "cpu":
        return f"cpu, {dtype}, {torch.get_num_threads()} thread(s)"
    return f"{device}, {dtype}"


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise InputError(f"unknown --dtype {name!r}; use {', '.join(DTYPES)}")
    return DTYPES[name]


def auto_chunk(config: MovqConfig, grid: tuple[int, int], device: torch.device, dtype: torch.dtype) -> int:
    """Frames per chunk. On CUDA as many as fit in half the free device memory; on the CPU the
    fewest that keep the cores busy (one frame, for frames of useful size), within 512 MiB."""
    per_frame = frame_bytes(config, grid, dtype, device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, min(MAX_CHUNK, free // 2 // per_frame))
    fitting = CPU_BUDGET_BYTES // per_frame
    if device.type == "cpu":
        busy = -(-CPU_BUSY_VALUES // (LIVE_ACTIVATIONS * largest_activation(config, grid)))  # rounded up
        fitting = min(fitting, busy)
    return max(1, min(MAX_CHUNK, fitting))
