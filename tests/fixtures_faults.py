"""Helpers for the fault tests: child processes killed with SIGKILL at a named point.

A child runs in a session of its own, with `SLPO_FAULT_POINT` set (see `schemas.faults`), so it
kills itself at a known point. vLLM's engine processes outlive a parent killed that way (vLLM
0.32 does not watch its parent), so once the child is gone, whatever is left of its process
group is killed too, as a scheduler that preempts a job does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.faults import ENV
from tests.fixtures_training import LAUNCH_TIMEOUT, REPO, launch_env


@contextmanager
def child_process(
    command: Sequence[str], *, log: Path, fault: str | None = None
) -> Iterator[subprocess.Popen]:
    """Start `command` (its own session, output to `log`), yield it, wait for it to end, then
    kill what remains of its process group."""
    env = launch_env()
    env.pop(ENV, None)
    if fault:
        env[ENV] = fault
    with open(log, "w") as sink:
        child = subprocess.Popen(
            [str(c) for c in command],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield child
            child.wait(timeout=LAUNCH_TIMEOUT)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            with suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)


def run_killed(command: Sequence[str], *, log: Path, fault: str) -> int:
    """Run `command` until it dies at `fault`; return its exit code."""
    # Leaving the context waits for the child, which the fault point kills.
    with child_process(command, log=log, fault=fault) as child:
        child.wait(timeout=LAUNCH_TIMEOUT)
    return child.returncode


def shards(out: Path, split: str = "train") -> list[Path]:
    """A split's shards in input order (by global shard index, whichever worker wrote them)."""
    return sorted((out / split).glob("part-*.parquet"), key=lambda p: int(p.stem.split("-")[2]))


def shard_bytes(out: Path, split: str = "train") -> list[bytes]:
    """The bytes of every shard of a split, in input order."""
    return [p.read_bytes() for p in shards(out, split)]


def split_table(out: Path, split: str = "train") -> pa.Table:
    """Every row of a split, in input order."""
    return pa.concat_tables(pq.read_table(p) for p in shards(out, split))


def manifest_entry(out: Path, split: str = "train") -> dict:
    """A split's manifest entry without what may differ between equal datasets: timings,
    worker commands, the worker count (and so shard file names), and where the folder is
    (source paths are resolved)."""
    entry = json.loads((out / "manifest.json").read_text())["splits"][split]
    for key in ("workers", "scoring_time_s", "options"):
        entry.pop(key)
    for shard in entry["shards"]:
        shard.pop("path")
    entry["source_files"] = [str((out / p).resolve()) for p in entry["source_files"]]
    return entry
