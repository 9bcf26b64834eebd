"""`movq preview CODES` without OUT: the sheet drawn in a terminal, as the terminal can draw it.

Each kind of terminal is a pseudo-terminal driven from here: it answers the questions the
command asks (device attributes, the Kitty graphics query) as that terminal would, and
everything the command writes to it is read back and taken apart.
"""

from __future__ import annotations

import base64
import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import assert_one_line_error, movq

from movq_cli.preview import BACKGROUND
from movq_cli.terminal import half_block_pixels

SGR = re.compile(rb"\x1b\[([0-9;]*)m")
KITTY_QUERY = re.compile(rb"\x1b_Gi=(\d+),[^;\x1b]*a=q")
# device attributes: 4 in the list means Sixel
ANSWERS = {"blocks": b"\x1b[?62;22c", "sixel": b"\x1b[?62;4;22c", "kitty": b"\x1b[?62;22c"}


def run_in_terminal(kind: str, args: list, columns: int, cell=(10, 20)) -> tuple[int, bytes, str]:
    """Run `movq ARGS` with a terminal of `kind` ("blocks", "sixel" or "kitty") `columns` wide as its
    stdin and stdout; returns (exit code, what it wrote to the terminal, its stderr)."""
    master, slave = pty.openpty()
    rows = 40
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, columns * cell[0], rows * cell[1]))
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", COLORTERM="truecolor")
    process = subprocess.Popen(
        [sys.executable, "-m", "movq_cli", *map(str, args)], stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env
    )
    os.close(slave)
    written = b""
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # the command ended and closed the terminal
            break
        if not chunk:
            break
        written += chunk
        if b"\x1b[c" in chunk:
            os.write(master, ANSWERS[kind])
        query = KITTY_QUERY.search(chunk)
        if query and kind == "kitty":
            os.write(master, b"\x1b_Gi=" + query.group(1) + b";OK\x1b\\")
    os.close(master)
    stderr = process.stderr.read().decode()
    return process.wait(), written, stderr


def half_block_cells(written: bytes) -> np.ndarray:
    """The half-block characters on the terminal as pixels (2 * rows, columns, 3): each cell's
    foreground is its upper pixel, its background the lower one."""
    lines, line, colours = [], [], {"38": None, "48": None}
    text = written.replace(b"\r\n", b"\n")
    position = 0
    while position < len(text):
        sgr = SGR.match(text, position)
        if sgr:
            fields, i = sgr.group(1).split(b";"), 0
            while i < len(fields):
                if fields[i] in (b"38", b"48") and fields[i + 1] == b"2":
                    colours[fields[i].decode()] = tuple(int(value) for value in fields[i + 2 : i + 5])
                    i += 5
                else:
                    i += 1
            position = sgr.end()
        elif text.startswith("▀".encode(), position):
            line.append((colours["38"], colours["48"]))
            position += len("▀".encode())
        elif text[position : position + 1] == b"\n":
            if line:
                lines.append(line)
            line = []
            position += 1
        else:
            position += 1
    assert len({len(cells) for cells in lines}) == 1, "every line of the picture is as wide"
    upper = np.array([[cell[0] for cell in cells] for cells in lines], np.uint8)
    lower = np.array([[cell[1] for cell in cells] for cells in lines], np.uint8)
    return np.stack([upper, lower], axis=1).reshape(-1, upper.shape[1], 3)


@pytest.fixture(scope="module")
def clip_and_sheet(small_folder, tmp_path_factory):
    """A clip of 10 frames of 8x8 codes, and its sheet of 4 frames written as a PNG."""
    folder = tmp_path_factory.mktemp("terminal")
    np.save(folder / "clip.npy", np.random.default_rng(3).integers(0, 64, (10, 8, 8)))
    args = [folder / "clip.npy", "-w", small_folder[0], "--count", "4"]
    result = movq("preview", args[0], folder / "sheet.png", *args[1:])
    assert result.exit_code == 0, result.output
    return args, iio.imread(folder / "sheet.png")


@pytest.mark.slow
def test_half_blocks_in_a_plain_terminal_are_the_sheets_pixels(clip_and_sheet):
    args, sheet = clip_and_sheet
    code, written, stderr = run_in_terminal("blocks", ["preview", *args], columns=100)
    assert code == 0, stderr
    assert "(blocks)" in stderr and "frames 0, 3, 6, 9 of 10" in stderr
    cells = half_block_cells(written)
    assert sheet.shape == (16, 4 * 16 + 3 * 2, 3)
    assert np.array_equal(cells, sheet)  # 70 columns, 8 lines: one cell for two pixels, exactly


@pytest.mark.slow
def test_half_blocks_shrink_to_the_terminals_width(clip_and_sheet):
    args, sheet = clip_and_sheet
    code, written, stderr = run_in_terminal("blocks", ["preview", *args], columns=35)
    assert code == 0, stderr
    cells = half_block_cells(written)
    assert cells.shape == (8, 35, 3)
    means = sheet.astype(float).reshape(8, 2, 35, 2, 3).mean(axis=(1, 3))  # the sheet is 2x as wide
    assert np.abs(cells - means).max() <= 1


def test_half_block_pixels_pad_an_odd_height_with_the_background():
    picture = np.full((5, 4, 3), 200, np.uint8)
    pixels = half_block_pixels(picture, columns=80, background=BACKGROUND)
    assert pixels.shape == (6, 4, 3)
    assert (pixels[:5] == 200).all() and (pixels[5] == BACKGROUND).all()


