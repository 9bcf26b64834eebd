"""Several devices on one machine: one worker process per device, sharing one queue of files.

The parent hands out one job at a time, largest file first, to whichever worker is free, and
alone reports: each worker streams back when it starts a file, its frames as they are written,
and the file's report. A worker loads the model once and owns its device; CPU workers split the
cores between them.

Stopping: workers ignore SIGINT (a terminal's Ctrl-C reaches the whole process group); the
parent, interrupted, sends each one SIGTERM, which a worker turns into KeyboardInterrupt, so that
its writer removes the partial output, and waits for them. A worker that dies fails the file it
held, its partial output is removed, and a new worker takes its place.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection, wait
from pathlib import Path

import torch

from movq_cli.batch import BatchOptions, FileReport, Job, decode_reported, largest_first, load_worker_model
from movq_cli.errors import MovqError, RunError, interrupt
from movq_cli.io.targets import listing_once, remove_dead_partials

STOP_SECONDS = 10.0  # how long a stopped worker may take to remove its partial output before it is killed


def cpu_threads(devices: list[torch.device], threads: int | None) -> int | None:
    """Threads per worker on the CPU: `threads`, or the cores shared out among the CPU workers."""
    if threads is not None:
        return threads
    workers = sum(device.type == "cpu" for device in devices)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers) if workers else None


def decode_on_workers(
    jobs: list[Job],
    weights: str | Path,
    devices: list[torch.device],
    dtype: str,
    options: BatchOptions,
    threads: int | None = None,
    on_start: Callable[[Job, int], Callable[[int], None]] | None = None,
    on_report: Callable[[FileReport], None] | None = None,
) -> tuple[list[FileReport], str]:
    """Decode `jobs` with one worker process per device in `devices`, each with its own model
    loaded from `weights` in `dtype`. The callbacks are `decode_batch`'s, called in this process
    as files start and end on any worker. Returns the reports in plan order and what decoded them
    ("2 workers: cpu, fp32, 1 thread(s)").

    Raises the error of a worker that cannot load the model; a worker that dies fails its file."""
    if not jobs:
        return [], "no workers"
    starter = _Starter(str(weights), dtype, cpu_threads(devices, threads), options)
    pool = _Pool(jobs, starter, options.fail_fast, on_start, on_report)
    try:
        for device in devices:
            pool.start(device)
        pool.run()
    finally:
        pool.stop()
    return [pool.reports[job] for job in jobs if job in pool.reports], pool.described(devices)


class _Worker:
    """The parent's side of one worker: its process, its end of the pipe, the job it holds."""

    def __init__(self, process: multiprocessing.Process, connection: Connection, device: torch.device) -> None:
        self.process = process
        self.connection = connection
        self.device = device
        self.job: Job | None = None
        self.advance: Callable[[int], None] | None = None
        self.loaded = False

    def messages(self) -> Iterator[tuple[str, object]]:
        """What the worker has sent so far (nothing more once it is gone)."""
        with suppress(EOFError, OSError):
            while self.connection.poll():
                yield self.connection.recv()

    def hand(self, job: Job | None) -> None:
        """Give the worker its next job; None tells it to exit."""
        self.job = job
        with suppress(OSError):  # it died: its sentinel says so next
            self.connection.send(job)

    def how(self) -> str:
        """How the worker's process ended: "signal 9, SIGKILL" or "exit status 1"."""
        self.process.join()
        code = self.process.exitcode
        if code is None or code >= 0:
            return f"exit status {code}"
        name = signal.Signals(-code).name if -code in signal.valid_signals() else "unknown"
        return f"signal {-code}, {name}"


