"""Loading and saving decoder weights, whatever layout and file format they come in.

The native format is one `.safetensors` file whose metadata holds the config as JSON under
`movq_config`, with tensors named as in `movq_cli.models.movq.Movq`. Also read: diffusers VQModel
folders and files, and original (taming-style) checkpoints as `.safetensors` or pickles.
Weights are named by a path, by `default` (the bundled model) or by a Hugging Face Hub id
(`owner/name[/subfolder][@revision][:path/in/repo]`, see `movq_cli.checkpoints.hub`).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.nn import init
from torch.overrides import TorchFunctionMode

from movq_cli.checkpoints import cogvideox as video_layouts
from movq_cli.checkpoints import hub
from movq_cli.checkpoints.bundled import default_weights
from movq_cli.checkpoints.infer import infer_config
from movq_cli.checkpoints.layouts import (
    LAYOUTS,
    config_from_diffusers,
    detect_layout,
    find_prefix,
    model_name,
    to_native,
)
from movq_cli.checkpoints.pickled import SUFFIXES as PICKLE_SUFFIXES
from movq_cli.checkpoints.pickled import read_pickled
from movq_cli.errors import InputError, RunError, first_line, reason
from movq_cli.models.config import COGVIDEOX_PRESETS, PRESETS, CogVideoXConfig, MovqConfig, cogvideox_preset, preset
from movq_cli.models.movq import Movq

Config = MovqConfig | CogVideoXConfig

CONFIG_KEY = "movq_config"
FAMILY_KEY = "movq_family"  # "cogvideox" in native CogVideoX files; absent in 2D MoVQ ones
DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",  # sharded: the index names the shard of each tensor
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.safetensors.index.json",
    "diffusion_pytorch_model.bf16.safetensors",
    "diffusion_pytorch_model.bin",
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
            Located(path, _diffusers_config(beside), "config.json")
            if beside.exists()
            else Located(path, None, "inferred")
        )
    if path.suffix != ".safetensors":
        raise InputError(
            f"{path}: unsupported weights format {path.suffix!r} "
            f"(expected .safetensors, {', '.join(PICKLE_SUFFIXES)} or a diffusers folder)"
        )
    metadata = _metadata(path)
    if CONFIG_KEY in metadata:
        kind = CogVideoXConfig if metadata.get(FAMILY_KEY) == "cogvideox" else MovqConfig
        try:
            config = kind.from_json(metadata[CONFIG_KEY])
        except (ValueError, TypeError) as error:
            raise InputError(f"{path}: bad config in metadata: {error}") from None
        return Located(path, config, "metadata")
    beside = path.parent / "config.json"
    if beside.exists():
        return Located(path, _diffusers_config(beside), "config.json")
    return Located(path, None, "inferred")


def _named(name: str) -> Path:
    """The local file or folder that `name`, which is not a path, stands for."""
    if name == DEFAULT_NAME:
        return default_weights()
    hub_id = hub.parse(name)
    if hub_id is None:
        raise InputError(f"weights not found: {name}")
    return hub.fetch(hub_id, PIPELINE_FOLDERS, DIFFUSERS_WEIGHTS)


def _locate_folder(folder: Path) -> Located:
    for part in PIPELINE_FOLDERS:  # a whole pipeline repository
        if (folder / part / "config.json").exists():
            folder = folder / part
            break
    config_file = folder / "config.json"
    if not config_file.exists():
        raise InputError(
            f"{folder}: a weights folder needs config.json (a diffusers VQModel or AutoencoderKLCogVideoX folder)"
        )
    for name in DIFFUSERS_WEIGHTS:
        if (folder / name).exists():
            _check_regular(folder / name)
            if name.endswith(".safetensors"):
                _metadata(folder / name)
            return Located(folder / name, _diffusers_config(config_file), "config.json")
    raise InputError(f"{folder}: no {' or '.join(DIFFUSERS_WEIGHTS)}")


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


def _diffusers_config(path: Path) -> Config:
    _check_regular(path)
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: {error}") from None
    if not isinstance(values, dict):
        raise InputError(f"{path}: a config.json holds a JSON object, not {json.dumps(values)[:20]}")
    try:
        return _from_diffusers(values)
    except (ValueError, TypeError, OverflowError) as error:
        raise InputError(f"{path}: {error}") from None


def _from_diffusers(values: dict) -> Config:
    """A diffusers config.json: a VQModel's (2D MoVQ) or an AutoencoderKLCogVideoX's."""
    if values.get("_class_name") == "AutoencoderKLCogVideoX":
        return video_layouts.config_from_diffusers(values)
    return config_from_diffusers(values)


def read_config(text: str) -> Config:
    """A config given by the user: a preset name, or a JSON file of MovqConfig fields or a diffusers config.json."""
    if text in PRESETS:
        return preset(text)
    if text in COGVIDEOX_PRESETS:
        return cogvideox_preset(text)
    path = Path(text)
    try:
        values = json.loads(path.read_text())
        if not isinstance(values, dict):
            raise ValueError("expected a JSON object")
        if "_class_name" in values or "up_block_types" in values:
            return _from_diffusers(values)
        kind = CogVideoXConfig if "block_out_channels" in values else MovqConfig
        return kind.from_dict(values)
    except FileNotFoundError:
        presets = ", ".join([*PRESETS, *COGVIDEOX_PRESETS])
        raise InputError(f"config={text}: neither a preset ({presets}) nor a file") from None
    except (OSError, ValueError, TypeError) as error:
        raise InputError(f"{path}: not a usable config ({error})") from None


def load(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, encoder: bool = False
) -> Movq:
    """Load a model from `path` (any supported layout) onto `device` in `dtype`, ready for inference.

    The encoder is read only when asked for with `encoder` (and only if the file has one).
    """
    checkpoint = read_checkpoint(path, device, dtype, encoder=encoder)
    if encoder and isinstance(checkpoint.config, CogVideoXConfig):
        raise InputError(f"{checkpoint.path}: a CogVideoX VAE; movq encodes with 2D MoVQ models only")
    return build(checkpoint.config, checkpoint.state, source=checkpoint.path)


def read_checkpoint(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    config: MovqConfig | None = None,
    encoder: bool = False,
) -> Checkpoint:
    """The tensors of any supported checkpoint in native names, with their config.

    `dtype` None keeps the stored dtypes. `config` overrides the one found with the file;
    when there is neither, it is inferred from the tensors. Encoder tensors are read only
    with `encoder`, and the config says whether any were found.
    """
    located = locate(path)
    state = read_tensors(located.path, device, dtype, encoder)
    if video_layouts.is_cogvideox(list(state)):
        return _read_video(located, state, config)
    try:
        layout = detect_layout(list(state))
        state = to_native(state, layout)
        if config is not None:
            source = "given"
        elif located.config is not None:
            config, source = located.config, located.config_source
            if source == "config.json" and "quantize.embedding.weight" not in state:  # Kandinsky 3: latents only
                config = replace(config, n_embed=None)
        else:
            config, source = infer_config({name: tuple(t.shape) for name, t in state.items()}), "inferred"
        has_encoder = any(name.startswith("encoder.") for name in state)
        if config.encoder != has_encoder:
            in_ch = state["encoder.conv_in.weight"].shape[1] if has_encoder else config.in_ch
            config = replace(config, encoder=has_encoder, in_ch=in_ch)
    except ValueError as error:
        raise InputError(f"{located.path}: {error}") from None
    return Checkpoint(located.path, "native" if source == "metadata" else layout, config, source, state)


def _read_video(located: Located, state: dict[str, torch.Tensor], config: Config | None) -> Checkpoint:
    """A CogVideoX VAE's decoder tensors (diffusers or SAT names) in native names, with its config."""
    names = list(state)
    layout = "sat" if video_layouts.is_sat(names) else "diffusers"
    state = video_layouts.sat_to_native(state) if layout == "sat" else video_layouts.diffusers_to_native(state)
    if config is None and located.config is not None:
        config, source = located.config, located.config_source
    elif config is None:
        try:
            config = video_layouts.infer_config({name: tuple(t.shape) for name, t in state.items()})
        except ValueError as error:
            raise InputError(f"{located.path}: {error}") from None
        source = "inferred"
    else:
        source = "given"
    if not isinstance(config, CogVideoXConfig):
        raise InputError(f"{located.path}: CogVideoX tensors, but a 2D MoVQ config ({source})")
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
    itself, or for a sharded checkpoint's index (NAME.safetensors.index.json) every shard it names."""
    if not path.name.endswith(INDEX_SUFFIX):
        try:
            with safe_open(path, framework="pt") as file:
                return {path: list(file.keys())}
        except (SafetensorError, OSError) as error:
            raise InputError(f"{path}: not a readable safetensors file ({error})") from None
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
        shards: dict[Path, list[str]] = {}
        for name, shard in weight_map.items():
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
            f"{path}: no MoVQ decoder tensors (keys: {shown}, ...); supported layouts: native, {', '.join(LAYOUTS)}"
        )
    return selected


