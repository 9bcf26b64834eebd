"""A batch on a Ray cluster: the same plan, decoded by a pool of Ray Data actors.

The driver (this process) plans, puts one row per file in a dataset, largest file first, and
reads back one report row per file as files finish; each actor loads the model once, decodes one
file per call into the shared output path (atomically, as everywhere) and returns its report.
Ray itself is imported only here, and only when a batch runs on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from movq_cli.batch import BatchOptions, FileReport, Job, decode_reported, largest_first, load_worker_model
from movq_cli.errors import InputError, MovqError, RunError, first_line
from movq_cli.io.targets import remove_dead_partials

DEVICES = ("auto", "cpu", "cuda")
# Times a file is tried again on a new actor after its actor died decoding it (Ray's default,
# forever, would loop on a file that kills every actor, e.g. by running the host out of memory).
RETRIES = 2


def decode_on_ray(
    jobs: list[Job],
    weights: str | Path,
    device: str,
    dtype: str,
    options: BatchOptions,
    workers: int | None = None,
    threads: int | None = None,
    on_start: Callable[[Job, int], Callable[[int], None]] | None = None,
    on_report: Callable[[FileReport], None] | None = None,
) -> tuple[list[FileReport], str]:
    """Decode `jobs` on the Ray cluster in RAY_ADDRESS (or on one started here, if there is none,
    or on the one this process is already connected to) with `workers` actors (None: one per GPU
    of the cluster, or one on a CPU-only cluster), on `device` ("auto", "cpu" or "cuda": Ray gives
    each actor one GPU), with the model from `weights`, which every node must be able to read. On
    the CPU each actor reserves `threads` cores (default 1) and uses as many torch threads.
    The callbacks are `decode_batch`'s, heard as files finish. Returns the reports in plan order
    and what decoded them."""
    if device not in DEVICES:
        raise InputError(
            f"with ray=True, device=... takes {', '.join(DEVICES)} (Ray gives each actor its GPU), not {device!r}"
        )
    if not jobs:
        return [], "Ray"
    ray = _ray()
    started_here = not ray.is_initialized()
    reports: dict[int, FileReport] = {}
    # Ray prints its workers' failures to sys.stdout, which is for reports (--json)
    with contextlib.redirect_stdout(sys.stderr):
        try:
            if started_here:
                _connect(ray)
            dataset, workers = _dataset(ray, jobs, str(weights), device, dtype, options, workers, threads)
            described, stopped = _collect(dataset, jobs, options, reports, on_start, on_report)
        finally:
            if started_here:
                ray.shutdown()  # its actors first, then what they left
            for number, job in enumerate(jobs):
                if number not in reports:
                    remove_dead_partials(job.output, look_again=True)
    for number, job in enumerate(jobs):
        if number not in reports and not stopped:
            error = (
                f"Ray could not decode {job.codes}: the actor decoding it died, {RETRIES + 1} times "
                "(out of memory? Ray's logs, in /tmp/ray/session_latest/logs by default, say why)"
            )
            reports[number] = FileReport(job.codes, Path(job.output), "failed", error=error)
            if on_report:
                on_report(reports[number])
    return [reports[number] for number in sorted(reports)], f"Ray, {workers} actor(s): {described}"


def _ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise InputError("ray=True needs Ray: pip install 'movq[ray]'") from None
    return ray


def _connect(ray) -> None:
    """ray.init(): the cluster in RAY_ADDRESS, or a new local one; quiet, and SIGTERM still ours."""
    terminate = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    except ConnectionError as error:
        raise RunError(f"cannot reach the Ray cluster: {first_line(error)}") from None
    if callable(terminate) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)  # ray.init installs its own


def _dataset(ray, jobs: list[Job], weights: str, device: str, dtype: str, options: BatchOptions, workers, threads):
    """The jobs as a Ray dataset, largest file first, mapped by a pool of `Decoder` actors; and their number."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    if device == "cuda" and not gpus:
        raise InputError("device=cuda: the Ray cluster has no GPUs")
    workers = workers or (gpus if device == "cuda" else 1)
    resources = {"num_gpus": 1} if device == "cuda" else {"num_cpus": threads or 1}
    if Path(weights).exists():  # a local path; a Hub id or "default" is resolved on each node
        weights = os.path.abspath(weights)
    order = largest_first(jobs)
    index = {job: number for number, job in enumerate(jobs)}
    rows = [
        {"index": index[job], "codes": os.path.abspath(job.codes), "output": os.path.abspath(job.output)}
        for job in order
    ]  # absolute: the actors' working folder is not the driver's

    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # a file that fails is reported, not traced back
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    context = dataset.context
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.max_errored_blocks = -1  # a file Ray could not decode is reported failed, and the rest go on
    arguments = dict(
        fn_constructor_kwargs=dict(weights=weights, device=device, dtype=dtype, threads=threads, options=options),
        batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), **resources,
    )  # fmt: skip
    with warnings.catch_warnings():  # max_task_retries has no named parameter yet: Ray warns of ray_remote_args
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return dataset.map_batches(Decoder, max_task_retries=RETRIES, **arguments), workers
        except TypeError:  # a Ray that no longer takes it (announced for 2.64): Ray's own retries
            return dataset.map_batches(Decoder, **arguments), workers


