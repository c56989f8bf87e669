"""Job arrays, resumption, refusals and a worker killed part-way (real engine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import finalize, score
from pipeline.job import (
    IncompleteDatasetError,
    JobMismatchError,
    Layout,
    WorkerBusyError,
    WorkerLock,
)
from toy.factory import build_model
from toy.pairs import make_pairs, write_jsonl

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[1]


def shard_bytes(out: Path, split: str = "train") -> dict[int, bytes]:
    """Shard contents by global shard index (the last part of the file name)."""
    return {int(p.stem.rsplit("-", 1)[1]): p.read_bytes() for p in (out / split).glob("*.parquet")}


def manifest_split(out: Path, split: str = "train") -> dict:
    """A split's manifest entry without what legitimately differs between runs."""
    entry = json.loads((out / "manifest.json").read_text())["splits"][split]
    for key in ("workers", "scoring_time_s", "shards", "options"):
        entry.pop(key)
    return entry


@pytest.fixture(scope="module")
def job_input(tmp_path_factory):
    """50 rows with two bad ones, so rejects are merged across workers too."""
    path = tmp_path_factory.mktemp("job-input") / "in.jsonl"
    rows = make_pairs(50, seed=11)
    lines = [json.dumps(r) for r in rows]
    lines[9] = json.dumps({**rows[9], "chosen": None})
    lines[33] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory, job_input, tiny_model_dir, vllm_scorer):
    out = tmp_path_factory.mktemp("one-worker") / "ds"
    score(
        job_input,
        model=tiny_model_dir,
        out=out,
        rows_per_shard=7,
        on_bad_row="skip",
        scorer=vllm_scorer,
        progress=False,
    )
    return out


def test_a_job_array_of_three_workers_equals_one_worker(
    tmp_path, job_input, tiny_model_dir, vllm_scorer, one_worker
):
    out = tmp_path / "ds"
    common = dict(model=tiny_model_dir, out=out, rows_per_shard=7, on_bad_row="skip")
    for worker in (0, 2):
        result = score(job_input, num_workers=3, worker_index=worker, scorer=vllm_scorer, **common)
        assert result.manifest is None
        assert result.shards_written == len(range(worker, 8, 3))
    with pytest.raises(IncompleteDatasetError, match="worker 1 of 3 has not finished"):
        finalize(out)
    assert not (out / "manifest.json").exists()

    score(job_input, num_workers=3, worker_index=1, scorer=vllm_scorer, **common)
    finalize(out)

    names = sorted(p.name for p in (out / "train").glob("*.parquet"))
    assert names == sorted(f"part-{k % 3:05d}-{k:06d}.parquet" for k in range(8))
    assert shard_bytes(out) == shard_bytes(one_worker)
    assert manifest_split(out) == manifest_split(one_worker)
    assert manifest_split(out)["rejected"] == {"malformed_json": 1, "null_field": 1}
    rejects = (out / "train" / "rejects.jsonl").read_text()
    assert rejects == (one_worker / "train" / "rejects.jsonl").read_text()


def test_a_rerun_skips_verified_shards_and_redoes_damaged_ones(
    tmp_path, job_input, tiny_model_dir, vllm_scorer, one_worker
):
    out = tmp_path / "ds"
    subprocess.run(["cp", "-r", str(one_worker), str(out)], check=True)
    before = shard_bytes(out)
    common = dict(model=tiny_model_dir, out=out, rows_per_shard=7, on_bad_row="skip")

    result = score(job_input, scorer=vllm_scorer, **common)
    assert (result.shards_written, result.shards_skipped, result.pairs_scored) == (0, 8, 0)

    layout = Layout(out, "train")
    truncated = layout.shard_path(0, 2)
    truncated.write_bytes(truncated.read_bytes()[:100])
    layout.record_path(0, 5).unlink()
    stale = layout.split_dir / ".part-00000-000006.parquet.999.tmp"
    stale.write_bytes(b"partial")
    result = score(job_input, scorer=vllm_scorer, **common)
    assert (result.shards_written, result.shards_skipped) == (2, 6)
    assert shard_bytes(out) == before
    assert not stale.exists()


def test_another_job_in_the_same_folder_is_refused(tmp_path, job_input, tiny_model_dir, one_worker):
    out = tmp_path / "ds"
    subprocess.run(["cp", "-r", str(one_worker), str(out)], check=True)
    common = dict(out=out, on_bad_row="skip", progress=False)

    with pytest.raises(JobMismatchError, match="rows_per_shard: 7 there, 8 now"):
        score(job_input, model=tiny_model_dir, rows_per_shard=8, **common)

    changed = tmp_path / "in.jsonl"
    changed.write_text(job_input.read_text() + json.dumps(make_pairs(1, seed=99)[0]) + "\n")
    with pytest.raises(JobMismatchError, match="inputs:"):
        score(changed, model=tiny_model_dir, rows_per_shard=7, **common)

    other_model = build_model(tmp_path / "other", size="tiny", seed=1)
    with pytest.raises(JobMismatchError, match="reference_fingerprint"):
        score(job_input, model=other_model, rows_per_shard=7, **common)
    # Another split in the same folder must come from the same model, too.
    with pytest.raises(JobMismatchError, match="holds split 'train' scored differently"):
        score(job_input, model=other_model, split="eval", **common)


def test_two_processes_cannot_run_the_same_worker(tmp_path, job_input, tiny_model_dir):
    out = tmp_path / "ds"
    with (
        WorkerLock(Layout(out, "train"), 0),
        pytest.raises(WorkerBusyError, match="worker 0 of split 'train' is already running"),
    ):
        score(job_input, model=tiny_model_dir, out=out, on_bad_row="skip")


def test_a_killed_worker_rerun_gives_the_identical_dataset(tmp_path, tiny_model_dir, vllm_scorer):
    """The CLI in a child process, killed (with its engine) once its first shard is written."""
    path = write_jsonl(make_pairs(600, seed=5), tmp_path / "in.jsonl")
    options = ["--rows-per-shard", "40", "--batch-pairs", "8"]
    reference = tmp_path / "reference"
    score(
        path,
        model=tiny_model_dir,
        out=reference,
        rows_per_shard=40,
        batch_pairs=8,
        scorer=vllm_scorer,
        progress=False,
    )

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "pipeline", "score", str(path), "--model", str(tiny_model_dir)]
    command += ["--out", str(out), *options, "--kv-cache-gib", "0.25", "--no-progress"]
    log = tmp_path / "child.log"
    with open(log, "w") as sink:
        child = subprocess.Popen(
            command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        first = Layout(out, "train").record_path(0, 0)
        deadline = time.monotonic() + 600
        while not first.exists():
            assert child.poll() is None, f"the child exited early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no shard after 600 s"
            time.sleep(0.02)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()

    finished = len(list((out / "train" / ".work").glob("part-*.json")))
    assert 1 <= finished < 15, "the child was not killed part-way"
    assert not list(out.rglob("*.done.json")) and not (out / "manifest.json").exists()

    result = score(
        path,
        model=tiny_model_dir,
        out=out,
        rows_per_shard=40,
        batch_pairs=8,
        scorer=vllm_scorer,
        progress=False,
    )
    assert result.shards_skipped == finished
    assert result.shards_written + result.shards_skipped == 15
    assert shard_bytes(out) == shard_bytes(reference)
    assert manifest_split(out) == manifest_split(reference)
    assert not list(out.rglob("*.tmp"))
