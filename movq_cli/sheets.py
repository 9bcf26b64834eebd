"""A contact sheet for every code file of a batch, and an index.html to look across them.

The page is static: it opens from the file system, with no server and no build step. Every
link is relative, so the folder can be copied elsewhere with the outputs beside it. Sheets load
lazily and videos are made only when they scroll into view, so a page of thousands of files
opens at once.
"""

from __future__ import annotations

import html
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path, PurePath
from urllib.parse import quote

import torch

from movq_cli.batch import FORMATS, BatchOptions, FileReport, Job, report_each, report_of
from movq_cli.io.codes import read_clip
from movq_cli.io.targets import AtomicTarget
from movq_cli.preview import preview_to_file

INDEX = "index.html"
VIDEO_SUFFIXES = {".mp4", ".webm"}
PICTURE_SUFFIXES = {".gif", ".webp", ".png", ".jpg"}

STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1em; background: #111; color: #ddd; }
a { color: #8cf; }
table { border-collapse: collapse; }
td, th { padding: 4px 8px; border-bottom: 1px solid #333; text-align: left; vertical-align: top; }
td:first-child { max-width: 24em; overflow-wrap: anywhere; }
tbody tr { content-visibility: auto; contain-intrinsic-size: auto 200px; }
img { max-width: 512px; height: auto; }
video { max-width: 256px; height: auto; }
span.video { display: inline-block; width: 256px; height: 144px; }
.failed { color: #f66; }
"""

# A <video> element costs the page even unloaded (2000 of them delay its load by seconds), so
# each decoded video is a placeholder that becomes one as it comes near the viewport.
SCRIPT = """
const observer = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    observer.unobserve(entry.target);
    const video = document.createElement("video");
    Object.assign(video, {src: entry.target.dataset.src, controls: true, muted: true, loop: true, playsInline: true,
                          preload: "metadata"});
    entry.target.replaceWith(video);
  }
}, {rootMargin: "800px"});
document.querySelectorAll("span.video").forEach((slot) => observer.observe(slot));
"""


def preview_batch(
    model: torch.nn.Module,
    jobs: list[Job],
    options: BatchOptions,
    count: int = 8,
    columns: int | None = None,
    on_report: Callable[[FileReport], None] | None = None,
) -> list[FileReport]:
    """Write each job's contact sheet (its output, a .png) and report each file: its frames and
    frame size when done, why when failed. Only an interruption ends the batch early (or the
    first failure with `options.fail_fast`)."""

    def sheet(job: Job) -> FileReport:
        started = time.perf_counter()
        clip = read_clip(job.codes, options.read)
        result = preview_to_file(model, clip, Path(job.output), count, columns, options.write.overwrite, options.decode)
        seconds = time.perf_counter() - started
        return FileReport(job.codes, result.output, "done", result.total, result.frame_size, seconds)

    return report_each(jobs, lambda job: report_of(job, lambda: sheet(job)), options.fail_fast, on_report)


def decoded_output(decoded: Path, relative: PurePath, sheet: Path | None = None) -> Path | None:
    """The output a batch decode into `decoded` made of the code file at `relative` (its path
    below the batch's root, without suffix), in whichever format it was made, other than the
    file `sheet` (where sheets and outputs share a folder); None if none."""
    for suffix in FORMATS.values():
        candidate = decoded / relative.with_suffix(suffix) if suffix else decoded / relative
        if candidate == sheet:
            continue
        if candidate.is_file() or (not suffix and candidate.is_dir()):
            return candidate
    return None


def _link(target: Path, page_folder: Path) -> str:
    """`target` as a relative URL from a page in `page_folder`."""
    relative = PurePath(os.path.relpath(os.path.abspath(target), os.path.abspath(page_folder)))
    return quote(relative.as_posix()) + ("/" if target.is_dir() else "")


def _decoded_cell(output: Path | None, page_folder: Path) -> str:
    if output is None:
        return "<td>-</td>"
    href, name = _link(output, page_folder), html.escape(output.name)
    suffix = output.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        media = f'<span class="video" data-src="{href}"></span>'
    elif suffix in PICTURE_SUFFIXES:
        media = f'<img src="{href}" loading="lazy" decoding="async" alt="decoded {name}">'
    else:
        media = f"{len(os.listdir(output))} frames"
    return f'<td><a href="{href}">{name}</a><br>{media}</td>'


def index_page(reports: list[FileReport], out: Path, decoded: Path | None = None) -> str:
    """The HTML of the index of `reports`' sheets, which are in `out`, with each file's decoded
    output from `decoded` beside its sheet when there is one."""
    rows, failed = [], []
    for report in reports:
        name = html.escape(PurePath(report.output).relative_to(out).with_suffix("").as_posix())
        code_file = f'<td><a href="{_link(report.input, out)}">{html.escape(str(report.input))}</a></td>'
        if report.status != "done":
            reason = html.escape(report.error or report.status)
            rows.append(f'<tr class="failed">{code_file}<td colspan="4">{report.status}: {reason}</td></tr>')
            failed.append(f"<li>{html.escape(str(report.input))}: {reason}</li>")
            continue
        height, width = report.frame_size
        sheet = _link(report.output, out)
        relative = PurePath(report.output).relative_to(out).with_suffix("")
        output = decoded_output(decoded, relative, Path(report.output)) if decoded else None
        rows.append(
            f"<tr>{code_file}<td>{report.frames}</td><td>{width}x{height}</td>"
            f'<td><a href="{sheet}"><img src="{sheet}" loading="lazy" decoding="async" alt="sheet of {name}"></a></td>'
            f"{_decoded_cell(output, out)}</tr>"
        )
    counts = Counter(report.status for report in reports)
    failures = f'<h2 id="failed">{len(failed)} failed</h2>\n<ul class="failed">{"".join(failed)}</ul>' if failed else ""
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>movq: {len(reports)} code files</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{len(reports)} code files: {counts['done']} sheets, {counts['failed']} failed</h1>\n"
        f"{failures}\n<table>\n<thead><tr><th>code file</th><th>frames</th><th>frame size</th><th>sheet</th>"
        f"<th>decoded</th></tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>\n"
        f"<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )


def write_index(reports: list[FileReport], out: Path, decoded: Path | None = None) -> Path:
    """Write `out`/index.html (replacing the one there), whole or not at all; returns its path."""
    page = index_page(reports, out, decoded)
    target = AtomicTarget(out / INDEX, overwrite=True)
    try:
        target.temp.write_text(page, encoding="utf-8")
        target.commit()
    except BaseException:
        target.remove()
        raise
    return out / INDEX
