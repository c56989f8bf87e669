"""Scoring killed with SIGKILL mid-batch, mid-write and between shards, a job array with a killed
worker, and a damaged shard: nothing is lost, nothing partial passes for finished, and the
re-run gives the uninterrupted dataset byte for byte (real engine, real child processes)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from pipeline import finalize, inspect, score
from pipeline.job import IncompleteDatasetError, Layout, WorkerBusyError
from schemas import CorruptShardError, tokenizer_fingerprint, validate_shard
from tests.fixtures_faults import (
    child_process,
    manifest_entry,
    run_killed,
    shard_bytes,
    split_table,
)
from toy.pairs import make_pairs
from train.data import ProvenanceError, load_split

pytestmark = pytest.mark.vllm

ROWS_PER_SHARD, BATCH_PAIRS = 20, 8
"""120 good rows and 2 bad ones: 7 shards (the last of 2 rows), 3 engine batches per shard."""
KILLED = -signal.SIGKILL


@pytest.fixture(scope="module")
def job_input(tmp_path_factory) -> Path:
    rows = make_pairs(120, seed=21)
    lines = [json.dumps(r) for r in rows]
    lines.insert(14, json.dumps({**rows[0], "id": "bad-1", "chosen": None}))
    lines.insert(70, '{"prompt": "cut short')
    path = tmp_path_factory.mktemp("faults-input") / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, job_input, tiny_model_dir, vllm_scorer) -> Path:
    """The dataset one uninterrupted worker writes."""
    out = tmp_path_factory.mktemp("faults-reference") / "ds"
    score(job_input, **_options(tiny_model_dir, out), scorer=vllm_scorer)
    return out


def _options(model: Path, out: Path) -> dict:
    return dict(
        model=model,
        out=out,
        rows_per_shard=ROWS_PER_SHARD,
        batch_pairs=BATCH_PAIRS,
        on_bad_row="skip",
        progress=False,
    )


def _command(job_input: Path, model: Path, out: Path, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "pipeline", "score", job_input, "--model", model]
    command += ["--out", out, "--rows-per-shard", ROWS_PER_SHARD, "--batch-pairs", BATCH_PAIRS]
    return [*map(str, command), "--on-bad-row", "skip", "--kv-cache-gib", "0.25", *extra]


def _records(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "train" / ".work").glob("part-*.json"))


def _assert_equal_datasets(out: Path, reference: Path) -> None:
    """Every id once, the same values, the same bytes, the same manifest and rejects."""
    table = split_table(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 120
    assert table.equals(split_table(reference))
    assert shard_bytes(out) == shard_bytes(reference)
    assert manifest_entry(out) == manifest_entry(reference)
    rejects = (out / "train" / "rejects.jsonl").read_text()
    assert rejects == (reference / "train" / "rejects.jsonl").read_text()
    assert not list(out.rglob("*.tmp"))


def _assert_nothing_looks_finished(out: Path, worker: int, workers: int, written: int) -> None:
    """No manifest, no done marker for `worker`; every shard under its final name is whole and
    has its record; `finalize` refuses, naming the worker."""
    assert not (out / "manifest.json").exists()
    assert not Layout(out, "train").done_path(worker).exists()
    for shard in (out / "train").glob("part-*.parquet"):
        validate_shard(shard)
        assert (out / "train" / ".work" / f"{shard.stem}.json").is_file()
    expected = f"worker {worker} of {workers} has not finished ({written} of its shards written)"
    with pytest.raises(IncompleteDatasetError, match=rf"{re.escape(expected)}.*--worker-index"):
        finalize(out)


def test_killed_mid_batch_then_mid_write_the_rerun_equals_an_uninterrupted_run(
    tmp_path, job_input, tiny_model_dir, vllm_scorer, uninterrupted
):
    out = tmp_path / "ds"
    command = _command(job_input, tiny_model_dir, out, "--no-progress")

    # Mid-batch: the engine has returned the first batch of shard 1 (shard 0 is finished).
    code = run_killed(command, log=tmp_path / "batch.log", fault="score-batch@4")
    assert code == KILLED, (tmp_path / "batch.log").read_text()[-3000:]
    assert _records(out) == ["part-00000-000000.json"]
    _assert_nothing_looks_finished(out, worker=0, workers=1, written=1)

    # Mid-write: the re-run skips shard 0 and dies while shard 1's temporary file is written.
    code = run_killed(command, log=tmp_path / "write.log", fault="shard-write@1")
    assert code == KILLED, (tmp_path / "write.log").read_text()[-3000:]
    skipped = "part-00000-000000.parquet is finished and verified; skipping it"
    assert skipped in (tmp_path / "write.log").read_text()
    (partial,) = (out / "train").glob(".part-00000-000001.parquet.*.tmp")
    assert 0 < partial.stat().st_size < len(shard_bytes(uninterrupted)[1])
    with pytest.raises(CorruptShardError, match="not a readable Parquet file"):
        validate_shard(partial)
    assert not (out / "train" / "part-00000-000001.parquet").exists()
    _assert_nothing_looks_finished(out, worker=0, workers=1, written=1)
    # Neither inspect nor the trainer takes the unfinished folder for a dataset.
    report = inspect(out)
    assert not report["finalized"] and report["splits"]["train"]["shards"] == 1
    fingerprint = tokenizer_fingerprint(AutoTokenizer.from_pretrained(tiny_model_dir))
    with pytest.raises(ProvenanceError, match="not finalized.*python -m pipeline finalize"):
        load_split(out, "train", tokenizer_fingerprint=fingerprint)

    result = score(job_input, **_options(tiny_model_dir, out), scorer=vllm_scorer)
    assert (result.shards_skipped, result.shards_written) == (1, 6)
    assert not partial.exists()
    _assert_equal_datasets(out, uninterrupted)


def test_a_job_array_with_a_worker_killed_between_shards(
    tmp_path, job_input, tiny_model_dir, vllm_scorer, uninterrupted
):
    """Workers 0 and 2 of 3 finish; worker 1 is killed after its first shard (1), before its
    second (4). A second process started as worker 1 meanwhile is refused and changes nothing."""
    out = tmp_path / "ds"
    array = dict(**_options(tiny_model_dir, out), num_workers=3, scorer=vllm_scorer)
    command = _command(job_input, tiny_model_dir, out, "--num-workers", "3", "--worker-index", "1")
    lock = Layout(out, "train").lock_path(1)
    log = tmp_path / "worker1.log"

    with child_process(command, log=log, fault="shard-done@1") as child:
        deadline = time.monotonic() + 300
        while not (lock.is_file() and lock.read_text() == str(child.pid)):
            assert child.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "worker 1 did not take its lock"
            time.sleep(0.05)
        with pytest.raises(WorkerBusyError, match=rf"worker 1 of split 'train'.*pid {child.pid}"):
            score(job_input, worker_index=1, **array)
        # The other workers run while worker 1 starts its engine.
        for worker, shards in ((0, 3), (2, 2)):
            assert score(job_input, worker_index=worker, **array).shards_written == shards
    assert child.returncode == KILLED, log.read_text()[-3000:]

    assert _records(out) == sorted(f"part-{k % 3:05d}-{k:06d}.json" for k in range(7) if k != 4)
    _assert_nothing_looks_finished(out, worker=1, workers=3, written=1)

    result = score(job_input, worker_index=1, **array)
    assert (result.shards_skipped, result.shards_written) == (1, 1)
    finalize(out)
    _assert_equal_datasets(out, uninterrupted)


def test_a_damaged_shard_is_refused_everywhere_and_redone(
    tmp_path, job_input, tiny_model_dir, vllm_scorer, uninterrupted
):
    out = tmp_path / "ds"
    shutil.copytree(uninterrupted, out)
    shard = out / "train" / "part-00000-000003.parquet"
    shard.write_bytes(shard.read_bytes()[:-300])

    with pytest.raises(
        IncompleteDatasetError,
        match=re.escape(f"{shard} is missing or was changed after worker 0 wrote it; re-run"),
    ):
        finalize(out)
    validation = inspect(out)["splits"]["train"]["validation"]
    assert str(shard) in validation and "not a readable Parquet file" in validation
    fingerprint = tokenizer_fingerprint(AutoTokenizer.from_pretrained(tiny_model_dir))
    with pytest.raises(
        CorruptShardError, match=rf"{re.escape(str(shard))}: not a readable.*re-run"
    ):
        load_split(out, "train", tokenizer_fingerprint=fingerprint)

    result = score(job_input, **_options(tiny_model_dir, out), scorer=vllm_scorer)
    assert (result.shards_skipped, result.shards_written) == (6, 1)
    _assert_equal_datasets(out, uninterrupted)
