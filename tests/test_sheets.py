"""`movq preview CODES... OUT/`: a sheet per code file and an index.html that opens from the file
system, checked by parsing it and by opening it in a headless Chromium."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path, PurePath
from urllib.parse import unquote

import imageio.v3 as iio
import numpy as np
import pytest
from browser import CHROMIUM, Browser
from conftest import assert_one_line_error, movq

from movq_cli.sheets import decoded_output

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")

PAGE_CHECK = """(async () => {
  for (let frame = 0; frame < 600 && document.querySelector("span.video"); frame++) {
    await new Promise((next) => requestAnimationFrame(next));  // the videos are made as they come into view
  }
  const videos = [...document.querySelectorAll("video")];
  const settled = (element, events) => new Promise((done) => events.forEach((e) => element.addEventListener(e, done)));
  await Promise.all(videos.map((v) => v.readyState >= 1 || v.error ? null : settled(v, ["loadedmetadata", "error"])));
  await Promise.all([...document.images].map((i) => i.complete ? null : settled(i, ["load", "error"])));
  return {
    images: [...document.images].map((i) => [i.getAttribute("src"), i.naturalWidth]),
    videos: videos.map((v) => [v.getAttribute("src"), v.readyState, v.duration, v.videoWidth]),
  };
})()"""


class Page(HTMLParser):
    """The rows of the index's table and every URL the page refers to."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.urls: list[str] = []
        self.in_body = False
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tbody":
            self.in_body = True
        elif tag == "tr" and self.in_body:
            self.rows.append({"class": attrs.get("class"), "cells": [], "media": []})
        elif tag == "td" and self.in_body:
            self.cell = []
        for name in ("href", "src", "data-src"):
            if name in attrs:
                self.urls.append(attrs[name])
        if (tag == "img" or attrs.get("class") == "video") and self.in_body:
            self.rows[-1]["media"].append((tag, attrs))

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.rows[-1]["cells"].append("".join(self.cell).strip())
            self.cell = None
        elif tag == "tbody":
            self.in_body = False

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def batch(small_folder, tmp_path_factory):
    """codes/ (two good clips, one with a code outside the codebook), their batch decode into
    videos/, and the sheets of the batch in sheets/ with its index.html."""
    root = tmp_path_factory.mktemp("sheets")
    rng = np.random.default_rng(5)
    (root / "codes" / "sub dir").mkdir(parents=True)
    np.save(root / "codes" / "a.npy", rng.integers(0, 64, (10, 8, 8)))
    np.save(root / "codes" / "sub dir" / "b&c.npy", rng.integers(0, 64, (3, 8, 12)))
    np.save(root / "codes" / "bad.npy", np.full((2, 8, 8), 70))
    decoded = movq("decode", root / "codes", root / "videos", "-w", small_folder[0], "--format", "mp4", "-q")
    assert decoded.exit_code == 1  # bad.npy
    result = movq(
        "preview", root / "codes", f"{root / 'sheets'}/", "--decoded", root / "videos", "-w", small_folder[0],
        "--count", "4", "--json",
    )  # fmt: skip
    return root, result


def test_a_batch_writes_each_files_sheet_and_reports_each_file(batch, small_folder):
    root, result = batch
    assert result.exit_code == 1, result.output
    reports = {Path(line["input"]).name: line for line in map(json.loads, result.stdout.splitlines())}
    assert reports["a.npy"]["status"] == "done" and reports["a.npy"]["frames"] == 10
    assert reports["b&c.npy"]["frame_size"] == [16, 24]
    assert reports["bad.npy"]["status"] == "failed" and "code 70" in reports["bad.npy"]["error"]
    assert "failed: " in result.stderr and "index.html" in result.stderr
    single = movq("preview", root / "codes" / "a.npy", root / "a.png", "-w", small_folder[0], "--count", "4")
    assert single.exit_code == 0
    assert np.array_equal(iio.imread(root / "sheets" / "a.png"), iio.imread(root / "a.png"))
    assert not (root / "sheets" / "bad.png").exists()


