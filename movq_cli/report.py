"""What `movq info` and `movq inspect` report, as plain dicts ready for JSON.

Code files are scanned a chunk at a time, so a memory-mapped clip of any length is summarised
in bounded memory.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from movq_cli import families
from movq_cli.checkpoints.building import build
from movq_cli.checkpoints.layouts import ENCODER_ROOTS
from movq_cli.checkpoints.pickled import SUFFIXES as PICKLE_SUFFIXES
from movq_cli.checkpoints.pickled import read_pickled
from movq_cli.checkpoints.reading import Checkpoint, read_checkpoint, shards
from movq_cli.errors import InputError
from movq_cli.io.codes import Clip
from movq_cli.models.config import MovqConfig
from movq_cli.models.family import DecodeOptions, family_of
from movq_cli.pipeline import prepare

TOP_CODES = 5


def checkpoint_info(path: str | Path, grid: tuple[int, int]) -> dict:
    """Layout, config, size and geometry of the checkpoint at `path`; frame size for a `grid` of codes.

    Sizes, as tensors and parameters (floating-point values), are given for `file`: every tensor
    it holds (a pickle: in its state dict), used or not; `decoder`: what decoding uses (codebook,
    post_quant_conv, decoder), also given as `parameters`; and `encoder`: what encoding uses
    (encoder, quant_conv), with `present` and, when its tensors do not fit the config, `problem`.
    """
    checkpoint = read_checkpoint(path, encoder=True)
    config = checkpoint.config
    family = families.of_config(config)
    if family is not families.MOVQ:
        return _decoder_info(checkpoint, grid, family.name)
    encoder_state = {name: t for name, t in checkpoint.state.items() if name.startswith(ENCODER_ROOTS)}
    decoder_state = {name: t for name, t in checkpoint.state.items() if name not in encoder_state}
    problem = None
    try:
        build(config, checkpoint.state, source=checkpoint.path)  # also checks every tensor
    except InputError as error:
        if not config.encoder:
            raise
        # an encoder that does not fit takes nothing from decoding: check the decoder alone
        build(replace(config, encoder=False), decoder_state, source=checkpoint.path)
        problem = str(error).removeprefix(f"{checkpoint.path}: ")
    decoder = _sizes(decoder_state.values())
    return {
        "path": str(checkpoint.path),
        "family": "movq",
        "layout": checkpoint.layout,
        "config_source": checkpoint.config_source,
        "config": asdict(config),
        "parameters": decoder["parameters"],
        "file": _file_sizes(checkpoint.path),
        "decoder": decoder,
        "encoder": {"present": config.encoder, **_sizes(encoder_state.values()), "problem": problem},
        "dtypes": _stored_dtypes(checkpoint),
        "codebook_size": config.n_embed,
        "valid_codes": config.n_codes,
        "factor": config.factor,
        "attention": {"mid": config.mid_attn, "levels": list(config.attn_levels)},
        "grid": list(grid),
        "frame_size": frame_size(config, grid),
    }


# what `info` says of each family's config beyond what every family has
_FAMILY_FACTS = {
    "cogvideox": lambda config: {
        "scaling_factor": config.scaling_factor, "temporal_compression": config.temporal_compression_ratio,
    },
    "emu3": lambda config: {
        "codebook_size": config.codebook_size, "valid_codes": config.n_codes,
        "temporal_compression": config.temporal_downsample_factor,
        "attention": {"mid": True, "levels": list(config.attn_levels)},
    },
}  # fmt: skip


def _decoder_info(checkpoint: Checkpoint, grid: tuple[int, int], family: str) -> dict:
    """`checkpoint_info` of a model movq reads the decoder of only (CogVideoX, Emu3): encoders are not used."""
    config = checkpoint.config
    build(config, checkpoint.state, source=checkpoint.path)  # checks every tensor
    decoder = _sizes(checkpoint.state.values())
    return {
        "path": str(checkpoint.path),
        "family": family,
        "layout": checkpoint.layout,
        "config_source": checkpoint.config_source,
        "config": asdict(config),
        "parameters": decoder["parameters"],
        "file": _file_sizes(checkpoint.path),
        "decoder": decoder,
        "encoder": {"present": False, "tensors": 0, "parameters": 0, "problem": None},
        "dtypes": _stored_dtypes(checkpoint),
        **_FAMILY_FACTS[family](config),
        "factor": config.factor,
        "grid": list(grid),
        "frame_size": [grid[0] * config.factor, grid[1] * config.factor],
    }


def _stored_dtypes(checkpoint: Checkpoint) -> list[str]:
    return sorted({str(t.dtype).removeprefix("torch.") for t in checkpoint.state.values() if t.is_floating_point()})


def _sizes(tensors: Iterable[torch.Tensor]) -> dict[str, int]:
    tensors = list(tensors)
    return {"tensors": len(tensors), "parameters": sum(t.numel() for t in tensors if t.is_floating_point())}


def _file_sizes(path: Path) -> dict[str, int]:
    """`_sizes` of every tensor in a weights file, read without the data of a safetensors file."""
    if path.suffix in PICKLE_SUFFIXES:
        return _sizes(read_pickled(path).values())
    tensors, floating = 0, 0
    for shard, names in shards(path).items():
        with safe_open(shard, framework="pt") as file:
            slices = [file.get_slice(name) for name in names]
        tensors += len(slices)
        floating += sum(math.prod(s.get_shape()) for s in slices if s.get_dtype().startswith(("F", "BF")))
    return {"tensors": tensors, "parameters": floating}


def frame_size(config: MovqConfig, grid: tuple[int, int]) -> list[int]:
    """Pixels (height, width) of a frame of `grid` codes."""
    return [grid[0] * config.factor, grid[1] * config.factor]


def codes_report(codes: Clip, model: torch.nn.Module | None = None) -> dict:
    """Shape, value statistics and, given a loaded `model`, whether `codes` fits it and why not,
    and the frames it would decode to."""
    report = {
        "path": str(codes.path),
        "shape": list(codes.stored_shape),
        "dtype": str(codes.array.dtype),
        "kind": "latents" if codes.is_latents else "codes",
        "frames": codes.n_frames,
        "grid": list(codes.grid),  # [rows, columns], as named below
        "rows": codes.grid[0],
        "columns": codes.grid[1],
        "read_as": codes.describe(),
    }
    report.update(latent_stats(codes) if codes.is_latents else code_stats(codes))
    if model is not None:
        family = family_of(model)
        codes, _ = family.conform(codes, DecodeOptions())
        report.update(read_as=codes.describe(), grid=list(codes.grid), rows=codes.grid[0], columns=codes.grid[1])
        try:
            prepare(model, codes)
            report.update(fits=True, reason=None)
        except InputError as error:
            report.update(fits=False, reason=str(error))
        report["decoding"] = family.decoding(codes)
        report["output_frames"] = family.output_frames(codes)
        report["frame_size"] = list(family.frame_size(codes.grid))  # [height, width], as named below
        report["height"], report["width"] = report["frame_size"]
    return report


def code_stats(codes: Clip) -> dict:
    """Range, number of distinct codes and the most used ones (code, count)."""
    counts: Counter[int] = Counter()
    for _, _, block in codes.pieces():
        values, occurrences = np.unique(block, return_counts=True)
        counts.update(dict(zip(values.tolist(), occurrences.tolist(), strict=True)))
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP_CODES]
    return {"min": min(counts), "max": max(counts), "distinct": len(counts), "top": [list(item) for item in top]}


def latent_stats(codes: Clip) -> dict:
    """Channels, range of the finite values, and how many values are NaN or infinite."""
    low, high, nans, infinities = np.inf, -np.inf, 0, 0
    for _, _, block in codes.pieces():
        finite = np.isfinite(block)
        nans += int(np.isnan(block).sum())
        infinities += int(np.isinf(block).sum())
        if finite.any():
            low, high = min(low, float(block[finite].min())), max(high, float(block[finite].max()))
    found = bool(np.isfinite(low))
    return {
        "channels": codes.array.shape[1],
        "min": low if found else None,
        "max": high if found else None,
        "nan": nans,
        "inf": infinities,
    }
