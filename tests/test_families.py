"""Every model family plugs in the same way: one table (`movq_cli.families`), one build, one reading."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import movq_cli
from movq_cli import families
from movq_cli.checkpoints import building, reading, weights
from movq_cli.errors import InputError
from movq_cli.models.config import CogVideoXConfig, Emu3Config, MovqConfig

CONFIGS = {
    "movq": MovqConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), n_embed=64),
    "cogvideox": CogVideoXConfig(block_out_channels=(16, 16, 32), layers_per_block=1, norm_num_groups=8),
    "emu3": Emu3Config(codebook_size=64, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,)),
}


def random_state(config) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    state = {name: torch.randn(shape, generator=generator) for name, shape in building.expected_shapes(config).items()}
    for name in state:
        if name == "quantize.used" or name.endswith("num_batches_tracked"):  # the integer tensors
            state[name] = torch.arange(state[name].numel()).view(state[name].shape)
    return state


@pytest.mark.parametrize("name", CONFIGS)
def test_every_family_is_built_in_memory_of_its_own(name):
    config = CONFIGS[name]
    state = random_state(config)
    model = building.build(config, state)
    assert families.of_model(model) is families.of_config(config) is families.named(name)
    given = {tensor.untyped_storage().data_ptr() for tensor in state.values()}
    held = [*model.parameters(), *model.buffers()]
    assert held and not [tensor for tensor in held if tensor.untyped_storage().data_ptr() in given]
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[key]), key


@pytest.mark.parametrize("name", CONFIGS)
def test_every_family_reports_its_mismatched_tensors_alike(name):
    config = CONFIGS[name]
    state = random_state(config)
    first, second = list(state)[:2]
    state[first] = state[first][..., :1]
    state["decoder.extra.weight"] = torch.zeros(1)
    del state[second]
    with pytest.raises(InputError) as refused:
        building.build(config, state, source="w.safetensors")
    message = str(refused.value)
    assert message.startswith("w.safetensors: weights do not match the config (missing: ")
    assert f"missing: {second}" in message and "unexpected: decoder.extra.weight" in message
    assert f"wrong shape: {first}" in message


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory maps")
@pytest.mark.parametrize("name", CONFIGS)
def test_a_native_file_of_every_family_round_trips_and_leaves_no_map(name, tmp_path):
    config = CONFIGS[name]
    path = tmp_path / f"{name}.safetensors"
    weights.save(building.build(config, random_state(config)), path)
    located = reading.locate(path)
    assert located.config == config and located.config_source == "metadata"
    model = movq_cli.load(path, "cpu")
    gc.collect()
    assert families.of_model(model).name == name
    file = str(path.resolve())
    assert not [line for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(file)]


def test_a_foreign_file_of_every_family_is_recognised_by_its_tensors(tmp_path):
    for name, config in CONFIGS.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(random_state(config), path)  # no metadata: the config is inferred
        checkpoint = reading.read_checkpoint(path, config=config if name == "cogvideox" else None)  # its scale
        assert checkpoint.config == config or name == "cogvideox"
        assert families.of_config(checkpoint.config).name == name


def test_a_config_of_one_family_for_tensors_of_another_is_one_line(tmp_path):
    path = tmp_path / "video.safetensors"
    save_file(random_state(CONFIGS["cogvideox"]), path)
    with pytest.raises(InputError, match="cogvideox tensors, but a movq config \\(given\\)"):
        reading.read_checkpoint(path, config=CONFIGS["movq"])


def test_presets_of_every_family_are_read_by_name():
    assert isinstance(reading.read_config("kandinsky-2.2"), MovqConfig)
    assert reading.read_config("cogvideox-5b") == CogVideoXConfig(scaling_factor=0.7)
    with pytest.raises(InputError, match=r"config=nothing: neither a preset \(.*cogvideox-2b.*\) nor a file"):
        reading.read_config("nothing")


def test_a_config_file_of_fields_picks_the_family_whose_config_has_them(tmp_path):
    video = tmp_path / "video.json"
    video.write_text(CONFIGS["cogvideox"].to_json())
    flat = tmp_path / "flat.json"
    flat.write_text(CONFIGS["movq"].to_json())
    assert reading.read_config(str(video)) == CONFIGS["cogvideox"]
    assert reading.read_config(str(flat)) == CONFIGS["movq"]
    assert families.FAMILIES[-1] is families.MOVQ  # the family of last resort is asked last
