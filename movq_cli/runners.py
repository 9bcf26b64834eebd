"""Where a batch runs: in this process, in one worker process per device, or on a Ray cluster.

Each runner takes the same plan of jobs and options and gives the same reports, so its caller
makes one call whatever the runner: `reports, decoder = runner.run(jobs, options, on_start, on_report)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from movq_cli.batch import BatchOptions, FileReport, Job, decode_batch

OnStart = Callable[[Job, int], Callable[[int], None]]  # (job, frames) -> the file's frame counter
OnReport = Callable[[FileReport], None]


class Runner(Protocol):
    def run(
        self, jobs: list[Job], options: BatchOptions, on_start: OnStart | None = None, on_report: OnReport | None = None
    ) -> tuple[list[FileReport], str]:
        """Decode `jobs` with `options`: their reports in plan order, and what decoded them.
        `on_start` and `on_report` are heard in this process as files start and end."""
        ...


@dataclass(frozen=True)
class InProcess:
    """This process, with a model already loaded."""

    model: torch.nn.Module

    def run(self, jobs, options, on_start=None, on_report=None) -> tuple[list[FileReport], str]:
        from movq_cli.device import describe

        return decode_batch(self.model, jobs, options, on_start, on_report), describe(self.model)


@dataclass(frozen=True)
class Workers:
    """One worker process per device, each loading the model from `weights` (`movq_cli.workers`)."""

    weights: str | Path
    devices: list[torch.device]
    dtype: str
    threads: int | None = None

    def run(self, jobs, options, on_start=None, on_report=None) -> tuple[list[FileReport], str]:
        from movq_cli.workers import decode_on_workers

        return decode_on_workers(
            jobs, self.weights, self.devices, self.dtype, options, self.threads, on_start, on_report
        )


@dataclass(frozen=True)
class OnRay:
    """Ray Data actors on the cluster in RAY_ADDRESS, or on a local one (`movq_cli.cluster`)."""

    weights: str | Path
    device: str
    dtype: str
    workers: int | None = None
    threads: int | None = None

    def run(self, jobs, options, on_start=None, on_report=None) -> tuple[list[FileReport], str]:
        from movq_cli.cluster import decode_on_ray

        return decode_on_ray(
            jobs, self.weights, self.device, self.dtype, options, self.workers, self.threads, on_start, on_report
        )
