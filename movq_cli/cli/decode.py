"""The `movq` command line: parses arguments, calls the library, reports in one line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from movq_cli import __version__
from movq_cli.batch import FORMATS, BatchOptions, FileReport, Job, decode_batch, is_batch, plan, read_clip
from movq_cli.checkpoints import weights as weights_io
from movq_cli.checkpoints.bundled import default_weights
from movq_cli.cli.checkpoints import app as checkpoints_app
from movq_cli.cli.console import (
    DeviceOption,
    DtypeOption,
    GridOption,
    KeyOption,
    batch_progress,
    batch_summary,
    error_line,
    frame_progress,
    reported_errors,
    stderr,
    summary,
)
from movq_cli.cli.encode import app as encode_app
from movq_cli.cli.preview import app as preview_app
from movq_cli.device import resolve_device, resolve_dtype
from movq_cli.errors import InputError
from movq_cli.io import codes as codes_io
from movq_cli.pipeline import decode_to_file

app = typer.Typer(
    name="movq",
    help="Decode MoVQ codes and latents into pictures and video.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        print(f"movq {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Decode MoVQ codes and latents into pictures and video."""


@app.command(
    epilog=(
        "With one code file, OUT is the output and its suffix decides the format. With several inputs, "
        "a folder or a quoted glob pattern, OUT is a folder: one output per code file, in the same tree, "
        "in the --format; a bad file is reported and the batch goes on (exit 1 at the end).\n\n"
        "Examples:\n\n"
        "  movq decode clip.npy clip.mp4 --weights kandinsky-2-2-decoder/movq\n\n"
        "  movq decode clip.npy frames/ --weights movq.safetensors --device cuda:1 --dtype bf16\n\n"
        "  movq decode tokens.npy image.png --weights movq/ --grid 32x32\n\n"
        "  movq decode latents.npz clip.mp4 --weights movq/ --key latents --fps 12\n\n"
        "  movq decode clip.npy first-second.mp4 --frames 0:24\n\n"
        "  movq decode codes/ 'more/**/*.npy' videos/ --skip-existing --json > report.jsonl"
    ),
)
def decode(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Code files (.npy/.npz of integer codes or float latents), folders or glob patterns, then OUT: "
            "NAME.mp4, NAME.png (one frame) or a folder of PNG frames for one code file; the output folder for many.",
            metavar="CODES... OUT",
            show_default=False,
        ),
    ],
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights",
            "-w",
            help="A checkpoint (.safetensors, .ckpt, .pt) or a diffusers folder; default: the bundled model.",
        ),
    ] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "fp32",
    chunk: Annotated[
        int | None, typer.Option(min=1, help="Frames per decoder call (default: from memory and frame size).")
    ] = None,
    fps: Annotated[float, typer.Option(min=0.01, help="Frames per second of the MP4.")] = 24.0,
    crf: Annotated[int, typer.Option(min=0, max=51, help="H.264 quality, 0 (lossless) to 51 (worst).")] = 18,
    grid: GridOption = None,
    key: KeyOption = None,
    frames: Annotated[
        str | None, typer.Option(help="Decode only START:STOP[:STEP] of each clip (Python slice rules).")
    ] = None,
    snap: Annotated[bool, typer.Option("--snap", help="Snap latents to their nearest codebook rows.")] = False,
    format: Annotated[
        str | None, typer.Option("--format", help=f"Output of each file in a batch: {', '.join(FORMATS)} (mp4).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Leave existing outputs as they are.")] = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop a batch at the first failure.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per file on stdout, nothing else.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary.")] = False,
) -> None:
    """Decode clips of codes or latents to MP4s, PNGs, or folders of PNG frames."""
    with reported_errors():
        if len(paths) < 2:
            raise InputError("give the code files, then OUT (see movq decode --help)")
        *inputs, out = paths
        if overwrite and skip_existing:
            raise InputError("--overwrite and --skip-existing contradict each other; choose one")
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype)
        options = BatchOptions(
            key=key, grid=codes_io.parse_grid(grid) if grid else None,
            frames=codes_io.parse_frames(frames) if frames else None, chunk=chunk, fps=fps, crf=crf, snap=snap,
            overwrite=overwrite, skip_existing=skip_existing, fail_fast=fail_fast,
        )  # fmt: skip
        if not is_batch(inputs):
            if format is not None:
                raise InputError("--format is for batches; with one code file, the suffix of OUT decides")
            _decode_file(Job(inputs[0], out), weights, torch_device, torch_dtype, options, as_json, quiet)
            return
        jobs = plan(inputs, out, format or "mp4")
        model = weights_io.load(weights or default_weights(), torch_device, torch_dtype)
        started = time.perf_counter()
        with batch_progress(len(jobs), quiet) as progress:

            def on_report(report: FileReport) -> None:
                progress.end_file()
                if as_json:
                    print(json.dumps(report.as_json()), flush=True)
                if quiet and report.error:
                    error_line(report.error)

            def on_start(job: Job, frames: int):
                return progress.start_file(job.codes.name, frames)

            reports = decode_batch(model, jobs, torch_device, options, on_start, on_report)
        if not quiet:
            batch_summary(reports, time.perf_counter() - started)
    if any(report.status == "failed" for report in reports):
        raise typer.Exit(1)


def _decode_file(job: Job, weights, device, dtype, options: BatchOptions, as_json: bool, quiet: bool) -> None:
    """One code file into OUT, as movq has always done it: any failure is the command's error."""
    if options.skip_existing and (job.output.exists() or job.output.is_symlink()):
        report = FileReport(job.codes, job.output, "skipped")
    else:
        clip = read_clip(job.codes, options)
        model = weights_io.load(weights or default_weights(), device, dtype)
        with frame_progress(f"decoding {job.codes.name}", clip.n_frames, quiet) as advance:
            result = decode_to_file(
                model, clip, job.output, device, chunk=options.chunk, fps=options.fps, crf=options.crf,
                snap=options.snap, overwrite=options.overwrite, on_frames=advance,
            )  # fmt: skip
        report = FileReport(job.codes, result.output, "done", result.frames, result.frame_size, result.seconds)
    if as_json:
        print(json.dumps(report.as_json()), flush=True)
    if quiet:
        return
    if report.status == "skipped":
        stderr.print(f"skipped: {escape(str(job.output))} exists", soft_wrap=True)
    else:
        summary(report.frames, report.frame_size, report.seconds, report.output)


app.add_typer(encode_app)
app.add_typer(preview_app)
app.add_typer(checkpoints_app)
