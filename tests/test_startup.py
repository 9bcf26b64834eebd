"""What a fresh `movq decode` does before its first frame: build the model without initialising
it, and import only what decoding needs."""

from __future__ import annotations

import gc
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import codes_to_zq, diffusers_decode

from movq_cli.checkpoints import building, reading, weights
from movq_cli.models.config import preset
from movq_cli.models.movq import Movq


def _refuse(*args, **kwargs):
    raise AssertionError("random initialisation while building a model")


def test_building_a_model_draws_no_random_values(small_folder, monkeypatch):
    """Every random initialiser of nn's layers ends in Tensor.normal_ or Tensor.uniform_."""
    folder, reference = small_folder
    monkeypatch.setattr(torch.Tensor, "normal_", _refuse)
    monkeypatch.setattr(torch.Tensor, "uniform_", _refuse)
    model = weights.load(folder)
    codes = torch.randint(0, 64, (1, 4, 4), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        got = model.decode_codes(codes)
    assert (got - diffusers_decode(reference, codes_to_zq(reference, codes))).abs().max().item() <= 1e-4


def test_building_a_published_layout_calls_no_initialiser():
    """Not even on the meta device, where the codebook's normal_ would import torch._dynamo."""
    from torch.overrides import TorchFunctionMode

    called = []

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            called.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    config = preset("kandinsky-2.2")
    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in Movq(config).state_dict().items()}
    state = {name: torch.zeros(shape) for name, shape in shapes.items()}
    with Spy():
        model = building.build(config, state)
    initialisers = {"normal_", "uniform_", "kaiming_uniform_", "fill_", "zero_", "ones_", "zeros_"}
    assert called and not initialisers.intersection(called)
    assert model.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory maps")
def test_a_loaded_model_keeps_no_view_of_its_weights_file(small_folder, tmp_path):
    """Tensors read from safetensors are views of the file's memory map; one left in the model
    would keep the map, and every page of the file that was read, resident."""
    folder = Path(shutil.copytree(small_folder[0], tmp_path / "movq"))
    model = weights.load(folder)
    gc.collect()
    file = str(reading.locate(folder).path.resolve())
    assert not [line for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(file)]
    assert model.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def _run(code: str) -> str:
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


@pytest.mark.slow
def test_loading_in_a_fresh_interpreter_does_not_import_the_compiler(small_folder):
    folder, _ = small_folder
    code = (
        "import sys; from movq_cli.checkpoints import building, reading, weights; "
        f"weights.load({str(folder)!r}); print('torch._dynamo' in sys.modules)"
    )
    assert _run(code).split() == ["False"]


@pytest.mark.slow
def test_movq_decode_imports_neither_diffusers_nor_the_compiler(small_folder, tmp_path):
    folder, _ = small_folder
    np.save(tmp_path / "codes.npy", np.random.default_rng(0).integers(0, 64, (2, 4, 4)))
    code = (
        "import sys; from movq_cli.cli import app\n"
        f"try: app(['decode', {str(tmp_path / 'codes.npy')!r}, {str(tmp_path / 'out')!r} + '/', '-w', {str(folder)!r}, '-q'])\n"
        "except SystemExit as exit: assert not exit.code, exit.code\n"
        "print(sorted(name for name in ('diffusers', 'torch._dynamo', 'huggingface_hub') if name in sys.modules))"
    )
    assert _run(code).strip() == "[]"
    assert len(list((tmp_path / "out").glob("*.png"))) == 2
