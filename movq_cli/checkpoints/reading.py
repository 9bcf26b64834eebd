"""Reading decoder weights, whatever layout and file format they come in: finding the file and
its config, reading its tensors, and naming them natively (each family's renames, `movq_cli.families`).

The native format is one `.safetensors` file whose metadata holds the config as JSON under
`movq_config` (and the family under `movq_family`), with tensors named as the model's own. Also
read: diffusers folders and files, original (taming-style, SAT) checkpoints as `.safetensors` or
pickles, and sharded checkpoints. Weights are named by a path, by `default` (the bundled model)
or by a Hugging Face Hub id (`owner/name[/subfolder][@revision][:path/in/repo]`, see
`movq_cli.checkpoints.hub`).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from movq_cli import families
from movq_cli.checkpoints import hub
from movq_cli.checkpoints.bundled import default_weights
from movq_cli.checkpoints.layouts import find_prefix, model_name
from movq_cli.checkpoints.pickled import SUFFIXES as PICKLE_SUFFIXES
from movq_cli.checkpoints.pickled import read_pickled
from movq_cli.errors import InputError, first_line, reason
from movq_cli.models.config import JsonConfig

Config = JsonConfig  # a family's config (movq_cli.families)

CONFIG_KEY = "movq_config"
FAMILY_KEY = "movq_family"  # the model family of a native file ("cogvideox", ...); absent in 2D MoVQ ones
# the weights file of a model folder, in the order looked for: diffusers' names, then transformers'
WEIGHTS_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",  # sharded: the index names the shard of each tensor
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.safetensors.index.json",
    "diffusion_pytorch_model.bf16.safetensors",
    "diffusion_pytorch_model.bin",
    "model.safetensors",  # transformers' save_pretrained, and BAAI's Emu3-VisionTokenizer
    "model.safetensors.index.json",  # an Emu3 language model's shards: only those holding its tokenizer are read
)
INDEX_SUFFIX = ".index.json"
PIPELINE_FOLDERS = ("movq", "vae")  # where diffusers pipelines keep the model: Kandinsky, CogVideoX
DEFAULT_NAME = "default"  # --weights default: the bundled model


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's decoder tensors in native names, and the config that goes with them."""

    path: Path
    layout: str  # "native" (a movq file), "original", "diffusers" or (CogVideoX) "sat"
    config: Config
    config_source: str  # "metadata", "config.json", "given" or "inferred"
    state: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Located:
    """The weights file for a path given by the user, and the config found with it (or None)."""

    path: Path
    config: Config | None
    config_source: str


def locate(path: str | Path) -> Located:
    """Find the weights file and, when there is one, its config.

    `path` is a file or a folder; when nothing exists there, `default` (the bundled model) or a
    Hugging Face Hub id, taken from the Hub cache and downloaded into it when missing.
    """
    name, path = str(path), Path(path)
    if not path.exists():
        path = _named(name)
    if path.is_dir():
        return _locate_folder(path)
    _check_regular(path)
    if path.suffix in PICKLE_SUFFIXES:
        return Located(path, None, "inferred")
    if path.name.endswith(INDEX_SUFFIX):
        beside = path.parent / "config.json"
        return (
            Located(path, _config_json(beside), "config.json") if beside.exists() else Located(path, None, "inferred")
        )
    if path.suffix != ".safetensors":
        raise InputError(
            f"{path}: unsupported weights format {path.suffix!r} "
            f"(expected .safetensors, {', '.join(PICKLE_SUFFIXES)} or a diffusers folder)"
        )
    metadata = _metadata(path)
    if CONFIG_KEY in metadata:
        try:
            config = families.named(metadata.get(FAMILY_KEY, families.MOVQ.name)).config.from_json(metadata[CONFIG_KEY])
        except (ValueError, TypeError) as error:
            raise InputError(f"{path}: bad config in metadata: {error}") from None
        return Located(path, config, "metadata")
    beside = path.parent / "config.json"
    if beside.exists():
        return Located(path, _config_json(beside), "config.json")
    return Located(path, None, "inferred")


def _named(name: str) -> Path:
    """The local file or folder that `name`, which is not a path, stands for."""
    if name == DEFAULT_NAME:
        return default_weights()
    hub_id = hub.parse(name)
    if hub_id is None:
        raise InputError(f"weights not found: {name}")
    return hub.fetch(hub_id, PIPELINE_FOLDERS, WEIGHTS_FILES)


def _locate_folder(folder: Path) -> Located:
    for part in PIPELINE_FOLDERS:  # a whole pipeline repository
        if (folder / part / "config.json").exists():
            folder = folder / part
            break
    config_file = folder / "config.json"
    if not config_file.exists():
        raise InputError(f"{folder}: a weights folder needs config.json (a diffusers or transformers model folder)")
    for name in WEIGHTS_FILES:
        if (folder / name).exists():
            _check_regular(folder / name)
            if name.endswith(".safetensors"):
                _metadata(folder / name)
            return Located(folder / name, _config_json(config_file), "config.json")
    raise InputError(f"{folder}: no {' or '.join(WEIGHTS_FILES)}")


def _check_regular(path: Path) -> None:
    """InputError unless `path` is a file that can be read: a pipe or a device would block, or be read only once."""
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise InputError(f"cannot read {path}: {reason(error)}") from None
    if not stat.S_ISREG(mode):
        what = "a pipe" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise InputError(f"{path} is {what}; weights must be a file or a diffusers folder")
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {path}: permission denied")


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(path, framework="pt") as file:
            return file.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise InputError(f"{path}: not a readable safetensors file ({error})") from None


