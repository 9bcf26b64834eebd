"""Token streams, written as Emu3 and Lumina-mGPT 2.0 write them, read as codes (--tokens)."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import SMALL, assert_one_line_error, make_vqmodel, movq
from safetensors.torch import save_file

from movq_cli.errors import InputError
from movq_cli.io import codes as codes_io
from movq_cli.io import tokenstreams

# Emu3's ids, as BAAI's tokenization_emu3.py numbers its special tokens: from 151643 <|endoftext|>,
# <|im_start|>, <|im_end|>, <|extra_0|> .. <|extra_204|>, then its vision tokens file.
ENDOFTEXT = 151643
END_OF_LINE = ENDOFTEXT + 3 + 200  # <|extra_200|>
END_OF_FRAME = ENDOFTEXT + 3 + 201  # <|extra_201|>
IMAGE_TOKEN, IMAGE_START, IMAGE_END = 151851, 151852, 151853
VISUAL = 184622 - 32768  # <|visual token 000000|>: the last 32768 ids of the vocabulary


def qwen_text(text: str) -> list[int]:
    """ASCII text as Qwen's byte-level BPE writes it, one token a character (digits are never
    merged, and "*" between digits stands alone): printable byte b is token b - 33 ("!" is 0)."""
    return [ord(char) - 33 for char in text]


PROMPT = qwen_text("A red fox in the snow.") + [30, 1234, 99999, 151642]
BETWEEN = qwen_text("And another:")
AFTER = qwen_text("Done!") + [151850]  # <|extra_204|>, Emu3's EOS


def emu3_image(codes: np.ndarray, offset: int = VISUAL) -> list[int]:
    """One image as Emu3 writes it: the processor's f"{image_start}{h}*{w}{image_token}", then what
    generation adds: each row of visual tokens followed by end-of-line, end-of-frame, image end
    (transformers' image_seq_length = h * (w + 1), then f"{eof_token}{image_end_token}")."""
    height, width = codes.shape
    rows = np.concatenate([codes + offset, np.full((height, 1), END_OF_LINE)], axis=1)
    return [IMAGE_START, *qwen_text(f"{height}*{width}"), IMAGE_TOKEN, *rows.ravel().tolist(), END_OF_FRAME, IMAGE_END]


# Lumina-mGPT 2.0: the ids its inference_solver.py writes as numbers
BREAK, EOSS, NEWLINE = 151665, 151666, 151670  # <racm3:break>, <eoss>, <reserved08799>
LUMINA_CODE_0 = 155000


def reserved(k: int) -> int:
    """The id of <reserved{k:05d}>: the reserved tokens run on from <reserved08799>, one id each."""
    return NEWLINE + k - 8799


def lumina_image(codes: np.ndarray, offset: int = LUMINA_CODE_0) -> list[int]:
    """One image as Lumina-mGPT 2.0's item processor writes it: <racm3:break>, the height and width
    in 32-pixel grid units as <reserved{8800 + n}>, rows of codes + 155000 each ended by
    <reserved08799>, then <eoss>."""
    height, width = codes.shape
    rows = np.concatenate([codes + offset, np.full((height, 1), NEWLINE)], axis=1)
    sizes = [reserved(8800 + height // 4), reserved(8800 + width // 4)]
    return [BREAK, *sizes, *rows.ravel().tolist(), EOSS]


def grid(height: int, width: int, codebook: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, codebook, (height, width))


FIRST, SECOND = grid(3, 5, 32768, 0), grid(3, 5, 32768, 1)
EMU3_STREAM = np.array(PROMPT + emu3_image(FIRST) + BETWEEN + emu3_image(SECOND) + AFTER)
S = len(PROMPT)  # where the first image opens


def save(path, ids) -> str:
    np.save(path, np.asarray(ids))
    return str(path)


def test_an_emu3_stream_gives_each_image_and_where_it_opens():
    images = tokenstreams.emu3(EMU3_STREAM)
    assert [image.start for image in images] == [S, S + len(emu3_image(FIRST)) + len(BETWEEN)]
    assert np.array_equal(images[0].codes, FIRST) and np.array_equal(images[1].codes, SECOND)


def test_the_ids_generated_after_an_emu3_prompt_give_the_image_it_opened():
    generated = emu3_image(FIRST)[5:] + [151850]  # transformers: generate's output less the prompt, EOS last
    images = tokenstreams.emu3(np.array(generated + BETWEEN + emu3_image(SECOND)))
    assert [image.start for image in images] == [0, len(generated) + len(BETWEEN)]
    assert np.array_equal(images[0].codes, FIRST) and np.array_equal(images[1].codes, SECOND)


def test_a_lumina_stream_gives_each_image():
    first, second = grid(4, 8, 16384, 2), grid(8, 4, 16384, 3)
    stream = np.array(PROMPT + lumina_image(first) + BETWEEN + lumina_image(second) + AFTER)
    images = tokenstreams.lumina_mgpt(stream)
    assert [image.codes.shape for image in images] == [(4, 8), (8, 4)]
    assert np.array_equal(images[0].codes, first) and np.array_equal(images[1].codes, second)


def test_lumina_size_tokens_are_checked_against_the_rows_whatever_id_n_grid_units_has():
    """The id of <reserved{8800 + n}> is derived, not published: size tokens at another base
    still read by their rows, while a pair that disagrees with the rows' shape is refused."""
    codes = grid(8, 4, 16384, 6)
    shifted = lumina_image(codes)
    shifted[1:3] = [shifted[1] + 40, shifted[2] + 40]
    (image,) = tokenstreams.lumina_mgpt(np.array(shifted))
    assert np.array_equal(image.codes, codes)
    swapped = lumina_image(codes)
    swapped[1:3] = swapped[2:0:-1]
    with pytest.raises(InputError, match=r"token 1: the size tokens say 1 x 2 grid units .* the rows give 8 x 4 codes"):
        tokenstreams.lumina_mgpt(np.array(swapped))


def test_images_of_one_size_are_the_frames_of_one_clip_of_separate_images(tmp_path):
    clip = codes_io.read(save(tmp_path / "ids.npy", EMU3_STREAM), tokens="emu3")
    assert np.array_equal(clip.array, np.stack([FIRST, SECOND]))
    assert clip.tokens == "emu3" and clip.images
    assert clip.describe() == "Emu3 token stream: 2 image(s) of 3x5 codes"
    plain = codes_io.read(save(tmp_path / "codes.npy", FIRST))
    assert not plain.images and plain.tokens is None


def test_a_batch_of_generations_is_read_row_by_row_and_its_padding_skipped(tmp_path):
    one, two = PROMPT + emu3_image(FIRST), emu3_image(SECOND) + AFTER
    length = max(len(one), len(two)) + 3
    batch = np.full((2, length), ENDOFTEXT)
    batch[0, length - len(one) :] = one  # left padding, as generate pads a batch of prompts
    batch[1, : len(two)] = two
    clip = codes_io.read(save(tmp_path / "batch.npy", batch), tokens="emu3")
    assert np.array_equal(clip.array, np.stack([FIRST, SECOND]))


def test_a_list_of_generations_in_a_pt_or_safetensors_file(tmp_path):
    sequences = [torch.tensor(PROMPT + emu3_image(grid(3, 5, 32768, k))) for k in range(11)]
    expected = np.stack([grid(3, 5, 32768, k) for k in range(11)])
    torch.save(sequences, tmp_path / "list.pt")
    assert np.array_equal(codes_io.read(tmp_path / "list.pt", tokens="emu3").array, expected)
    torch.save({"ids": sequences, "prompt": torch.zeros(3)}, tmp_path / "dict.pt")
    assert np.array_equal(codes_io.read(tmp_path / "dict.pt", key="ids", tokens="emu3").array, expected)
    with pytest.raises(InputError, match="holds float32 numbers; token ids are integers; choose the ids with key=NAME"):
        codes_io.read(tmp_path / "dict.pt", tokens="emu3")
    save_file({f"ids.{k}": sequence for k, sequence in enumerate(sequences)}, tmp_path / "ids.safetensors")
    clip = codes_io.read(tmp_path / "ids.safetensors", key="ids", tokens="emu3")
    assert np.array_equal(clip.array, expected)  # ids.10 after ids.9, in the order saved


def test_an_npz_member_and_arrays_in_memory(tmp_path):
    np.savez(tmp_path / "out.npz", ids=EMU3_STREAM, mask=np.ones(3))
    clip = codes_io.read(tmp_path / "out.npz", key="ids", tokens="emu3")
    assert np.array_equal(clip.array, np.stack([FIRST, SECOND]))
    tensors = [torch.tensor(PROMPT + emu3_image(FIRST)), torch.tensor(emu3_image(SECOND))]
    in_memory = codes_io.from_array(tensors, tokens="emu3")
    assert np.array_equal(in_memory.array, np.stack([FIRST, SECOND])) and in_memory.in_memory


def test_another_offset_reads_visual_tokens_from_there(tmp_path):
    stream = np.array(PROMPT + emu3_image(FIRST, offset=200000))
    clip = codes_io.from_array(stream, tokens="emu3", token_offset=200000)
    assert np.array_equal(clip.array[0], FIRST)
    with pytest.raises(InputError, match=rf"token {S + 5}: expected a code \(an id in \[151854, 184622\)\)"):
        codes_io.from_array(stream, tokens="emu3")
    lumina = np.array(lumina_image(grid(4, 4, 16384, 4), offset=300000))
    assert np.array_equal(
        codes_io.from_array(lumina, tokens="lumina-mgpt", token_offset=300000).array[0], grid(4, 4, 16384, 4)
    )


def test_a_size_text_not_written_in_digits_is_left_to_the_rows():
    image = emu3_image(FIRST)
    image[1:4] = [4, 500, 8]  # other text than "3*5": the rows alone give the grid
    assert np.array_equal(tokenstreams.emu3(np.array(image))[0].codes, FIRST)


def _without(stream: list[int], position: int) -> list[int]:
    return stream[:position] + stream[position + 1 :]


def _with(stream: list[int], position: int, token: int) -> list[int]:
    return stream[:position] + [token] + stream[position:]


def _set(stream: list[int], position: int, token: int) -> list[int]:
    return stream[:position] + [token] + stream[position + 1 :]


# The first image: <|image start|> at S, "3*5" at S+1..S+3, <|image token|> at S+4, row r's codes
# at S+5+6r .. S+9+6r and its end-of-line at S+10+6r, end-of-frame at S+23, image end at S+24.
E = EMU3_STREAM.tolist()
EMU3_MALFORMED = {
    "a short row": (_without(E, S + 11), S + 15, "row 1 ends after 4 codes, not 5 (as the size says)"),
    "a long row": (_with(E, S + 11, VISUAL + 7), S + 16, "expected 151846 (end-of-line) after 5 codes"),
    "a short last row": (_without(E, S + 17), S + 21, "row 2 ends after 4 codes"),
    "a missing end-of-frame": (_without(E, S + 23), S + 23, "or 151847 (end-of-frame) to close the image, found 151853"),
    "a missing image end": (_set(E, S + 24, 500), S + 24, "expected 151853 (<|image end|>), found 500"),
    "a missing image token": (_without(E, S + 4), S + 4, "expected the size text"),
    "a missing end-of-line": (_without(E, S + 10), S + 10, "expected 151846 (end-of-line) after 5 codes"),
    "an id outside the codebook": (_set(E, S + 7, 190000), S + 7, "expected a code (an id in [151854, 184622)) in row 0, after 2 of 5 codes (as the size says); found 190000"),
    "text inside an image": (_set(E, S + 7, 500), S + 7, "expected a code"),
    "an unterminated image": (E[: S + 15], S + 15, "the stream ends inside the image (expected 151847 (end-of-frame))"),
    "a size text wider than the rows": (_set(E, S + 3, qwen_text("6")[0]), S + 10, "row 0 ends after 5 codes, not 6 (as the size says)"),
    "a size text higher than the rows": (_set(E, S + 1, qwen_text("4")[0]), S + 23, "the size text says 4*5, but the image has 3 rows of 5 codes"),
    "no image": (PROMPT + AFTER, None, "no Emu3 image in this token stream: no 151852 (<|image start|>) opens one"),
}  # fmt: skip

L_IMAGE = grid(4, 8, 16384, 5)
LU = (
    PROMPT + lumina_image(L_IMAGE) + AFTER
)  # sizes at S+1, S+2; row r at S+3+9r, its newline at S+11+9r; <eoss> at S+39
LUMINA_MALFORMED = {
    "a size token that disagrees": (_set(LU, S + 1, reserved(8802)), S + 1, "the size tokens say 2 x 2 grid units of 32 pixels (8 x 8 codes), but the rows give 4 x 8 codes"),
    "rows cut short": (LU[: S + 3 + 9] + LU[S + 39 :], S + 1, "the rows give a height of 1 code, not whole grid units of 4 codes"),
    "a missing size token": (_without(LU, S + 2), S + 2, "expected a size token"),
    "a short row": (_without(LU, S + 12), S + 19, "row 1 ends after 7 codes, not 8 (as in the first row)"),
    "a code outside the codebook": (_set(LU, S + 5, LUMINA_CODE_0 + 16384), S + 5, "expected a code (an id in [155000, 171384)) or 151670 (newline), found 171384"),
    "an unterminated image": (LU[: S + 20], S + 20, "the stream ends inside the image (expected 151666 (<eoss>))"),
    "no image": (PROMPT, None, "no Lumina-mGPT image"),
}  # fmt: skip
CASES = [("emu3", name, *case) for name, case in EMU3_MALFORMED.items()]
CASES += [("lumina-mgpt", name, *case) for name, case in LUMINA_MALFORMED.items()]


@pytest.mark.parametrize("tokens, name, stream, position, needle", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_a_malformed_stream_is_one_line_naming_the_token_at_fault(tokens, name, stream, position, needle, tmp_path):
    with pytest.raises(InputError) as raised:
        codes_io.read(save(tmp_path / "ids.npy", stream), tokens=tokens)
    message = str(raised.value)
    assert "\n" not in message and needle in message, message
    if position is not None:
        assert message.startswith(f"{tmp_path / 'ids.npy'}: token {position}: "), message
    result = movq("inspect", tmp_path / "ids.npy", "--tokens", tokens)
    assert_one_line_error(result, 2, needle)


def test_a_batch_names_the_sequence_at_fault(tmp_path):
    stream = _without(E, S + 11)
    batch = np.array([stream + [ENDOFTEXT], E])
    with pytest.raises(InputError, match=rf"ids.npy: sequence 0, token {S + 15}: row 1 ends"):
        codes_io.read(save(tmp_path / "ids.npy", batch), tokens="emu3")


def test_images_of_different_sizes_are_refused_unless_one_is_picked(tmp_path):
    other = grid(4, 4, 32768, 6)
    path = save(tmp_path / "ids.npy", PROMPT + emu3_image(FIRST) + emu3_image(other))
    second_start = S + len(emu3_image(FIRST))
    with pytest.raises(
        InputError, match=rf"image 1 at token {second_start}: 4x4 codes\); decode one at a time with image=K"
    ):
        codes_io.read(path, tokens="emu3")
    assert np.array_equal(codes_io.read(path, tokens="emu3", image=1).array, other[None])
    assert_one_line_error(movq("inspect", path, "--tokens", "emu3"), 2, "decode one at a time with --image K")
    with pytest.raises(InputError, match=r"image=2, but the stream holds 2 image\(s\)"):
        codes_io.read(path, tokens="emu3", image=2)


def test_token_options_are_refused_where_they_mean_nothing(tmp_path):
    path = save(tmp_path / "ids.npy", EMU3_STREAM)
    assert_one_line_error(movq("inspect", path, "--tokens", "emu3", "--grid", "3x5"), 2, "--grid is for flat rows")
    assert_one_line_error(movq("inspect", path, "--token-offset", "5"), 2, "--token-offset is for token streams")
    assert_one_line_error(movq("inspect", path, "--image", "0"), 2, "--image is for token streams")
    assert_one_line_error(movq("inspect", path, "--tokens", "emu2"), 2, "--tokens 'emu2' is not a token stream")
    np.save(tmp_path / "floats.npy", EMU3_STREAM.astype(np.float32))
    assert_one_line_error(movq("inspect", tmp_path / "floats.npy", "--tokens", "emu3"), 2, "token ids are integers")


def test_inspect_says_what_the_stream_holds(tmp_path):
    result = movq("inspect", save(tmp_path / "ids.npy", EMU3_STREAM), "--tokens", "emu3", "--json")
    assert result.exit_code == 0, result.output
    assert '"read_as": "Emu3 token stream: 2 image(s) of 3x5 codes"' in result.stdout


# End to end: a Lumina-mGPT stream decodes with a MoVQ of 16384 codes as its codes do.


@pytest.fixture(scope="module")
def lumina_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lumina") / "movq"
    make_vqmodel(**{**SMALL, "n_e": 16384}).save_pretrained(folder)
    return folder


def test_a_lumina_stream_decodes_as_its_codes_do(lumina_model, tmp_path):
    first, second = grid(4, 8, 16384, 7), grid(4, 8, 16384, 8)
    np.save(tmp_path / "first.npy", first)
    np.save(tmp_path / "second.npy", second)
    stream = save(tmp_path / "ids.npy", PROMPT + lumina_image(first) + BETWEEN + lumina_image(second) + AFTER)
    for name in ("first", "second"):
        result = movq("decode", tmp_path / f"{name}.npy", tmp_path / f"{name}.png", "--weights", lumina_model, "-q")
        assert result.exit_code == 0, result.output
    result = movq("decode", stream, tmp_path / "images/", "--tokens", "lumina-mgpt", "--weights", lumina_model, "-q")
    assert result.exit_code == 0, result.output
    written = sorted((tmp_path / "images").glob("*.png"))
    assert [path.name for path in written] == ["00000.png", "00001.png"]
    assert np.array_equal(iio.imread(written[0]), iio.imread(tmp_path / "first.png"))
    assert np.array_equal(iio.imread(written[1]), iio.imread(tmp_path / "second.png"))
    result = movq(
        "decode",
        stream,
        tmp_path / "one.png",
        "--tokens",
        "lumina-mgpt",
        "--image",
        "1",
        "--weights",
        lumina_model,
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert np.array_equal(iio.imread(tmp_path / "one.png"), iio.imread(tmp_path / "second.png"))


def test_a_malformed_stream_writes_nothing(lumina_model, tmp_path):
    path = save(tmp_path / "ids.npy", _without(LU, S + 12))
    result = movq("decode", path, tmp_path / "out.png", "--tokens", "lumina-mgpt", "--weights", lumina_model)
    assert_one_line_error(result, 2, f"token {S + 19}: row 1 ends after 7 codes, not 8")
    assert not (tmp_path / "out.png").exists()


def test_a_folder_of_streams_decodes_one_picture_each(lumina_model, tmp_path):
    (tmp_path / "in").mkdir()
    for k in range(2):
        save(tmp_path / "in" / f"gen{k}.npy", PROMPT + lumina_image(grid(4, 4, 16384, 10 + k)) + AFTER)
        np.save(tmp_path / f"codes{k}.npy", grid(4, 4, 16384, 10 + k))
        result = movq("decode", tmp_path / f"codes{k}.npy", tmp_path / f"ref{k}.png", "--weights", lumina_model, "-q")
        assert result.exit_code == 0, result.output
    result = movq(
        "decode", tmp_path / "in", tmp_path / "out", "--tokens", "lumina-mgpt", "--format", "png", "--weights",
        lumina_model, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for k in range(2):
        assert np.array_equal(iio.imread(tmp_path / "out" / f"gen{k}.png"), iio.imread(tmp_path / f"ref{k}.png"))


def test_the_api_decodes_token_streams_in_files_and_in_memory(lumina_model, tmp_path):
    import movq_cli

    codes = grid(4, 4, 16384, 12)
    np.save(tmp_path / "codes.npy", codes)
    model = movq_cli.load(lumina_model, "cpu")
    expected = next(movq_cli.decode_frames(tmp_path / "codes.npy", model))
    shifted = torch.tensor(PROMPT + lumina_image(codes, offset=200000) + AFTER)
    frames = list(movq_cli.decode_frames([shifted], model, tokens="lumina-mgpt", token_offset=200000))
    assert len(frames) == 1 and np.array_equal(frames[0], expected)
    stream = save(tmp_path / "ids.npy", PROMPT + lumina_image(codes) + AFTER)
    movq_cli.decode(stream, tmp_path / "out.png", model, tokens="lumina-mgpt")
    assert np.array_equal(iio.imread(tmp_path / "out.png"), expected)
    result = movq("decode", save(tmp_path / "shifted.npy", shifted), tmp_path / "cli.png", "--tokens", "lumina-mgpt",
                  "--token-offset", "200000", "--weights", lumina_model, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert np.array_equal(iio.imread(tmp_path / "cli.png"), expected)