def _place(tensor: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(device=device, dtype=dtype if dtype is not None and tensor.is_floating_point() else None)


class _Uninitialised(TorchFunctionMode):
    """Modules made inside keep their parameters as allocated: the initialisers that nn's layers
    call in reset_parameters return at once.

    The model is built on the meta device, where initialising computes nothing, but there
    `init.normal_` (the codebook's) goes through torch._refs, which imports torch._dynamo: over a
    second of every start-up, for values that loading replaces anyway.
    """

    # Conv2d: kaiming_uniform_ and uniform_; Embedding: normal_; GroupNorm: ones_ and zeros_ (fill_, zero_)
    skipped = frozenset({init.kaiming_uniform_, init.uniform_, init.normal_, torch.Tensor.fill_, torch.Tensor.zero_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.skipped:
            return args[0] if args else kwargs["tensor"]  # the tensor, as the initialisers return it
        return func(*args, **kwargs)


def build(config: Config, state: dict[str, torch.Tensor], source: Path | str = "weights") -> torch.nn.Module:
    """The model for `config` (a Movq, or a CogVideoX) holding the tensors of `state`, checked name
    by name and shape by shape.

    The model is made without initialising it, then takes each tensor in its layout (convolution
    weights channels_last) in one copy on the CPU, or as it is on another device.
    """
    _check_values(state, source)
    if isinstance(config, CogVideoXConfig):
        return video_layouts.build(config, state, source)
    with torch.device("meta"), _Uninitialised():
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
    model.load_state_dict({name: _own(tensor) for name, tensor in state.items()}, assign=True)
    return model.eval().requires_grad_(False)


INTEGER_TENSORS = ("quantize.used",)  # the remap table: code -> codebook row


def _check_values(state: dict[str, torch.Tensor], source: Path | str) -> None:
    """InputError for a weight that is not a floating-point number (but the remap table), or that
    is NaN or infinite: such weights would decode to a black or garbled picture without a word."""
    for name, tensor in state.items():
        if name in INTEGER_TENSORS:
            continue
        if not tensor.is_floating_point():
            raise InputError(f"{source}: {name} holds {str(tensor.dtype).removeprefix('torch.')}; weights are floats")
        if not bool(torch.isfinite(tensor).all()):
            raise InputError(f"{source}: {name} holds NaN or infinite values; these weights are damaged")


def _own(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in the model's layout; on the CPU, in memory of its own.

    Tensors read from a safetensors file are views of its memory map: one of them left in the
    model keeps the whole map, and with it every page of the file that was read, resident.
    """
    # channels_last lets oneDNN and cuDNN run the convolutions without reordering memory
    layout = torch.channels_last if tensor.dim() == 4 else torch.contiguous_format
    if tensor.device.type == "cpu":
        return tensor.clone(memory_format=layout)
    return tensor.contiguous(memory_format=layout)


def save(model: Movq, path: str | Path, dtype: torch.dtype | None = None) -> None:
    """Write `model` as a native file: its tensors, with its config in the metadata.

    The file appears whole or not at all: it is written under a temporary name, then renamed.
    """
    path = Path(path)
    state = {name: _place(tensor, "cpu", dtype).detach().contiguous() for name, tensor in model.state_dict().items()}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        metadata = {CONFIG_KEY: model.config.to_json()}
        if isinstance(model.config, CogVideoXConfig):
            metadata[FAMILY_KEY] = "cogvideox"
        save_file(state, str(temporary), metadata=metadata)
        os.chmod(temporary, 0o666 & ~_umask())  # safetensors creates it 0600: readable by others as umask allows
        os.replace(temporary, path)
    except OSError as error:
        raise RunError(f"cannot write {path}: {error.strerror or error}") from None
    except SafetensorError as error:  # its own I/O errors: "... No space left on device (os error 28)"
        raise RunError(f"cannot write {path}: {first_line(error)}") from None
    finally:
        temporary.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def convert(
    source: str | Path,
    target: str | Path,
    dtype: torch.dtype | None = None,
    config: MovqConfig | None = None,
    overwrite: bool = False,
    encoder: bool = True,
) -> Checkpoint:
    """Any supported checkpoint -> a native file at `target`; returns what was read and written.

    `dtype` None keeps the stored dtype, so decoding the result gives exactly the source's pixels.
    A 2D MoVQ's encoder is kept where the source has one, unless `encoder` is False; CogVideoX
    files keep their decoder only.
    """
    target = Path(target)
    if target.suffix != ".safetensors":
        raise InputError(f"{target}: the native format is .safetensors; name the output NAME.safetensors")
    if target.exists() and not overwrite:
        raise InputError(f"{target} exists; pass overwrite=True to replace it")
    if not target.parent.is_dir():
        raise InputError(f"cannot create {target}: {target.parent} is not a folder")
    checkpoint = read_checkpoint(source, "cpu", dtype, config, encoder=encoder)
    if isinstance(checkpoint.config, CogVideoXConfig):  # movq decodes CogVideoX, and has no 3D encoder
        state = {name: tensor for name, tensor in checkpoint.state.items() if not name.startswith("encoder.")}
        checkpoint = replace(checkpoint, state=state)
    save(build(checkpoint.config, checkpoint.state, source=checkpoint.path), target)
    return checkpoint