class _Pool:
    """The workers, the queue of jobs they share, and the reports they have sent."""

    def __init__(self, jobs: list[Job], starter: _Starter, fail_fast: bool, on_start, on_report) -> None:
        self.pending = deque(largest_first(jobs))
        self.starter = starter
        self.fail_fast = fail_fast
        self.on_start = on_start
        self.on_report = on_report
        self.workers: list[_Worker] = []
        self.reports: dict[Job, FileReport] = {}
        self.descriptions: list[str] = []

    def start(self, device: torch.device) -> None:
        self.workers.append(self.starter(device))

    def run(self) -> None:
        """Hand out jobs and hear workers until every worker has exited."""
        while self.workers:
            ready = set(wait([w.connection for w in self.workers] + [w.process.sentinel for w in self.workers]))
            for worker in [w for w in self.workers if {w.connection, w.process.sentinel} & ready]:
                for kind, value in worker.messages():
                    self.hear(worker, kind, value)
                if not worker.process.is_alive():
                    self.gone(worker)

    def hear(self, worker: _Worker, kind: str, value) -> None:
        if kind == "error":  # it cannot load the model, and the others would fail the same way
            raise value
        if kind == "start":
            worker.advance = self.on_start(worker.job, value) if self.on_start else None
        elif kind == "frames" and worker.advance:
            worker.advance(value)
        elif kind == "report":
            self.report(worker, value)
        elif kind == "ready":
            worker.loaded = True
            self.descriptions.append(value)
        if kind in ("ready", "report"):
            worker.hand(self.pending.popleft() if self.pending else None)

    def report(self, worker: _Worker, report: FileReport) -> None:
        self.reports[worker.job] = report
        worker.job = worker.advance = None
        if self.on_report:
            self.on_report(report)
        if report.status == "failed" and self.fail_fast:
            self.pending.clear()

    def gone(self, worker: _Worker) -> None:
        """A worker's process has ended: after its last job, or dead while it held one or loaded the model."""
        self.workers.remove(worker)
        if worker.job is not None:
            remove_dead_partials(worker.job.output, look_again=True)
            error = f"worker on {worker.device} died ({worker.how()}) while decoding {worker.job.codes}"
            self.report(worker, FileReport(worker.job.codes, Path(worker.job.output), "failed", error=error))
            if self.pending:
                self.start(worker.device)
        elif not worker.loaded and self.pending and not self.workers:
            raise RunError(f"worker on {worker.device} died ({worker.how()}) while loading the model")

    def stop(self) -> None:
        """Stop every worker still running and wait for it: SIGTERM (its writer removes the partial
        output), then, for one that does not end in STOP_SECONDS, SIGKILL, and its partial output
        removed here."""
        for worker in self.workers:
            if worker.process.is_alive():
                worker.process.terminate()
        for worker in self.workers:
            worker.process.join(STOP_SECONDS)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            if worker.job is not None:
                remove_dead_partials(worker.job.output, look_again=True)
            worker.connection.close()
        self.workers.clear()

    def described(self, devices: list[torch.device]) -> str:
        return f"{len(devices)} workers: {'; '.join(dict.fromkeys(self.descriptions))}"


class _Starter:
    """Starts a worker on a device, with SIGINT ignored from its first instruction on."""

    def __init__(self, weights: str, dtype: str, threads: int | None, options: BatchOptions) -> None:
        self.context = multiprocessing.get_context("spawn")  # CUDA cannot be forked into a worker
        self.settings = (weights, dtype, threads, options)

    def __call__(self, device: torch.device) -> _Worker:
        parent, child = self.context.Pipe()
        weights, dtype, threads, options = self.settings
        process = self.context.Process(
            target=_work, args=(child, str(device), weights, dtype, threads if device.type == "cpu" else None, options),
            name=f"movq-{device}", daemon=True,
        )  # fmt: skip
        with _sigint_ignored():
            process.start()
        child.close()
        return _Worker(process, parent, device)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while a worker starts, which it inherits; one that arrives meanwhile is held
    back (blocked) and handled here once the handler is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _work(
    connection: Connection, device: str, weights: str, dtype: str, threads: int | None, options: BatchOptions
) -> None:
    """A worker: load the model once, then decode each job the parent sends until it sends None."""
    for signum in (signal.SIGTERM, signal.SIGALRM):  # SIGTERM: the parent stops it; SIGALRM: see interrupt
        signal.signal(signum, interrupt)
    try:
        from movq_cli.device import describe

        try:
            model = load_worker_model(weights, device, dtype, threads)
        except MovqError as error:
            connection.send(("error", error))
            return
        connection.send(("ready", describe(model)))

        def on_start(job: Job, frames: int) -> Callable[[int], None]:
            connection.send(("start", frames))
            return lambda written: connection.send(("frames", written))

        with listing_once():
            while (job := connection.recv()) is not None:
                connection.send(("report", decode_reported(model, job, options, on_start)))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass  # stopped, or the parent is gone; the writer has removed its partial output
    finally:
        # nothing is left to clean up: a SIGTERM from now on ends the worker quietly rather than
        # raising KeyboardInterrupt in the middle of its exit, with a traceback
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
