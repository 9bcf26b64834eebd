"""Building a model from native tensors, for every family alike: made without initialising it,
checked tensor by tensor (one mismatch report), each tensor in memory of its own."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch.nn import init
from torch.overrides import TorchFunctionMode

from movq_cli import families
from movq_cli.errors import InputError
from movq_cli.families import Model
from movq_cli.models.config import JsonConfig

Config = JsonConfig  # a family's config (movq_cli.families)
Shapes = Mapping[str, Sequence[int]]


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


def build(config: Config, state: Mapping[str, torch.Tensor], source: Path | str = "weights") -> Model:
    """The model of `config`'s family holding the tensors of `state` (native names), checked name
    by name and shape by shape: InputError names the tensors that do not fit.

    The model is made without initialising it, then takes each tensor in its layout (convolution
    weights channels_last, where its family wants them) in memory of its own on the CPU (`_own`),
    or as it is on another device.
    """
    _check_values(state, source)
    family = families.of_config(config)
    with torch.device("meta"), _Uninitialised():
        model = family.model(config)
    problems = mismatches(shapes(model.state_dict()), shapes(state))
    if problems:
        raise InputError(f"{source}: weights do not match the config ({'; '.join(problems)})")
    own = {name: _own(tensor, family.channels_last) for name, tensor in state.items()}
    model.load_state_dict(own, assign=True)
    family.ready(model)
    return model.eval().requires_grad_(False)


def shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape."""
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def expected_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """The tensors (name -> shape) the model of `config` has."""
    with torch.device("meta"), _Uninitialised():
        return shapes(families.of_config(config).model(config).state_dict())


def mismatches(expected: Shapes, found: Shapes) -> list[str]:
    """What keeps `found` (name -> shape) from being exactly `expected`: one line per kind of
    problem (missing, unexpected, wrong shape), naming up to three tensors each."""
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    misshaped = [
        f"{name} {tuple(found[name])} (expected {tuple(shape)})"
        for name, shape in expected.items()
        if name in found and tuple(found[name]) != tuple(shape)
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            problems.append(f"{label}: {', '.join(names[:3])}{more}")
    return problems


# integer tensors a model holds: the remap table (code -> codebook row), BatchNorm's count of batches
INTEGER_TENSORS = re.compile(r"(^quantize\.used|\.num_batches_tracked)$")


def _check_values(state: dict[str, torch.Tensor], source: Path | str) -> None:
    """InputError for a weight that is not a floating-point number (but the remap table), or that
    is NaN or infinite: such weights would decode to a black or garbled picture without a word."""
    for name, tensor in state.items():
        if INTEGER_TENSORS.search(name):
            continue
        if not tensor.is_floating_point():
            raise InputError(f"{source}: {name} holds {str(tensor.dtype).removeprefix('torch.')}; weights are floats")
        if not bool(torch.isfinite(tensor).all()):
            raise InputError(f"{source}: {name} holds NaN or infinite values; these weights are damaged")


def _own(tensor: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """`tensor` in the model's layout (2D convolution weights `channels_last`, or as stored); on
    the CPU, in memory of its own.

    Tensors read from a safetensors file are views of its memory map: one of them left in the
    model (a bias, a norm's weight: any tensor whose dtype needed no cast) keeps the whole map,
    and with it every page of the file that was read, resident.
    """
    # channels_last lets oneDNN and cuDNN run the convolutions without reordering memory
    layout = torch.channels_last if channels_last and tensor.dim() == 4 else torch.contiguous_format
    if tensor.device.type == "cpu":
        return tensor.clone(memory_format=layout)
    return tensor.contiguous(memory_format=layout)