@pytest.mark.slow
def test_a_kitty_terminal_gets_the_sheet_as_a_kitty_graphics_picture(clip_and_sheet):
    args, sheet = clip_and_sheet
    code, written, stderr = run_in_terminal("kitty", ["preview", *args], columns=100)
    assert code == 0, stderr
    assert "(kitty)" in stderr
    payload = b"".join(re.findall(rb"\x1b_G[^;\x1b]*f=100[^;\x1b]*;([A-Za-z0-9+/=]+)\x1b\\", written))
    payload += b"".join(re.findall(rb"\x1b_Gm=[01];([A-Za-z0-9+/=]+)\x1b\\", written))
    picture = iio.imread(io.BytesIO(base64.b64decode(payload)))
    assert picture.shape[1] == 70  # 7 cells of 10 pixels: the sheet's width
    assert "▀".encode() not in written


@pytest.mark.slow
def test_a_sixel_terminal_gets_the_sheet_in_sixels(clip_and_sheet):
    args, sheet = clip_and_sheet
    code, written, stderr = run_in_terminal("sixel", ["preview", *args], columns=100)
    assert code == 0, stderr
    assert "(sixel)" in stderr
    raster = re.search(rb"\x1bP[0-9;]*q\"1;1;(\d+);(\d+)", written)
    assert raster and int(raster.group(1)) == 70
    assert written.rstrip().endswith(b"\x1b8") and b"\x1b\\" in written
    assert "▀".encode() not in written


def test_nothing_is_drawn_into_a_pipe_or_a_file(clip_and_sheet, tmp_path):
    args, _ = clip_and_sheet
    result = movq("preview", *args)
    assert_one_line_error(result, 2, "stdout is not a terminal")
    assert result.stdout == ""
    with open(tmp_path / "out.txt", "wb") as stdout:
        code = subprocess.run(
            [sys.executable, "-m", "movq_cli", "preview", *map(str, args)], stdout=stdout, stderr=subprocess.PIPE
        ).returncode
    assert code == 2 and (tmp_path / "out.txt").read_bytes() == b""


@pytest.mark.slow
def test_a_comparison_without_out_is_drawn_in_the_terminal(clip_and_sheet, tmp_path):
    args, _ = clip_and_sheet
    compare = ["compare", *args, "--against-dtype", "bf16"]
    result = movq(compare[0], compare[1], tmp_path / "sheet.png", *compare[2:])
    assert result.exit_code == 0, result.output
    sheet = iio.imread(tmp_path / "sheet.png")
    code, written, stderr = run_in_terminal("blocks", compare, columns=100)
    assert code == 0, stderr
    assert "PSNR" in stderr and "SSIM" in stderr
    assert np.array_equal(half_block_cells(written), half_block_pixels(sheet, 100, BACKGROUND))


@pytest.mark.slow
def test_decode_show_draws_the_first_frame_written(clip_and_sheet, tmp_path):
    args, _ = clip_and_sheet
    clip, weights = args[0], args[2]
    command = ["decode", clip, tmp_path / "frames", "-w", weights, "--frames", "4:9", "--show"]
    code, written, stderr = run_in_terminal("blocks", command, columns=100)
    assert code == 0, stderr
    assert np.array_equal(half_block_cells(written), iio.imread(tmp_path / "frames" / "00000.png"))  # frame 4


def test_decode_show_draws_the_frame_it_wrote_without_decoding_it_again(clip_and_sheet, tmp_path, monkeypatch):
    """The first frame is kept as it goes to the writer; only a skipped decode decodes it alone."""
    import movq_cli.pipeline
    import movq_cli.terminal

    args, _ = clip_and_sheet
    clip, weights = args[0], args[2]
    drawn, decodes = [], []
    real = movq_cli.pipeline.decode_frames

    def counted(plan, *rest, **options):
        decodes.append(plan.n_frames)
        return real(plan, *rest, **options)

    monkeypatch.setattr(movq_cli.terminal, "is_terminal", lambda stream: True)
    monkeypatch.setattr(movq_cli.terminal, "draw", lambda picture, background=0: drawn.append(picture.copy()))
    monkeypatch.setattr(movq_cli.pipeline, "decode_frames", counted)
    out = tmp_path / "frames"
    result = movq("decode", clip, out, "-w", weights, "--frames", "4:9", "--show")
    assert result.exit_code == 0, result.output
    assert decodes == [5] and len(drawn) == 1
    assert np.array_equal(drawn[0], iio.imread(out / "00000.png"))  # frame 4
    result = movq("decode", clip, out, "-w", weights, "--frames", "4:9", "--show", "--skip-existing")
    assert result.exit_code == 0, result.output
    assert decodes == [5, 1] and np.array_equal(drawn[1], drawn[0])


def test_decode_show_is_refused_before_decoding_where_it_cannot_draw(clip_and_sheet, tmp_path):
    args, _ = clip_and_sheet
    clip, weights = args[0], args[2]
    assert_one_line_error(movq("decode", clip, tmp_path / "a.mp4", "-w", weights, "--show"), 2, "not a terminal")
    result = movq("decode", clip, tmp_path / "b.mp4", "-w", weights, "--show", "--json")
    assert_one_line_error(result, 2, "--json")
    result = movq("decode", clip, clip, tmp_path / "c", "-w", weights, "--show")
    assert_one_line_error(result, 2, "movq preview")
    assert list(tmp_path.iterdir()) == []


def test_commands_load_the_terminal_library_only_to_draw():
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from movq_cli.cli import app\n"
        "for args in (['preview', '--help'], ['compare', '--help'], ['decode', '--help']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
        "print('textual_image' in sys.modules, 'PIL' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
