"""Several devices on one machine: `--device cpu,cpu` runs one worker process per device and
writes what one process writes; a dead worker fails only its file; Ctrl-C stops them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, movq
from same_outputs import assert_same_outputs, code_tree, relative_rows, rows

from movq_cli import workers
from movq_cli.batch import Job, largest_first
from movq_cli.device import resolve_devices
from movq_cli.errors import InputError


@pytest.fixture(scope="module")
def codes(tmp_path_factory):
    return code_tree(tmp_path_factory.mktemp("tree") / "codes")


@pytest.mark.parametrize("format", ["mp4", "png-dir"])
def test_two_cpu_workers_write_what_one_process_writes(format, codes, small_folder, tmp_path):
    args = ("decode", codes, "-w", small_folder[0], "--format", format, "--json")
    one = movq(*args[:2], tmp_path / "one", *args[2:])
    two = movq(*args[:2], tmp_path / "two", *args[2:], "--device", "cpu,cpu")
    assert one.exit_code == two.exit_code == 1, two.output  # sub/bad.npy fails in both
    assert relative_rows(two, tmp_path / "two") == relative_rows(one, tmp_path / "one")
    assert_same_outputs(tmp_path / "one", tmp_path / "two")
    assert "5 done" in two.stderr and "1 failed (2 workers: cpu, fp32" in two.stderr
    assert "code 64 at frame 0" in two.stderr


def test_fail_fast_hands_out_no_file_after_the_first_failure(codes, small_folder, tmp_path):
    result = movq(
        "decode", codes, tmp_path / "out", "-w", small_folder[0], "--json", "--device", "cpu,cpu", "--fail-fast"
    )
    assert result.exit_code == 1, result.output
    decoded = {Path(row["input"]).name: row["status"] for row in rows(result)}
    assert decoded["bad.npy"] == "failed"
    assert "b.npy" not in decoded  # the smallest file, last in the queue: never handed out
    assert not list((tmp_path / "out").rglob(".*.partial"))


def test_one_device_decodes_in_this_process(codes, small_folder, tmp_path, monkeypatch):
    def no_workers(*args, **kwargs):
        raise AssertionError("a single device needs no worker processes")

    monkeypatch.setattr(workers, "decode_on_workers", no_workers)
    result = movq("decode", codes / "sub", tmp_path / "out", "-w", small_folder[0], "--device", "cpu", "-q")
    assert result.exit_code == 1 and (tmp_path / "out" / "c.mp4").is_file()


def test_a_worker_that_cannot_load_the_model_is_one_line(codes, tmp_path):
    result = movq("decode", codes, tmp_path / "out", "-w", tmp_path / "missing.safetensors", "--device", "cpu,cpu")
    assert_one_line_error(result, 2, "missing.safetensors")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "devices, needle",
    [("cpu,,cpu", "empty item"), ("cpu,gpu", "unknown --device 'gpu'"), ("cuda:all", "cuda")],
)
def test_bad_device_lists_are_exit_2(devices, needle, codes, small_folder, tmp_path):
    if devices == "cuda:all" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA devices")
    result = movq("decode", codes, tmp_path / "out", "-w", small_folder[0], "--device", devices)
    assert_one_line_error(result, 2, needle)


def test_device_lists_name_one_worker_per_item():
    assert resolve_devices("cpu, CPU") == [torch.device("cpu")] * 2
    with pytest.raises(InputError, match="empty item"):
        resolve_devices("cpu,")


def test_cpu_workers_share_the_cores_unless_threads_are_given():
    cores = len(os.sched_getaffinity(0))
    assert workers.cpu_threads([torch.device("cpu")] * 2, None) == max(1, cores // 2)
    assert workers.cpu_threads([torch.device("cpu")] * (cores + 1), None) == 1
    assert workers.cpu_threads([torch.device("cpu")] * 2, 3) == 3


def test_files_are_handed_out_largest_first(tmp_path):
    for name, size in [("small", 10), ("large", 1000), ("middle", 100), ("also-middle", 100)]:
        (tmp_path / name).write_bytes(b"x" * size)
    jobs = [
        Job(tmp_path / name, tmp_path / "out" / name) for name in ("small", "middle", "missing", "also-middle", "large")
    ]
    assert [job.codes.name for job in largest_first(jobs)] == ["large", "middle", "also-middle", "small", "missing"]


# ---- real processes: a worker killed, the batch interrupted --------------------------------------

# The workers and the files they hold are found in /proc.
needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds processes and their files in /proc")


@pytest.fixture
def long_batch(small_folder, tmp_path):
    """A `movq decode` process with two CPU workers on four long clips, once both are writing."""
    (tmp_path / "long").mkdir()
    for number in range(4):
        np.save(tmp_path / "long" / f"clip{number}.npy", np.random.default_rng(number).integers(0, 64, (600, 8, 8)))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "movq_cli", "decode", tmp_path / "long", out, "-w", small_folder[0]]
    process = subprocess.Popen(
        [str(part) for part in command] + ["--device", "cpu,cpu", "--chunk", "1", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out.is_dir() and len(list(out.glob(".*.partial"))) == 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    yield process, out, _workers_of(process.pid)
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the parent and its workers, even a stopped one
        process.communicate()


def _workers_of(pid: int) -> list[int]:
    """The worker processes `pid` started (not multiprocessing's resource tracker)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in command:
            children.append(int(stat.parent.name))
    return children


def _holds_partial(pid: int, out: Path) -> bool:
    """Whether process `pid` has a temporary of `out` open, as a worker does while it writes a file."""
    for descriptor in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(OSError):
            opened = Path(os.readlink(descriptor))
            if opened.parent == out.resolve() and opened.name.endswith(".partial"):
                return True
    return False


@needs_proc
@pytest.mark.slow
def test_a_killed_worker_fails_its_file_and_the_rest_go_on(long_batch):
    process, out, (victim, _) = long_batch
    deadline = time.monotonic() + 120
    os.kill(victim, signal.SIGSTOP)  # stopped, it cannot finish the file it holds
    while not _holds_partial(victim, out):  # between two files: let it start the next
        assert process.poll() is None and time.monotonic() < deadline, "the worker never held a file"
        os.kill(victim, signal.SIGCONT)
        time.sleep(0.01)
        os.kill(victim, signal.SIGSTOP)
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 1, stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    failed = [row for row in rows if row["status"] == "failed"]
    assert len(rows) == 4 and len(failed) == 1, rows
    assert failed[0]["error"] == f"worker on cpu died (signal 9, SIGKILL) while decoding {failed[0]['input']}"
    assert sorted(path.name for path in out.iterdir()) == sorted(
        Path(row["output"]).name for row in rows if row["status"] == "done"
    )  # no partial output of the killed file, nor of any other
    assert "Traceback" not in stderr


@needs_proc
@pytest.mark.slow
@pytest.mark.parametrize("signum, group", [(signal.SIGINT, True), (signal.SIGTERM, False)], ids=["Ctrl-C", "SIGTERM"])
def test_an_interrupted_batch_stops_every_worker_and_leaves_nothing_partial(signum, group, long_batch):
    process, out, pids = long_batch
    if group:
        os.killpg(process.pid, signum)  # as a terminal's Ctrl-C: the parent and its workers
    else:
        os.kill(process.pid, signum)  # as `kill PID`: the parent alone, which stops its workers
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not list(out.glob(".*.partial"))
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)


def test_an_interruption_inside_a_finalizer_is_put_off(monkeypatch):
    """SIGINT or SIGTERM landing in a __del__ (where Python prints an exception and drops it) is
    asked for again a moment later; anywhere else it is a KeyboardInterrupt at once."""
    from movq_cli import errors

    timers = []
    monkeypatch.setattr(signal, "setitimer", lambda which, seconds: timers.append((which, seconds)))

    class Finalized:
        def __del__(self):
            errors.interrupt(signal.SIGTERM, sys._getframe())

    Finalized()  # collected at once: its __del__ runs here
    assert timers == [(signal.ITIMER_REAL, errors.RETRY_SECONDS)]
    with pytest.raises(KeyboardInterrupt):
        errors.interrupt(signal.SIGTERM, sys._getframe())