def _config_json(path: Path) -> Config:
    """The config of a foreign config.json: diffusers', transformers' or a model's own repository's."""
    _check_regular(path)
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: {error}") from None
    if not isinstance(values, dict):
        raise InputError(f"{path}: a config.json holds a JSON object, not {json.dumps(values)[:20]}")
    try:
        return families.of_json(values).from_json(values)
    except (ValueError, TypeError, OverflowError) as error:
        raise InputError(f"{path}: {error}") from None


def read_config(text: str) -> Config:
    """A config given by the user: a preset name, a foreign config.json, or a JSON file of a
    config's own fields (the first family whose config has them all)."""
    presets = families.presets()
    if text in presets:
        return presets[text]
    path = Path(text)
    try:
        values = json.loads(path.read_text())
        if not isinstance(values, dict):
            raise ValueError("expected a JSON object")
    except FileNotFoundError:
        raise InputError(f"config={text}: neither a preset ({', '.join(presets)}) nor a file") from None
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not a usable config ({error})") from None
    if "_class_name" in values or "up_block_types" in values or "model_type" in values:
        try:
            return families.of_json(values).from_json(values)
        except (ValueError, TypeError, OverflowError) as error:
            raise InputError(f"{path}: not a usable config ({error})") from None
    problems = []
    for family in families.FAMILIES[::-1]:  # the 2D MoVQ's own fields first: its files are the most common
        try:
            return family.config.from_dict(values)
        except (ValueError, TypeError) as error:
            problems.append(str(error))
    raise InputError(f"{path}: not a usable config ({problems[0]})")


def read_checkpoint(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    config: Config | None = None,
    encoder: bool = False,
) -> Checkpoint:
    """The tensors of any supported checkpoint in native names, with their config.

    `dtype` None keeps the stored dtypes. `config` overrides the one found with the file;
    when there is neither, it is inferred from the tensors. Encoder tensors are read only
    with `encoder`, and the config says whether any were found.
    """
    located = locate(path)
    state = read_tensors(located.path, device, dtype, encoder)
    family = families.of_tensors(list(state))
    try:
        layout, state = family.to_native(state)
        if config is not None:
            source = "given"
        elif located.config is not None:
            config, source = located.config, located.config_source
        else:
            config, source = family.infer_config({name: tuple(t.shape) for name, t in state.items()}), "inferred"
        if not isinstance(config, family.config):
            raise ValueError(f"{family.name} tensors, but a {families.of_config(config).name} config ({source})")
        config = family.settle(config, state)
    except ValueError as error:
        raise InputError(f"{located.path}: {error}") from None
    return Checkpoint(located.path, "native" if source == "metadata" else layout, config, source, state)


def read_tensors(
    path: Path, device: torch.device | str, dtype: torch.dtype | None, encoder: bool = False
) -> dict[str, torch.Tensor]:
    """The model tensors of a weights file, any prefix removed, on `device` in `dtype` (None: as stored).

    Tensors are moved and cast one at a time, so no second full copy of the weights is made.
    """
    if path.suffix in PICKLE_SUFFIXES:
        stored = read_pickled(path)
        names = _model_names(list(stored), path, encoder)
        return {new: _place(stored[old], device, dtype) for old, new in names.items()}
    files = shards(path)
    names = _model_names([name for names in files.values() for name in names], path, encoder)
    state = {}
    for shard, stored in files.items():
        try:
            with safe_open(shard, framework="pt", device=str(device)) as file:
                for old in stored:
                    if old in names:
                        state[names[old]] = _place(file.get_tensor(old), device, dtype)
        except (SafetensorError, OSError, RuntimeError) as error:
            raise InputError(f"{shard}: cannot read tensors ({error})") from None
    return state


def shards(path: Path) -> dict[Path, list[str]]:
    """The safetensors files holding a checkpoint, each with the names of its tensors: the file
    itself, or for a sharded checkpoint's index (NAME.safetensors.index.json) every shard it names
    that holds a model tensor, with those (an Emu3 language model's index names many shards, of
    which one or two hold its vision tokenizer: only those need to be there)."""
    if not path.name.endswith(INDEX_SUFFIX):
        try:
            with safe_open(path, framework="pt") as file:
                return {path: list(file.keys())}
        except (SafetensorError, OSError) as error:
            raise InputError(f"{path}: not a readable safetensors file ({error})") from None
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
        selected = _model_names(list(weight_map), path, encoder=True)
        shards: dict[Path, list[str]] = {}
        for name, shard in weight_map.items():
            if name in selected:
                shards.setdefault(path.parent / shard, []).append(name)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise InputError(f"{path}: not a readable index of shards ({first_line(error)})") from None
    missing = [str(shard) for shard in shards if not shard.is_file()]
    if missing:
        raise InputError(f"{path}: missing shard {missing[0]}")
    return shards


def _model_names(names: list[str], path: Path, encoder: bool) -> dict[str, str]:
    """Stored name -> unprefixed name, for the tensors to read (loss, optimizer, ... dropped)."""
    prefix = find_prefix(names)
    selected = {name: new for name in names if (new := model_name(name, prefix, encoder)) is not None}
    if not selected:
        shown = ", ".join(names[:4]) or "none"
        raise InputError(
            f"{path}: no decoder tensors of a model movq decodes (keys: {shown}, ...); "
            f"supported layouts: native, {', '.join(families.layouts())}"
        )
    return selected


def _place(tensor: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(device=device, dtype=dtype if dtype is not None and tensor.is_floating_point() else None)
