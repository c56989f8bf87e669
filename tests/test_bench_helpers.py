"""The benchmarks' helpers: synthetic shards honour the contract, steady-state timing, tables.

No timing is asserted here; the benchmarks measure, the tests check what they compute from it.
"""

from __future__ import annotations

import math

import pytest

from bench.common import markdown_table, ratio, verdict
from bench.reader import TOKENIZER_FINGERPRINT, synthetic_table
from bench.training import steady_seconds_per_step
from bench.workload import bench_pair
from schemas import validate_shard, write_shard


def test_synthetic_shard_passes_the_validator(tmp_path):
    table = synthetic_table(300, seed=3)
    path = tmp_path / "train" / "part-00000.parquet"
    write_shard(table, path)
    report = validate_shard(path)
    assert report.num_rows == 300
    assert report.metadata.tokenizer_fingerprint == TOKENIZER_FINGERPRINT
    rows = table.slice(0, 50).to_pylist()
    for row in rows:
        assert 32 <= len(row["prompt_ids"]) <= 128
        assert row["prompt_ids"][0] == 0  # BOS
        for name in ("chosen", "rejected"):
            ids, logps = row[f"{name}_ids"], row[f"ref_{name}_logps"]
            assert 16 <= len(ids) <= 128 and ids[-1] == 1  # EOS last
            assert len(logps) == len(ids) and max(logps) <= 0
            assert math.isclose(row[f"ref_{name}_logp"], sum(logps), abs_tol=1e-3)


def test_synthetic_shards_differ_by_seed():
    a, b = synthetic_table(20, seed=0), synthetic_table(20, seed=1)
    assert a.column("prompt_ids").to_pylist() != b.column("prompt_ids").to_pylist()
    assert a.column("id").to_pylist() != b.column("id").to_pylist()


def test_steady_state_skips_the_warm_up_steps():
    # Step ends: step 1 at 10 s (start-up), then steps of 1, 2, 2, 2 seconds.
    ends = [10.0, 11.0, 13.0, 15.0, 17.0]
    assert steady_seconds_per_step(ends, skip=1) == 2.0  # steps 2..5: 1, 2, 2, 2
    assert steady_seconds_per_step(ends, skip=2) == 2.0  # steps 3..5
    assert steady_seconds_per_step(ends[:2], skip=1) == 1.0
    assert steady_seconds_per_step(ends[:1], skip=1) is None


def test_bench_pair_joins_toy_pairs():
    pair = bench_pair(2, join=3)
    assert pair["id"] == "bench-0-3-0000002"
    assert pair["chosen"] != pair["rejected"]
    assert pair["prompt"].count("?") + pair["prompt"].count(".") >= 3
    assert bench_pair(2, join=3) == pair  # deterministic


@pytest.mark.parametrize(
    ("value", "target", "at_least", "word"),
    [(3.2, 3.0, True, "met"), (2.9, 3.0, True, "MISSED"), (0.7, 0.75, False, "met")],
)
def test_verdict(value, target, at_least, word):
    assert verdict(value, target, at_least=at_least).startswith(word)


def test_ratio_and_table():
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None and ratio(1.0, 0.0) is None
    table = markdown_table(["a", "b"], [[1234, 0.12345], [None, float("nan")]])
    assert table.splitlines() == [
        "| a | b |",
        "| --- | --- |",
        "| 1,234 | 0.123 |",
        "| n/a | n/a |",
    ]
