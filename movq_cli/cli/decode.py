"""`movq decode`: code files in, videos, pictures or folders of frames out."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from movq_cli.cli.app import command
from movq_cli.cli.console import (
    batch_progress,
    batch_summary,
    error_line,
    frame_progress,
    refuse_stdout,
    report_json,
    reported_errors,
    slow_dtype_note,
    summary,
)
from movq_cli.cli.options import (
    DtypeOption,
    FramesOption,
    GridOption,
    ImageOption,
    KeyOption,
    OverwriteOption,
    PerClipOption,
    QuietOption,
    ThreadsOption,
    TileOption,
    TokenOffsetOption,
    TokensOption,
    UnscaledOption,
    WeightsOption,
)
from movq_cli.cli.preview import check_can_show, show_first_frame
from movq_cli.errors import InputError, MovqError

if TYPE_CHECKING:
    import numpy as np

BATCH_FORMATS = "mp4, webm, gif, webp, png, jpg, png-dir"


@command(
    epilog=(
        "With one code file, OUT is the output and its suffix decides the format: .mp4, .webm, .gif, .webp "
        "(video), .png, .jpg (one frame), or a folder of PNG frames (an existing folder, a path ending in /, "
        "or a name without a suffix). With several inputs, a folder or a quoted glob pattern, OUT is a folder: "
        "one output per code file, in the same tree, in the --format; a bad file is reported and the batch "
        "goes on (exit 1 at the end).\n\n"
        "A batch runs on several devices with a list (one worker process each, largest files first), on "
        "a Ray cluster with --ray, or as part K of N with --shard K/N: the tasks of a job array, each with "
        "its own K, cover the batch once (the split depends only on the files' paths, so resumes with "
        "--skip-existing take the same files).\n\n"
        "Examples:\n\n"
        "  movq decode clip.npy clip.mp4 --weights kandinsky-community/kandinsky-2-2-decoder\n\n"
        "  movq decode clip.npy frames/ --weights movq.safetensors --device cuda:1 --dtype bf16\n\n"
        "  movq decode tokens.npy image.png --weights movq/ --grid 32x32\n\n"
        "  movq decode latents.npz clip.gif --weights movq/ --key latents --fps 12\n\n"
        "  movq decode ids.npy images/ --weights movqgan_270M.ckpt --tokens lumina-mgpt\n\n"
        "  movq decode clip.npy first-second.mp4 --frames 0:24\n\n"
        "  movq decode codes/ 'more/**/*.npy' videos/ --skip-existing --json > report.jsonl\n\n"
        "  movq decode codes/ videos/ --device cuda:all --dtype bf16\n\n"
        "  movq decode codes/ videos/ --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT --skip-existing\n\n"
        "  RAY_ADDRESS=auto movq decode /shared/codes/ /shared/videos/ --ray --workers 16 --dtype bf16"
    ),
)
def decode(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Code files (.npy, .npz, .pt, .safetensors: integer codes or float latents), folders or glob "
            "patterns, then OUT.",
            metavar="CODES... OUT",
            show_default=False,
        ),
    ],
    weights: WeightsOption = "default",
    device: Annotated[
        str,
        typer.Option(
            metavar="DEVICE[,DEVICE...]",
            help="auto, cpu, cuda, cuda:N or mps; in a batch, a list runs one worker process per device: "
            "cuda:0,cuda:1, cuda:all, cpu,cpu. With --ray: auto, cpu or cuda.",
        ),
    ] = "auto",
    dtype: DtypeOption = "fp32",
    threads: ThreadsOption = None,
    chunk: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="Frames per decoder call (default: from memory and frame size)."),
    ] = None,
    fps: Annotated[
        float | None,
        typer.Option(min=0.01, metavar="FPS", help="Frames per second of a video or animation (default 24)."),
    ] = None,
    crf: Annotated[
        int | None,
        typer.Option(
            min=0,
            metavar="CRF",
            help="Video quality, 0 (lossless) up: .mp4 0-51 (default 18), .webm 0-63 (default 24).",
        ),
    ] = None,
    grid: GridOption = None,
    key: KeyOption = None,
    tokens: TokensOption = None,
    token_offset: TokenOffsetOption = None,
    image: ImageOption = None,
    frames: FramesOption = None,
    encoder: Annotated[
        str | None,
        typer.Option(
            metavar="ENCODER",
            help="H.264 encoder of .mp4 outputs: x264-ultrafast, x264-superfast, x264-veryfast, x264-faster, "
            "x264-fast, x264-medium, x264-slow, ..., or nvenc (NVIDIA GPUs). Default: x264-medium; "
            "x264-veryfast when decoding on CUDA.",
        ),
    ] = None,
    snap: Annotated[bool, typer.Option("--snap", help="Snap latents to their nearest codebook rows.")] = False,
    unscaled: UnscaledOption = False,
    per_clip: PerClipOption = False,
    tile: TileOption = None,
    format: Annotated[
        str | None, typer.Option("--format", metavar="FORMAT", help=f"Output of each file in a batch: {BATCH_FORMATS}.")
    ] = None,
    overwrite: OverwriteOption = False,
    source_numbers: Annotated[
        bool,
        typer.Option(
            "--source-numbers",
            help="Name PNG frames by their number in the clip (--frames ::10 writes 00000.png, 00010.png, ...), "
            "not 00000.png on.",
        ),
    ] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Leave existing outputs as they are.")] = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop a batch at the first failure.")] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            metavar="K/N",
            help="Decode only part K of N of the batch: task K of a job array of N, e.g. "
            "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with sbatch --array=1-N.",
        ),
    ] = None,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Run the batch on the Ray cluster in RAY_ADDRESS, or on a local one (pip install 'movq\\[ray]').",
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, metavar="N", help="Ray actors with --ray (default: one per GPU, or one on a CPU-only cluster)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per file on stdout.")] = False,
    show: Annotated[
        bool, typer.Option("--show", help="After decoding one code file, draw its first frame in the terminal.")
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Decode clips of codes or latents to videos, pictures, or folders of PNG frames."""
    with reported_errors():
        from movq_cli import load
        from movq_cli.batch import BatchOptions, Job, Shard, decode_one, failed_report, find_jobs, is_batch
        from movq_cli.device import describe, resolve_devices, set_threads
        from movq_cli.io.codes import ReadOptions
        from movq_cli.io.targets import missing_folders, removing_empty
        from movq_cli.io.writers import WriteOptions
        from movq_cli.models.family import DecodeOptions
        from movq_cli.runners import InProcess, OnRay, Workers

        if len(paths) < 2:
            raise InputError("give the code files, then OUT (see movq decode --help)")
        *inputs, out = paths  # OUT stays a string: a trailing "/" names a folder
        inputs = [Path(path) for path in inputs]
        refuse_stdout(out)
        if overwrite and skip_existing:
            raise InputError("--overwrite and --skip-existing contradict each other; choose one")
        single = not is_batch(inputs)
        if single and format is not None:
            raise InputError("--format is for batches; with one code file, the suffix of OUT decides")
        if single and (shard or ray):
            raise InputError(
                f"{'--ray' if ray else '--shard'} is for batches: several code files, a folder or a pattern"
            )
        if show:
            check_can_show(single, as_json)
        if workers is not None and not ray:
            raise InputError("--workers is for --ray; on one machine, list the devices: --device cpu,cpu or cuda:all")
        options = BatchOptions(
            read=ReadOptions(key=key, grid=grid, frames=frames, tokens=tokens, token_offset=token_offset, image=image),
            decode=DecodeOptions(chunk=chunk, snap=snap, unscaled=unscaled, tile=tile, per_clip=per_clip),
            write=WriteOptions(fps=fps, crf=crf, encoder=encoder, overwrite=overwrite, source_numbers=source_numbers),
            skip_existing=skip_existing,
            fail_fast=fail_fast,
        )
        jobs = [Job(inputs[0], out)] if single else find_jobs(inputs, Path(out), format or "mp4", options.write)
        if shard is not None:
            jobs = Shard.parse(shard).select(jobs, Path(out))
        set_threads(threads)
        devices = [] if ray else resolve_devices(device)
        model = load(weights, str(devices[0]), dtype) if single or len(devices) == 1 else None
        if not quiet:
            slow_dtype_note(dtype, devices)
        started = time.perf_counter()

        stdout = sys.stdout  # the reports' stream, whatever a library writes to sys.stdout meanwhile (Ray does)

        def print_json(report) -> None:
            if as_json:
                print(report_json(report), file=stdout, flush=True)

        if single:
            job = jobs[0]
            first: list[np.ndarray] = []  # --show's frame, kept as it goes to the writer

            def keep_first(pixels: np.ndarray) -> None:
                if not first:
                    first.append(pixels[0].copy())

            with frame_progress(f"decoding {job.codes.name}", quiet) as progress:
                try:
                    report = decode_one(
                        model, job, options, lambda _, n: progress.start(n), keep_first if show else None
                    )
                except MovqError as error:  # its row, then its line on stderr and its exit code
                    print_json(failed_report(job, error, time.perf_counter() - started))
                    raise
            print_json(report)
            if not quiet:
                summary(report, describe(model))
            if show:
                show_first_frame(model, job.codes, options.read, options.decode, first[0] if first else None)
            return
        if ray:
            runner = OnRay(weights, device, dtype, workers, threads)
        elif model is None:
            runner = Workers(weights, devices, dtype, threads)
        else:
            runner = InProcess(model)
        made = missing_folders([job.output for job in jobs])  # what the batch makes, and removes if left empty
        with batch_progress(len(jobs), quiet) as progress, removing_empty(made):

            def on_report(report) -> None:
                progress.end_file(report.input)
                print_json(report)
                if quiet and report.error:
                    error_line(report.error)

            def on_start(job, frames: int):
                return progress.start_file(job.codes, frames)

            reports, decoder = runner.run(jobs, options, on_start, on_report)
        if not quiet:
            batch_summary(reports, time.perf_counter() - started, decoder)
    if any(report.status == "failed" for report in reports):
        raise typer.Exit(1)
