"""Decoding many code files in one run: one output per file, mirroring the input tree.

Inputs are code files, folders (searched recursively for code files) and glob patterns (`**`
allowed). A bad file is reported and the batch goes on; only an interruption stops it, or the
first failure with `fail_fast`. A job array's task takes its `Shard` of the plan; several
devices (`movq_cli.workers`) or a Ray cluster (`movq_cli.cluster`) share one plan.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import torch

from movq_cli.errors import InputError, MovqError, RunError, first_line, reason
from movq_cli.io.codes import ReadOptions, read_clip
from movq_cli.io.targets import listing_once, remove_dead_partials
from movq_cli.io.writers import WRITERS, ManyFrames, WriteOptions, names_a_folder
from movq_cli.models.family import DecodeOptions
from movq_cli.pipeline import decode_to_file, prepare

# --format -> the suffix of each output (png and jpg hold one frame each)
FORMATS = {"mp4": ".mp4", "webm": ".webm", "gif": ".gif", "webp": ".webp", "png": ".png", "jpg": ".jpg", "png-dir": ""}
CODE_SUFFIXES = {".npy", ".npz", ".pt", ".pth", ".safetensors"}
GLOB_CHARACTERS = set("*?[")


@dataclass(frozen=True)
class Job:
    codes: Path
    output: str | Path  # as given: "out/" names a folder, which a Path would forget
    problem: str | None = None  # why this input cannot be decoded, found while planning (a folder it cannot read)


@dataclass(frozen=True)
class FileReport:
    """What happened to one input: status is "done", "skipped" or "failed" (then `error` says why)."""

    input: Path
    output: Path
    status: str
    frames: int = 0
    frame_size: tuple[int, int] | None = None
    seconds: float = 0.0
    error: str | None = None

    def as_json(self) -> dict:
        return {
            "input": str(self.input),
            "output": str(self.output),
            "frames": self.frames,
            "frame_size": list(self.frame_size) if self.frame_size else None,  # [height, width], as named below
            "height": self.frame_size[0] if self.frame_size else None,
            "width": self.frame_size[1] if self.frame_size else None,
            "seconds": round(self.seconds, 3),
            "status": self.status,
            "error": self.error,
        }


@dataclass(frozen=True)
class BatchOptions:
    """How each file is read, decoded and written, one object per layer, handed to each as it is;
    and how the batch treats existing outputs and failures."""

    read: ReadOptions = ReadOptions()
    decode: DecodeOptions = DecodeOptions()
    write: WriteOptions = WriteOptions()
    skip_existing: bool = False
    fail_fast: bool = False


@dataclass(frozen=True)
class Shard:
    """Part `index` (from 1) of `count` parts of a plan, for the tasks of a job array.

    A job belongs to the part its output's path below OUT hashes to, so the split depends on
    nothing else: not on the order the file system lists files in, not on which outputs exist
    (a resumed task takes the same files), not on which other files are in the batch."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'K/N', 1 <= K <= N -> Shard(K, N)."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if match is None or not 1 <= int(match.group(1)) <= int(match.group(2)):
            raise InputError(f"expected K/N with 1 <= K <= N (part K of N), not {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def select(self, jobs: list[Job], out: Path) -> list[Job]:
        """The jobs of this part, in plan order."""
        return [job for job in jobs if self._part(PurePath(job.output).relative_to(out)) == self.index]

    def _part(self, relative: PurePath) -> int:
        digest = hashlib.sha256(relative.as_posix().encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.count + 1


def is_pattern(path: Path) -> bool:
    return any(character in GLOB_CHARACTERS for character in str(path))


def is_batch(inputs: list[Path]) -> bool:
    """Whether these inputs make a batch (OUT a folder) rather than one file decoded to OUT."""
    return len(inputs) > 1 or any(is_pattern(path) or path.is_dir() for path in inputs)


def find_jobs(inputs: list[Path], out: Path, format: str, write: WriteOptions | None = None) -> list[Job]:
    """One job per code file found in `inputs`, its output under `out` where the input sits in its tree.

    Raises InputError for an unknown format or one with no use for an option in `write`, an OUT
    that is a file, a folder or pattern with no code files, or two inputs that would write the same output."""
    if format not in FORMATS:
        raise InputError(f"unknown format={format!r}; use {', '.join(FORMATS)}")
    WRITERS[FORMATS[format]].check_options(write or WriteOptions())
    jobs, sources = [], {}
    for codes, relative, problem in (found for path in inputs for found in _expand(path)):
        output = out / (relative if problem else relative.with_suffix(FORMATS[format]))
        if output in sources:
            raise InputError(f"{sources[output]} and {codes} would both write {output}")
        sources[output] = codes
        jobs.append(Job(codes, output, problem))
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; with several inputs OUT is the folder the outputs go to")
    if not out.exists() and not names_a_folder(out):
        raise InputError(f"{out} names a file; with several inputs OUT is the folder the outputs go to")
    return jobs


def _expand(path: Path) -> list[tuple[Path, Path, str | None]]:
    """(code file, its path relative to the folder or the pattern's fixed prefix, None) for one
    input, and (folder, its relative path, why) for each folder below that cannot be read."""
    if is_pattern(path):
        parts = path.parts
        fixed = next(i for i, part in enumerate(parts) if is_pattern(Path(part)))
        root = Path(*parts[:fixed]) if fixed else Path()
        found = _walk(root, parts[fixed:])
        if not found:
            raise InputError(f"no {_suffixes()} files match {path}")
        return [(root / relative, relative, problem) for relative, problem in found]
    if path.is_dir():
        found = _walk(path)
        if not found:
            raise InputError(f"{path} is a folder with no {_suffixes()} files in it")
        return [(path / relative, relative, problem) for relative, problem in found]
    return [(path, Path(path.name), None)]  # a missing file fails on its own, in its turn


def _suffixes() -> str:
    *most, last = sorted(CODE_SUFFIXES)
    return f"{', '.join(most)} or {last}"


def _walk(root: Path, pattern: tuple[str, ...] | None = None) -> list[tuple[Path, str | None]]:
    """The code files below `root` (relative to it) that match the glob `pattern` (its parts; `**`
    for any folders), or are in a folder that does (None: every code file), with None; and the
    folders that cannot be read, with why. Links to folders are followed, each real folder once,
    so that a link to a folder above cannot make a loop. A code file's link to nothing is kept:
    it fails on its own, with its reason."""
    found, seen, folders = [], set(), [(Path(), pattern is None)]
    while folders:
        relative, everything = folders.pop()
        folder = root / relative
        try:
            status = folder.stat()
            if (status.st_dev, status.st_ino) in seen:
                continue
            seen.add((status.st_dev, status.st_ino))
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as error:
            found.append((relative, f"cannot read the folder {folder}: {reason(error)}"))
            continue
        for entry in entries:
            child = relative / entry.name
            inside = everything or _matches(child.parts, pattern)
            if _is_folder(entry):
                if inside or _begins_match(child.parts, pattern):
                    folders.append((child, inside))
            elif inside and Path(entry.name).suffix.lower() in CODE_SUFFIXES:
                found.append((child, None))
    return sorted(found)


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link that loops
        return False


def _matches(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether a path (its parts) matches a glob pattern (its parts), as glob does: `**` stands
    for any number of folders; wildcards take no hidden name."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_matches(parts[skip:], rest) for skip in range(len(parts) + 1) if not _hidden(parts[:skip], "*"))
    return bool(parts) and _part_matches(parts[0], head) and _matches(parts[1:], rest)


def _begins_match(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether paths below this folder (its parts) could match the pattern."""
    if not parts:
        return True
    if not pattern:
        return False
    if pattern[0] == "**":
        return not _hidden(parts[:1], "*")
    return _part_matches(parts[0], pattern[0]) and _begins_match(parts[1:], pattern[1:])


def _part_matches(name: str, pattern: str) -> bool:
    return not _hidden((name,), pattern) and fnmatch.fnmatchcase(name, pattern)


def _hidden(names: tuple[str, ...], pattern: str) -> bool:
    return any(name.startswith(".") for name in names) and not pattern.startswith(".")


def largest_first(jobs: list[Job]) -> list[Job]:
    """The jobs by the size of their code files, largest first (plan order among equals), so that
    workers sharing a queue do not end on one long file while the others wait."""

    def size(job: Job) -> int:
        with suppress(OSError):  # a missing file fails on its own, in its turn
            return os.stat(job.codes).st_size
        return 0

    return sorted(jobs, key=size, reverse=True)


def decode_batch(
    model: torch.nn.Module,
    jobs: list[Job],
    options: BatchOptions,
    on_start: Callable[[Job, int], Callable[[int], None]] | None = None,
    on_report: Callable[[FileReport], None] | None = None,
) -> list[FileReport]:
    """Decode every job with one model, on the device its weights are on. `on_start(job, frames)`
    returns the frame counter for that file; `on_report` hears how each file went. Interruptions
    propagate (after the partial output is removed); every other failure is one file's "failed" report."""
    return report_each(jobs, lambda job: decode_reported(model, job, options, on_start), options.fail_fast, on_report)


def load_worker_model(weights: str | Path, device: str, dtype: str, threads: int | None = None) -> torch.nn.Module:
    """The model a worker process or a Ray actor decodes with, loaded once: from `weights` on
    `device` in `dtype`, with `threads` torch threads (None: torch's choice), its CUDA device
    made the current one. Raises MovqError: what the user can act on as it is, any other failure
    (the device itself: no driver, out of memory) as a RunError."""
    from movq_cli import load

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model = load(weights, device, dtype)
    except MovqError:
        raise
    except Exception as error:
        raise RunError(f"loading the model on {device} failed: {first_line(error)}") from None
    where = next(model.parameters()).device
    if where.type == "cuda":
        torch.cuda.set_device(where)
    return model


def report_each(
    jobs: list[Job],
    report: Callable[[Job], FileReport],
    fail_fast: bool = False,
    on_report: Callable[[FileReport], None] | None = None,
) -> list[FileReport]:
    """`report(job)` for each job in turn, each heard by `on_report`; with `fail_fast`, none after the first failure."""
    reports = []
    with listing_once():
        for job in jobs:
            reports.append(report(job))
            if on_report:
                on_report(reports[-1])
            if reports[-1].status == "failed" and fail_fast:
                break
    return reports


def decode_one(
    model: torch.nn.Module,
    job: Job,
    options: BatchOptions,
    on_start: Callable[[Job, int], Callable[[int], None]] | None = None,
    on_pixels: Callable[[np.ndarray], None] | None = None,
) -> FileReport:
    """Decode one job into its output and say how it went: "done" or "skipped" (`on_pixels`: as
    for `decode_to_file`).

    Raises what went wrong (MovqError for what the user can act on); `decode_batch` turns that
    into a "failed" report, a single file lets it reach the user."""
    if job.problem is not None:
        raise InputError(job.problem)
    remove_dead_partials(job.output)
    if options.skip_existing and os.path.lexists(job.output):
        return FileReport(job.codes, Path(job.output), "skipped")
    plan = prepare(model, read_clip(job.codes, options.read), options.read.frames, options.decode)
    try:
        result = decode_to_file(
            plan, job.output, options.write, on_start(job, plan.n_frames) if on_start else None, on_pixels
        )
    except ManyFrames as error:  # in a batch, OUT names the folder and --format the kind of output
        error.hint = "format=png-dir writes each clip's frames to a folder of PNGs"
        raise
    return FileReport(job.codes, result.output, "done", result.frames, result.frame_size, result.seconds)


def decode_reported(
    model: torch.nn.Module,
    job: Job,
    options: BatchOptions,
    on_start: Callable[[Job, int], Callable[[int], None]] | None = None,
) -> FileReport:
    """`decode_one`, with any failure of the file as its "failed" report (interruptions still propagate)."""
    return report_of(job, lambda: decode_one(model, job, options, on_start))


def report_of(job: Job, work: Callable[[], FileReport]) -> FileReport:
    """`work()`, the report of `job`, with any failure of the file as its "failed" report
    (interruptions still propagate)."""
    started = time.perf_counter()
    try:
        return work()
    except Exception as error:  # a bad file must not end the batch, even in a way nobody foresaw
        return failed_report(job, error, time.perf_counter() - started)


def failed_report(job: Job, error: Exception, seconds: float = 0.0) -> FileReport:
    """The "failed" report of `job`, which raised `error`."""
    if isinstance(error, MovqError):
        message = str(error)
    else:
        message = f"unexpected {type(error).__name__}: {first_line(error)}"
    return FileReport(job.codes, Path(job.output), "failed", seconds=seconds, error=message)