def test_the_index_lists_every_file_and_every_link_resolves(batch):
    root, _ = batch
    index = root / "sheets" / "index.html"
    page = parse(index)
    by_file = {PurePath(row["cells"][0]).name: row for row in page.rows}
    assert sorted(by_file) == ["a.npy", "b&c.npy", "bad.npy"]
    assert by_file["a.npy"]["cells"][1:3] == ["10", "16x16"]
    assert by_file["b&c.npy"]["cells"][1:3] == ["3", "24x16"]
    assert by_file["bad.npy"]["class"] == "failed" and "code 70" in by_file["bad.npy"]["cells"][1]
    for name in ("a.npy", "b&c.npy"):
        (sheet_tag, sheet), (video_tag, video) = by_file[name]["media"]
        assert sheet_tag == "img" and sheet["loading"] == "lazy"
        assert video_tag == "span" and video["data-src"].endswith(".mp4")
    assert "code 70" in index.read_text() and 'id="failed"' in index.read_text()
    assert page.urls and all(not url.startswith(("/", "file:", "http")) for url in page.urls)
    for url in page.urls:
        assert (index.parent / unquote(url)).exists(), url


@needs_chromium
@pytest.mark.slow
def test_the_index_opens_in_a_browser_with_every_sheet_and_video_loaded(batch):
    root, _ = batch
    with Browser() as browser:
        browser.open(root / "sheets" / "index.html")
        loaded = browser.evaluate(PAGE_CHECK)
        errors = browser.errors()
    assert errors == []
    assert len(loaded["images"]) == 2 and all(width > 0 for _, width in loaded["images"])
    assert len(loaded["videos"]) == 2
    for _, ready, duration, width in loaded["videos"]:
        assert ready >= 1 and duration > 0 and width in (16, 24)


@needs_chromium
@pytest.mark.slow
def test_the_browser_check_sees_a_missing_picture(tmp_path):
    (tmp_path / "page.html").write_text('<!doctype html><img src="missing.png" loading="lazy">')
    with Browser() as browser:
        browser.open(tmp_path / "page.html")
        loaded = browser.evaluate(PAGE_CHECK)
        errors = browser.errors()
    assert loaded["images"] == [["missing.png", 0]]
    assert any("missing.png" in error for error in errors)


def test_the_decoded_output_is_found_in_whichever_format_it_was_made(tmp_path):
    (tmp_path / "gifs" / "sub").mkdir(parents=True)
    (tmp_path / "gifs" / "sub" / "a.gif").write_bytes(b"GIF89a")
    (tmp_path / "frames" / "a").mkdir(parents=True)
    assert decoded_output(tmp_path / "gifs", PurePath("sub/a")) == tmp_path / "gifs" / "sub" / "a.gif"
    assert decoded_output(tmp_path / "frames", PurePath("a")) == tmp_path / "frames" / "a"
    assert decoded_output(tmp_path / "gifs", PurePath("b")) is None
    (tmp_path / "gifs" / "sub" / "c.png").write_bytes(b"a sheet")  # sheets written beside the outputs
    assert decoded_output(tmp_path / "gifs", PurePath("sub/c")) == tmp_path / "gifs" / "sub" / "c.png"
    assert decoded_output(tmp_path / "gifs", PurePath("sub/c"), tmp_path / "gifs" / "sub" / "c.png") is None


def test_a_batch_of_sheets_needs_its_folder_and_decoded_needs_a_batch(small_folder, tmp_path):
    (tmp_path / "codes").mkdir()
    np.save(tmp_path / "codes" / "a.npy", np.zeros((2, 4, 4), np.int64))
    assert_one_line_error(movq("preview", tmp_path / "codes", "-w", small_folder[0]), 2, "needs OUT")
    result = movq(
        "preview", tmp_path / "codes" / "a.npy", tmp_path / "a.png", "--decoded", tmp_path, "-w", small_folder[0]
    )
    assert_one_line_error(result, 2, "--decoded is for batches")


def test_one_files_sheet_reports_its_frames_as_json_and_refuses_batch_options(small_folder, tmp_path):
    np.save(tmp_path / "a.npy", np.random.default_rng(6).integers(0, 64, (9, 4, 4)))
    result = movq("preview", tmp_path / "a.npy", tmp_path / "a.png", "-w", small_folder[0], "--count", "3", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"input": str(tmp_path / "a.npy"), "output": str(tmp_path / "a.png"),
                                         "frames": [0, 4, 8], "total": 9}  # fmt: skip
    for flag in ("--fail-fast", "--json"):
        result = movq("preview", tmp_path / "a.npy", "-w", small_folder[0], flag)
        assert_one_line_error(
            result, 2, "--fail-fast is for batches" if flag == "--fail-fast" else "where --json prints"
        )
