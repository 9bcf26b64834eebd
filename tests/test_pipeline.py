"""The decode pipeline hands every chunk to the writer once, in order, however far it looks ahead."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from movq_cli.checkpoints import weights
from movq_cli.io import codes as codes_io
from movq_cli.models.family import DecodeOptions
from movq_cli.pipeline import decode_frames, prepare


@pytest.fixture(scope="module")
def model_and_clip(small_folder, tmp_path_factory):
    folder, _ = small_folder
    path = tmp_path_factory.mktemp("codes") / "clip.npy"
    np.save(path, np.random.default_rng(0).integers(0, 64, (7, 4, 6), dtype=np.int16))
    return weights.load(folder), codes_io.read(path)


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_chunks_come_out_in_order_whatever_the_look_ahead(model_and_clip, ahead):
    model, clip = model_and_clip
    chunks = list(decode_frames(prepare(model, clip, options=DecodeOptions(chunk=3)), ahead=ahead))
    assert [len(c) for c in chunks] == [3, 3, 1]
    whole = list(decode_frames(prepare(model, clip, options=DecodeOptions(chunk=clip.n_frames))))
    assert len(whole) == 1 and np.array_equal(np.concatenate(chunks), whole[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_decoding_copies_through_pinned_memory_and_matches_the_cpu(model_and_clip):
    model, clip = model_and_clip
    device = torch.device("cuda")
    on_gpu = copy.deepcopy(model).to(device)
    chunks = list(decode_frames(prepare(on_gpu, clip, options=DecodeOptions(chunk=2))))
    assert [len(c) for c in chunks] == [2, 2, 2, 1]
    expected = np.concatenate(list(decode_frames(prepare(model, clip))))
    assert np.abs(np.concatenate(chunks).astype(int) - expected.astype(int)).max() <= 1
