"""`python -m pipeline` in child processes (none of these starts an engine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import inspect, score
from toy.pairs import make_pairs, write_jsonl

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_importing_pipeline_stays_light():
    code = (
        "import sys, pipeline; "
        "print(sorted(m for m in ('vllm', 'torch', 'transformers', 'train') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.vllm
def test_inspect_reports_provenance_counts_validation_and_percentiles(scored_dataset):
    done = cli("inspect", scored_dataset, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["finalized"] and report["provenance"]["dtype"] == "float32"
    train = report["splits"]["train"]
    assert (train["rows"], train["shards"], train["validation"]) == (48, 3, "ok")
    margin = train["stats"]["columns"]["margin"]
    assert margin["p0"] <= margin["p50"] <= margin["p100"]
    assert train["stats"]["columns"]["prompt_tokens"]["p0"] >= 1

    text = cli("inspect", scored_dataset)
    assert text.returncode == 0
    assert "split eval: 16 pairs in 1 shards" in text.stdout
    assert "validation: ok" in text.stdout and "| margin |" in text.stdout


@pytest.mark.vllm
def test_inspect_flags_a_damaged_shard(tmp_path, scored_dataset):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(scored_dataset), str(copy)], check=True)
    shard = sorted((copy / "eval").glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:-200])
    report = inspect(copy / "eval")
    assert "not a readable Parquet file" in report["splits"]["eval"]["validation"]
    done = cli("inspect", copy, "--json")
    assert done.returncode == 1


@pytest.mark.vllm
def test_finalize_refuses_until_every_worker_is_done(tmp_path, tiny_model_dir, vllm_scorer):
    path = write_jsonl(make_pairs(6), tmp_path / "in.jsonl")
    out = tmp_path / "ds"
    score(path, model=tiny_model_dir, out=out, rows_per_shard=2, num_workers=2, scorer=vllm_scorer)
    done = cli("finalize", out)
    assert done.returncode == 1
    assert "split 'train': worker 1 of 2 has not finished (0 of its shards written)" in done.stderr
    assert "--worker-index" in done.stderr
    assert not (out / "manifest.json").exists()


def test_score_reports_input_and_option_errors(tmp_path):
    missing = cli("score", tmp_path / "nope.jsonl", "--model", tmp_path, "--out", tmp_path / "o")
    assert missing.returncode == 1
    assert "nope.jsonl: no such file or folder. Check the path." in missing.stderr

    wrong = cli("score", "x.jsonl", "--model", "m", "--out", "o", "--overlong", "truncate")
    assert wrong.returncode == 2 and "invalid choice: 'truncate'" in wrong.stderr

    path = write_jsonl(make_pairs(2), tmp_path / "in.jsonl")
    array = cli("score", path, "--model", "m", "--out", "o", "--num-workers", "2")
    assert array.returncode != 0 and "needs --worker-index" in array.stderr
