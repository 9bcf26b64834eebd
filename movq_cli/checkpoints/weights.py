"""Loading, saving and converting decoder weights: reading (`reading`) then building (`building`).

The native format is one `.safetensors` file whose metadata holds the config as JSON under
`movq_config` (and the model family under `movq_family`), with tensors named as the model's own.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from movq_cli import families
from movq_cli.checkpoints.building import Model, build
from movq_cli.checkpoints.reading import CONFIG_KEY, FAMILY_KEY, Checkpoint, Config, _place, read_checkpoint
from movq_cli.errors import InputError, RunError, first_line


def load(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, encoder: bool = False
) -> Model:
    """Load a model from `path` (any supported layout) onto `device` in `dtype`, ready for inference.

    The encoder is read only when asked for with `encoder` (and only if the file has one).
    """
    checkpoint = read_checkpoint(path, device, dtype, encoder=encoder)
    family = families.of_config(checkpoint.config)
    if encoder and family is not families.MOVQ:
        raise InputError(f"{checkpoint.path}: a {family.name} model; movq encodes with 2D MoVQ models only")
    return build(checkpoint.config, checkpoint.state, source=checkpoint.path)


def save(model: Model, path: str | Path, dtype: torch.dtype | None = None) -> None:
    """Write `model` as a native file: its tensors, with its config in the metadata.

    The file appears whole or not at all: it is written under a temporary name, then renamed.
    """
    path = Path(path)
    state = {name: _place(tensor, "cpu", dtype).detach().contiguous() for name, tensor in model.state_dict().items()}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        metadata = {CONFIG_KEY: model.config.to_json()}
        family = families.of_model(model)
        if family is not families.MOVQ:  # a 2D MoVQ file says nothing, as it always has
            metadata[FAMILY_KEY] = family.name
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
    config: Config | None = None,
    overwrite: bool = False,
    encoder: bool = True,
) -> Checkpoint:
    """Any supported checkpoint -> a native file at `target`; returns what was read and written.

    `dtype` None keeps the stored dtype, so decoding the result gives exactly the source's pixels.
    A 2D MoVQ's encoder is kept where the source has one, unless `encoder` is False; other
    families' files keep their decoder only.
    """
    target = Path(target)
    if target.suffix != ".safetensors":
        raise InputError(f"{target}: the native format is .safetensors; name the output NAME.safetensors")
    if target.exists() and not overwrite:
        raise InputError(f"{target} exists; pass overwrite=True to replace it")
    if not target.parent.is_dir():
        raise InputError(f"cannot create {target}: {target.parent} is not a folder")
    checkpoint = read_checkpoint(source, "cpu", dtype, config, encoder=encoder)
    if families.of_config(checkpoint.config) is not families.MOVQ:  # movq encodes with 2D models only
        state = {name: tensor for name, tensor in checkpoint.state.items() if not name.startswith("encoder.")}
        checkpoint = replace(checkpoint, state=state)
    save(build(checkpoint.config, checkpoint.state, source=checkpoint.path), target)
    return checkpoint
