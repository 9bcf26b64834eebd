"""Loading and saving decoder weights: the native file and diffusers VQModel folders.

The native format is one `.safetensors` file whose metadata holds the config as JSON under
`movq_config`, with tensors named as in `movq_cli.model.Movq`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from movq_cli.config import MovqConfig
from movq_cli.errors import InputError
from movq_cli.layouts import SKIPPED_PREFIXES, config_from_diffusers, diffusers_to_native, is_diffusers
from movq_cli.model import Movq

CONFIG_KEY = "movq_config"
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")


@dataclass(frozen=True)
class Checkpoint:
    """Where the tensors are, how they are named, and the config when one comes with them."""

    path: Path
    layout: str  # "native" or "diffusers"
    config: MovqConfig | None


def locate(path: str | Path) -> Checkpoint:
    """Find the weights file and config for a path given by the user."""
    path = Path(path)
    if path.is_dir():
        return _locate_folder(path)
    if not path.exists():
        raise InputError(f"weights not found: {path}")
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: unsupported weights format {path.suffix!r} (expected .safetensors)")
    metadata = _metadata(path)
    if CONFIG_KEY in metadata:
        try:
            config = MovqConfig.from_json(metadata[CONFIG_KEY])
        except (ValueError, TypeError) as error:
            raise InputError(f"{path}: bad config in metadata: {error}") from None
        return Checkpoint(path, "native", config)
    beside = path.parent / "config.json"
    if beside.exists():
        return Checkpoint(path, "diffusers", _diffusers_config(beside))
    raise InputError(f"{path}: no config (no '{CONFIG_KEY}' metadata and no config.json beside it)")


def _locate_folder(folder: Path) -> Checkpoint:
    if (folder / "movq" / "config.json").exists():  # a whole pipeline repository
        folder = folder / "movq"
    config_file = folder / "config.json"
    if not config_file.exists():
        raise InputError(f"{folder}: a weights folder needs config.json (a diffusers VQModel folder)")
    for name in DIFFUSERS_WEIGHTS:
        if (folder / name).exists():
            _metadata(folder / name)
            return Checkpoint(folder / name, "diffusers", _diffusers_config(config_file))
    raise InputError(f"{folder}: no {' or '.join(DIFFUSERS_WEIGHTS)}")


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(path, framework="pt") as file:
            return file.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise InputError(f"{path}: not a readable safetensors file ({error})") from None


def _diffusers_config(path: Path) -> MovqConfig:
    try:
        return config_from_diffusers(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise InputError(f"{path}: {error}") from None


def load(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Movq:
    """Load a decoder from `path` onto `device` in `dtype`, ready for inference."""
    checkpoint = locate(path)
    state = read_tensors(checkpoint.path, device, dtype)
    config = checkpoint.config
    if checkpoint.layout == "diffusers" or is_diffusers(list(state)):
        state = diffusers_to_native(state)
        if "quantize.embedding.weight" not in state:  # Kandinsky 3: latents only
            config = replace(config, n_embed=None)
    return build(config, state, source=checkpoint.path)


def read_tensors(path: Path, device: torch.device | str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every decoder tensor of a safetensors file, read straight onto `device` in `dtype`.

    Floating tensors are cast one at a time, so no second full copy of the weights is made.
    """
    try:
        with safe_open(path, framework="pt", device=str(device)) as file:
            return {
                name: _cast(file.get_tensor(name), dtype)
                for name in file.keys()
                if not name.startswith(SKIPPED_PREFIXES)
            }
    except (SafetensorError, OSError, RuntimeError) as error:
        raise InputError(f"{path}: cannot read tensors ({error})") from None


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def build(config: MovqConfig, state: dict[str, torch.Tensor], source: Path | str = "weights") -> Movq:
    """A Movq for `config` holding the tensors of `state`, checked name by name and shape by shape."""
    with torch.device("meta"):
        model = Movq(config)
    expected = model.state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    misshaped = [
        f"{name} {tuple(state[name].shape)} (expected {tuple(tensor.shape)})"
        for name, tensor in expected.items()
        if name in state and state[name].shape != tensor.shape
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            problems.append(f"{label}: {', '.join(names[:3])}{more}")
    if problems:
        raise InputError(f"{source}: weights do not match the config ({'; '.join(problems)})")
    model.load_state_dict(state, assign=True)
    return model.eval().requires_grad_(False)


def save(model: Movq, path: str | Path, dtype: torch.dtype | None = None) -> None:
    """Write `model` as a native file: its tensors, with its config in the metadata."""
    state = {
        name: (_cast(tensor, dtype) if dtype else tensor).detach().contiguous().cpu()
        for name, tensor in model.state_dict().items()
    }
    save_file(state, str(path), metadata={CONFIG_KEY: model.config.to_json()})
