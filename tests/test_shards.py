"""Job arrays: `--shard K/N` for K = 1..N covers the batch exactly once, whatever order files are
listed in, whichever outputs exist, and whatever files are added later."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import assert_one_line_error, movq
from same_outputs import assert_same_outputs, code_tree, relative_rows, rows

from movq_cli.batch import Job, Shard, find_jobs
from movq_cli.errors import InputError


@pytest.fixture(scope="module")
def codes(tmp_path_factory):
    return code_tree(tmp_path_factory.mktemp("tree") / "codes")


def _jobs(count: int, out: Path) -> list[Job]:
    return [
        Job(Path(f"codes/{number // 10}/{number}.npy"), out / f"{number // 10}/{number}.mp4") for number in range(count)
    ]


def test_the_parts_of_a_job_array_write_what_one_run_writes(codes, small_folder, tmp_path):
    args = ("decode", codes, "-w", small_folder[0], "--json")
    one = movq(*args[:2], tmp_path / "one", *args[2:])
    parts = [movq(*args[:2], tmp_path / "parts", *args[2:], "--shard", f"{k}/2") for k in (1, 2)]
    inputs = [{row["input"] for row in rows(part)} for part in parts]
    assert inputs[0] and inputs[1] and not inputs[0] & inputs[1]  # each file in exactly one part
    together = sorted(
        relative_rows(parts[0], tmp_path / "parts") + relative_rows(parts[1], tmp_path / "parts"), key=str
    )
    assert together == sorted(relative_rows(one, tmp_path / "one"), key=str)
    assert_same_outputs(tmp_path / "one", tmp_path / "parts")
    assert sorted(part.exit_code for part in parts) == [0, 1]  # the part holding sub/bad.npy fails


def test_a_resumed_part_takes_the_same_files(codes, small_folder, tmp_path):
    first = movq("decode", codes, tmp_path / "out", "-w", small_folder[0], "--json", "--shard", "2/3")
    again = movq(
        "decode", codes, tmp_path / "out", "-w", small_folder[0], "--json", "--shard", "2/3", "--skip-existing"
    )
    done = {row["input"] for row in rows(first) if row["status"] == "done"}
    assert {row["input"] for row in rows(again)} == {row["input"] for row in rows(first)}
    assert {row["input"] for row in rows(again) if row["status"] == "skipped"} == done


def test_the_split_ignores_listing_order_and_other_files():
    out = Path("videos")
    jobs = _jobs(200, out)
    shuffled = random.Random(0).sample(jobs, len(jobs))
    for shard in (Shard(1, 3), Shard(3, 3)):
        assert set(shard.select(shuffled, out)) == set(shard.select(jobs, out))
        assert set(shard.select(jobs[:50], out)) == set(shard.select(jobs, out)) & set(jobs[:50])
    parts = [set(Shard(k, 3).select(jobs, out)) for k in (1, 2, 3)]
    assert set().union(*parts) == set(jobs) and sum(map(len, parts)) == len(jobs)


def test_the_split_does_not_depend_on_the_name_of_out():
    """A relative OUT in one task and an absolute one in another must split alike."""
    relative, absolute = Path("videos"), Path("/data/videos")
    assert [job.codes for job in Shard(2, 4).select(_jobs(100, relative), relative)] == [
        job.codes for job in Shard(2, 4).select(_jobs(100, absolute), absolute)
    ]


def test_parts_are_about_the_same_size():
    out = Path("videos")
    sizes = [len(Shard(k, 4).select(_jobs(4000, out), out)) for k in range(1, 5)]
    assert all(abs(size - 1000) < 100 for size in sizes), sizes


def test_plans_from_a_folder_and_from_a_pattern_split_alike(codes, tmp_path):
    out = tmp_path / "out"
    from_folder = Shard(1, 2).select(find_jobs([codes], out, "mp4"), out)
    from_pattern = Shard(1, 2).select(find_jobs([codes / "**" / "*.np?"], out, "mp4"), out)
    assert [job.output for job in from_pattern] == [job.output for job in from_folder]


def test_a_part_with_no_files_succeeds(codes, small_folder, tmp_path):
    out = tmp_path / "out"
    empty = next(
        k for k in range(1, 9) if not Shard(k, 8).select(find_jobs([codes / "a.npy", codes / "b.npy"], out, "mp4"), out)
    )
    result = movq("decode", codes / "a.npy", codes / "b.npy", out, "-w", small_folder[0], "--shard", f"{empty}/8")
    assert result.exit_code == 0, result.output
    assert "0 done" in result.stderr and not out.exists()


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "a/b", "1", "1/2/3", "-1/2"])
def test_bad_shards_are_exit_2(text, codes, small_folder, tmp_path):
    result = movq("decode", codes, tmp_path / "out", "-w", small_folder[0], "--shard", text)
    assert_one_line_error(result, 2, "expected K/N")
    with pytest.raises(InputError):
        Shard.parse(text)


def test_one_file_has_no_parts(codes, small_folder, tmp_path):
    result = movq("decode", codes / "a.npy", tmp_path / "a.mp4", "-w", small_folder[0], "--shard", "1/2")
    assert_one_line_error(result, 2, "--shard is for batches")


def test_the_help_shows_a_slurm_job_array():
    result = movq("decode", "--help")
    assert "--shard" in result.stdout and "SLURM_ARRAY_TASK_ID" in result.stdout