def _collect(dataset, jobs: list[Job], options: BatchOptions, reports: dict, on_start, on_report) -> tuple[str, bool]:
    """Read the report rows into `reports` as files finish. Returns what decoded them, and whether
    the batch stopped at a failure (`fail_fast`)."""
    described = ""
    for row in dataset.iter_rows():
        if row["exit_code"]:
            raise (InputError if row["exit_code"] == InputError.exit_code else RunError)(row["error"])
        job = jobs[row["index"]]
        report = reports[row["index"]] = _report(job, row)
        described = row["decoder"]
        if on_start:  # no frame-by-frame progress from the actors: the file's frames at once
            on_start(job, report.frames)(report.frames)
        if on_report:
            on_report(report)
        if report.status == "failed" and options.fail_fast:
            return described, True
    return described, False


def _report(job: Job, row: dict) -> FileReport:
    size = (int(row["height"]), int(row["width"])) if row["height"] else None
    error = row["error"] or None
    return FileReport(
        job.codes, Path(job.output), row["status"], int(row["frames"]), size, float(row["seconds"]), error
    )


class Decoder:
    """A Ray Data actor: the model loaded once; one file per call, its report as one row.

    A model that cannot be loaded is not an actor's death (Ray would start another, to fail the
    same way): each call answers with the error and its exit code, which the driver raises."""

    def __init__(self, weights: str, device: str, dtype: str, threads: int | None, options: BatchOptions) -> None:
        from movq_cli.device import describe

        self.options = options
        self.model = self.error = None
        try:
            self.model = load_worker_model(weights, device, dtype, threads)
        except MovqError as error:
            self.error = error
        else:
            self.decoder = describe(self.model)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = []
        for index, codes, output in zip(batch["index"], batch["codes"], batch["output"], strict=True):
            if self.error is not None:
                rows.append(_row(index, error=str(self.error), exit_code=self.error.exit_code))
                continue
            report = decode_reported(self.model, Job(Path(codes), Path(output)), self.options)
            height, width = report.frame_size or (0, 0)
            rows.append(_row(index, report.status, report.frames, height, width, report.seconds, report.error or "",
                             decoder=self.decoder))  # fmt: skip
        return {column: [row[column] for row in rows] for column in rows[0]}


def _row(index, status="failed", frames=0, height=0, width=0, seconds=0.0, error="", exit_code=0, decoder="") -> dict:
    return dict(index=int(index), status=status, frames=frames, height=height, width=width, seconds=seconds,
                error=error, exit_code=exit_code, decoder=decoder)  # fmt: skip
