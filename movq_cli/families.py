"""The model families movq decodes, each a set of pieces found in the same places.

A family is its config class and published presets, its model class, how a clip streams through
it (`models.family`), and how its checkpoints read (`checkpoints/`): which tensor names are its,
its layouts' renames to native names (the model's own), its config from a foreign config.json,
and its config inferred from tensor shapes. The shared code (reading tensors, building without
initialisation, the mismatch report, the pipeline, the writers) asks this table, never which
family it holds. Adding a family is one entry here, its model file and its checkpoint file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from movq_cli.checkpoints import cogvideox as cogvideox_checkpoints
from movq_cli.checkpoints import emu3 as emu3_checkpoints
from movq_cli.checkpoints import layouts as movq_checkpoints
from movq_cli.checkpoints.infer import infer_config as infer_movq_config
from movq_cli.models import family as decoding
from movq_cli.models.cogvideox import CogVideoX, use_fast_paths
from movq_cli.models.config import (
    COGVIDEOX_PRESETS,
    EMU3_PRESETS,
    PRESETS,
    CogVideoXConfig,
    Emu3Config,
    JsonConfig,
    MovqConfig,
)
from movq_cli.models.emu3 import Emu3
from movq_cli.models.movq import Movq

Model = Movq | CogVideoX | Emu3  # what `movq_cli.load` returns: a model of one of the families below
State = dict[str, torch.Tensor]
Shapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class ModelFamily:
    name: str  # as a native file's metadata names it
    layouts: tuple[str, ...]  # the foreign layouts its checkpoints come in, as `to_native` names them
    config: type[JsonConfig]
    presets: Mapping[str, dict]  # published configurations, by name: their fields that differ from the defaults
    model: type[torch.nn.Module]  # built from its config: model(config)
    decoding: type[decoding.Family]  # how a clip streams through the model
    recognise: Callable[[Sequence[str]], bool]  # whether unprefixed tensor names are this family's
    to_native: Callable[[State], tuple[str, State]]  # -> (the layout's name, the tensors in native names)
    claims_json: Callable[[dict], bool]  # whether a foreign config.json describes this family's model
    from_json: Callable[[dict], JsonConfig]  # that config.json -> config (ValueError: not usable)
    infer_config: Callable[[Shapes], JsonConfig]  # native tensor shapes -> config (ValueError naming the tensor)
    # the config, settled against the tensors read: what a config.json cannot know (ValueError: they disagree)
    settle: Callable[[JsonConfig, State], JsonConfig] = field(default=lambda config, state: config)
    ready: Callable[[torch.nn.Module], None] = field(default=lambda model: None)  # after its tensors are loaded
    channels_last: bool = False  # 2D convolution weights stored channels innermost, as oneDNN and cuDNN run them


def _movq_native(state: State) -> tuple[str, State]:
    layout = movq_checkpoints.detect_layout(list(state))
    return layout, movq_checkpoints.to_native(state, layout)


def _cogvideox_native(state: State) -> tuple[str, State]:
    if cogvideox_checkpoints.is_sat(list(state)):
        return "sat", cogvideox_checkpoints.sat_to_native(state)
    return "diffusers", cogvideox_checkpoints.diffusers_to_native(state)


MOVQ = ModelFamily(
    name="movq",
    layouts=movq_checkpoints.LAYOUTS,
    config=MovqConfig,
    presets=PRESETS,
    model=Movq,
    decoding=decoding.MovqFrames,
    recognise=lambda names: True,  # the family of last resort: its layouts say what they cannot read
    to_native=_movq_native,
    claims_json=lambda values: True,
    from_json=movq_checkpoints.config_from_diffusers,
    infer_config=infer_movq_config,
    settle=movq_checkpoints.settle_config,
    channels_last=True,
)
COGVIDEOX = ModelFamily(
    name="cogvideox",
    layouts=("diffusers", "sat"),
    config=CogVideoXConfig,
    presets=COGVIDEOX_PRESETS,
    model=CogVideoX,
    decoding=decoding.CogVideoXVideo,
    recognise=cogvideox_checkpoints.is_cogvideox,
    to_native=_cogvideox_native,
    claims_json=lambda values: values.get("_class_name") == "AutoencoderKLCogVideoX",
    from_json=cogvideox_checkpoints.config_from_diffusers,
    infer_config=cogvideox_checkpoints.infer_config,
    ready=lambda model: use_fast_paths(model, True),
)
EMU3 = ModelFamily(
    name="emu3",
    layouts=("baai", "transformers"),
    config=Emu3Config,
    presets=EMU3_PRESETS,
    model=Emu3,
    decoding=decoding.Emu3Video,
    recognise=emu3_checkpoints.is_emu3,
    to_native=emu3_checkpoints.to_native,
    claims_json=lambda values: values.get("model_type") in emu3_checkpoints.MODEL_TYPES,
    from_json=emu3_checkpoints.config_from_json,
    infer_config=emu3_checkpoints.infer_config,
    channels_last=True,
)
FAMILIES = (COGVIDEOX, EMU3, MOVQ)  # in the order they are asked: the family of last resort last


def named(name: str) -> ModelFamily:
    """The family a native file's metadata names (ValueError for none)."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ValueError(f"unknown model family {name!r}; movq decodes {', '.join(f.name for f in FAMILIES)}")


def of_tensors(names: Sequence[str]) -> ModelFamily:
    """The family whose checkpoints have these (unprefixed) tensor names."""
    return next(family for family in FAMILIES if family.recognise(names))


def of_json(values: dict) -> ModelFamily:
    """The family a foreign config.json describes."""
    return next(family for family in FAMILIES if family.claims_json(values))


def of_config(config: JsonConfig) -> ModelFamily:
    """The family of a config."""
    for family in FAMILIES:
        if isinstance(config, family.config):
            return family
    raise TypeError(f"not a config of a model movq decodes: {type(config).__name__}")


def of_model(model: torch.nn.Module) -> ModelFamily:
    """The family of a loaded model."""
    for family in FAMILIES:
        if isinstance(model, family.model):
            return family
    raise TypeError(f"not a model movq decodes: {type(model).__name__}")


def layouts() -> list[str]:
    """Every foreign layout movq reads."""
    return list(dict.fromkeys(layout for family in reversed(FAMILIES) for layout in family.layouts))


def presets() -> dict[str, JsonConfig]:
    """Every family's published configurations, by name."""
    return {name: family.config(**values) for family in FAMILIES for name, values in family.presets.items()}
