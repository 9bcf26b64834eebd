"""`--ray`: the batch on a Ray cluster (here a local one, two CPUs) writes what one process writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, movq
from same_outputs import assert_same_outputs, code_tree, relative_rows


@pytest.fixture(scope="module")
def codes(tmp_path_factory):
    return code_tree(tmp_path_factory.mktemp("tree") / "codes")


@pytest.fixture(scope="module")
def cluster():
    """One Ray session for the module: starting one takes seconds."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("format", ["mp4", "png-dir"])
def test_ray_actors_write_what_one_process_writes(format, cluster, codes, small_folder, tmp_path):
    args = ("decode", codes, "-w", small_folder[0], "--format", format, "--json")
    one = movq(*args[:2], tmp_path / "one", *args[2:])
    two = movq(*args[:2], tmp_path / "ray", *args[2:], "--ray", "--workers", "2")
    assert one.exit_code == two.exit_code == 1, two.output  # sub/bad.npy fails in both
    assert relative_rows(two, tmp_path / "ray") == relative_rows(one, tmp_path / "one")
    assert_same_outputs(tmp_path / "one", tmp_path / "ray")
    assert "5 done" in two.stderr and "(Ray, 2 actor(s): cpu, fp32, 1 thread(s))" in two.stderr


@pytest.mark.slow
def test_weights_the_actors_cannot_load_are_one_line(cluster, codes, tmp_path):
    result = movq("decode", codes, tmp_path / "out", "-w", tmp_path / "missing.safetensors", "--ray")
    assert result.exit_code == 2, result.output
    assert "missing.safetensors" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_without_ray_installed_one_line_says_how_to_get_it(codes, small_folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    result = movq("decode", codes, tmp_path / "out", "-w", small_folder[0], "--ray")
    assert_one_line_error(result, 2, "--ray needs Ray: pip install 'movq[ray]'")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--ray", "--device", "cpu,cpu"], "with --ray, --device takes auto, cpu, cuda"),
        (["--ray", "--device", "cuda:1"], "with --ray, --device takes auto, cpu, cuda"),
        (["--workers", "2"], "--workers is for --ray"),
        (["--ray", "--workers", "0"], "--workers"),
    ],
)
def test_bad_ray_usage_is_exit_2_before_ray_starts(args, needle, codes, small_folder, tmp_path):
    assert_one_line_error(movq("decode", codes, tmp_path / "out", "-w", small_folder[0], *args), 2, needle)


def test_one_file_is_not_sent_to_a_cluster(codes, small_folder, tmp_path):
    result = movq("decode", codes / "a.npy", tmp_path / "a.mp4", "-w", small_folder[0], "--ray")
    assert_one_line_error(result, 2, "--ray is for batches")


# Loaded by every Python process of a local cluster started under PYTHONPATH=its folder: an
# actor that decodes a file named poison*.npy dies, as one run out of host memory would.
POISON = """\
import os

import movq_cli.batch

_reported = movq_cli.batch.decode_reported


def reported(model, job, *args, **kwargs):
    if job.codes.name.startswith("poison"):
        os._exit(1)
    return _reported(model, job, *args, **kwargs)


movq_cli.batch.decode_reported = reported
"""


@pytest.mark.slow
def test_a_file_that_kills_its_actor_fails_after_a_few_tries_and_the_rest_go_on(small_folder, tmp_path):
    pytest.importorskip("ray")

    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(POISON)
    (tmp_path / "codes").mkdir()
    for name in ("a.npy", "poison.npy", "b.npy"):
        np.save(tmp_path / "codes" / name, np.zeros((1, 4, 4), np.int64))
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}  # a cluster of its own
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path / "hook"), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "movq_cli", "decode", tmp_path / "codes", tmp_path / "out",
               "-w", small_folder[0], "--ray", "--json"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    reports = {Path(row["input"]).name: row for row in map(json.loads, done.stdout.splitlines())}
    assert reports["a.npy"]["status"] == reports["b.npy"]["status"] == "done"
    assert reports["poison.npy"]["status"] == "failed" and "died, 3 times" in reports["poison.npy"]["error"]
    assert "Traceback" not in done.stderr and "DeprecationWarning" not in done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.mp4", "b.mp4"]  # nothing partial


def test_a_ray_without_max_task_retries_gets_its_own_retries(codes, small_folder):
    """Ray announces dropping the keyword arguments that carry max_task_retries: then the batch
    still runs, with Ray's own retries (a stand-in Ray here: no cluster needed)."""
    from types import SimpleNamespace

    from movq_cli import cluster
    from movq_cli.batch import BatchOptions, Job

    calls = []

    class Dataset:
        context = SimpleNamespace()

        def map_batches(self, fn, **arguments):
            calls.append(sorted(arguments))
            if "max_task_retries" in arguments:
                raise TypeError("map_batches() got an unexpected keyword argument 'max_task_retries'")
            return "mapped"

    ray = SimpleNamespace(
        cluster_resources=lambda: {"CPU": 2},
        data=SimpleNamespace(from_items=lambda rows, override_num_blocks: Dataset(), ActorPoolStrategy=dict),
    )
    jobs = [Job(codes / "a.npy", codes / "a.mp4")]
    dataset, workers = cluster._dataset(ray, jobs, str(small_folder[0]), "cpu", "fp32", BatchOptions(), None, None)
    assert dataset == "mapped" and workers == 1
    assert "max_task_retries" in calls[0] and "max_task_retries" not in calls[1]
