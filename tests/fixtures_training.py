"""Helpers and fixtures for the trainer's tests: shard rewriting and launching real runs.

Training runs are real: `python -m train` under torchrun or the deepspeed launcher, in
subprocesses, on the tiny model and shards the scoring pipeline wrote (`scored_dataset`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from schemas import ShardMetadata, read_shard_metadata, shard_table, write_shard

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
LAUNCH_TIMEOUT = 420
"""Seconds a launch may take before the test fails (a hung collective ends here)."""


def split_rows(split_dir: Path) -> list[dict[str, Any]]:
    """Every row of a split's shards, in file order, as Python dicts."""
    rows = []
    for path in sorted(Path(split_dir).glob("*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def write_split(
    rows: Sequence[dict[str, Any]],
    split_dir: Path,
    metadata: ShardMetadata,
    sizes: Sequence[int] | None = None,
) -> list[Path]:
    """Write `rows` as shards of `sizes` rows each (one shard by default) with `metadata`."""
    sizes = list(sizes or [len(rows)])
    if sum(sizes) != len(rows):
        raise ValueError(f"shard sizes {sizes} do not add up to {len(rows)} rows")
    paths, start = [], 0
    for index, size in enumerate(sizes):
        part = rows[start : start + size]
        start += size
        table = shard_table(
            [r["id"] for r in part],
            [r["prompt_ids"] for r in part],
            [r["chosen_ids"] for r in part],
            [r["rejected_ids"] for r in part],
            [r["ref_chosen_logps"] for r in part],
            [r["ref_rejected_logps"] for r in part],
            metadata,
        )
        path = Path(split_dir) / f"part-00000-{index:05d}.parquet"
        write_shard(table, path)
        paths.append(path)
    return paths


def derive_dataset(
    source: Path,
    dest: Path,
    *,
    sizes: dict[str, Sequence[int]] | None = None,
    change: Callable[[ShardMetadata], ShardMetadata] | None = None,
    splits: Sequence[str] = ("train", "eval"),
) -> Path:
    """Copy a scored dataset's rows into new shards: other sizes, or changed metadata."""
    for split in splits:
        src = Path(source) / split
        if not src.is_dir():
            continue
        metadata = read_shard_metadata(sorted(src.glob("*.parquet"))[0])
        if change is not None:
            metadata = change(metadata)
        write_split(split_rows(src), Path(dest) / split, metadata, (sizes or {}).get(split))
    return Path(dest)


def with_metadata(**changes: Any) -> Callable[[ShardMetadata], ShardMetadata]:
    return lambda metadata: replace(metadata, **changes)


def launch_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_command(cmd: Sequence[str], *, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a launch in the repository root; on failure, show its output."""
    result = subprocess.run(
        [str(c) for c in cmd],
        cwd=REPO,
        env=kwargs.pop("env", None) or launch_env(),
        capture_output=True,
        text=True,
        timeout=kwargs.pop("timeout", LAUNCH_TIMEOUT),
        **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {result.returncode}\n--- stdout\n"
            f"{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-12000:]}"
        )
    return result


def train_args(data: Path, model: Path, out: Path, *extra: Any) -> list[str]:
    return ["--data", str(data), "--model", str(model), "--out", str(out), *map(str, extra)]


def torchrun(nproc: int, args: Sequence[str], *, port: int, **kwargs):
    """`torchrun --nproc_per_node N -m train ARGS`, through `python -m torch.distributed.run`."""
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    cmd += ["--master_port", str(port), "-m", "train", *args]
    return run_command(cmd, **kwargs)


def read_metrics(out: Path) -> list[dict[str, Any]]:
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def step_rows(out: Path) -> list[dict[str, Any]]:
    """The per-step rows of `metrics.jsonl` (those with a `loss`)."""
    return [row for row in read_metrics(out) if "loss" in row]


def read_summary(out: Path) -> dict[str, Any]:
    return json.loads((Path(out) / "summary.json").read_text())


@pytest.fixture(scope="session")
def uneven_dataset(scored_dataset, tmp_path_factory):
    """The scored training pairs re-cut into shards of very different sizes (eval kept)."""
    n = len(split_rows(Path(scored_dataset) / "train"))
    sizes = [1, n - 1 - 5 - 2, 5, 2] if n > 10 else [1, n - 1]
    return derive_dataset(
        scored_dataset, tmp_path_factory.mktemp("uneven") / "data", sizes={"train": sizes}
    )
