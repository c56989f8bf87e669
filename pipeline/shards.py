"""One worker of a scoring job: its shards, written atomically, skipped when already done.

Shard `k` of a split holds global input rows `[k * R, (k + 1) * R)` (`R` = rows per shard) and
belongs to worker `k % N`; its file is `part-<k % N>-<k>.parquet`. So a shard's rows, and its
bytes, are the same whatever the number of workers, and a job array of `N` workers writes the
dataset one worker would.

A shard is finished when its record (`.work/part-*.json`) exists, names this job, and the
shard's sha256 and the schemas validator agree with it. A re-run of a worker skips finished
shards (without starting the engine if all are) and redoes the rest; the record is written last,
so a shard interrupted anywhere is redone.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from pipeline.encode import FATAL_REASONS, EncodedPair, PairEncoder
from pipeline.inputs import BadRow, BadRowError, Row, RowStream, SourceRow, parse
from pipeline.job import Layout, ScoreOptions, WorkerLock, job_hash
from schemas import (
    ShardMetadata,
    ShardValidationError,
    file_sha256,
    shard_table,
    validate_shard,
    write_shard,
    write_text_atomic,
)
from schemas.faults import fault_point

logger = logging.getLogger(__name__)


@dataclass
class WorkerRun:
    """What one worker needs besides its options."""

    options: ScoreOptions
    files: list
    layout: Layout
    job: dict
    encoder: PairEncoder
    metadata: Callable[[list[str], tuple[int, int]], ShardMetadata]
    """Shard metadata from its source files and row range (may start the scorer)."""
    scorer: Callable[[], Any]
    """Returns the started scorer (starting it on first call)."""


@dataclass
class WorkerSummary:
    """What a worker did in this run."""

    shards_written: int = 0
    shards_skipped: int = 0
    pairs: int = 0
    scored_tokens: int = 0
    scoring_seconds: float = 0.0
    """Time inside the engine (without its start-up)."""
    seconds: float = 0.0
    records: list[dict] = field(default_factory=list)


def run_worker(run: WorkerRun) -> WorkerSummary:
    """Write this worker's unfinished shards, then its done marker."""
    opts = run.options
    worker = _Worker(run)
    with WorkerLock(run.layout, opts.worker_index):
        worker.run()
    summary = worker.summary
    logger.info(
        "worker %d/%d of %r done: %d shards written, %d already finished, %d pairs in %.1f s",
        opts.worker_index,
        opts.num_workers,
        opts.split,
        summary.shards_written,
        summary.shards_skipped,
        summary.pairs,
        summary.seconds,
    )
    return summary


class _Worker:
    """The shards of one worker: which are finished, and writing the others (lock held)."""

    def __init__(self, run: WorkerRun):
        self.run_spec, self.layout = run, run.layout
        self.rows_per_shard = run.options.rows_per_shard
        self.worker, self.workers = run.options.worker_index, run.options.num_workers
        self.key = job_hash(run.job)
        self.summary = WorkerSummary()
        self.finished: dict[int, dict | None] = {}
        """Record of each of this worker's shards looked at so far (None: to be written)."""
        self.started = time.monotonic()

    def needs_work(self, shard: int) -> bool:
        if shard % self.workers != self.worker:
            return False
        if shard not in self.finished:
            self.finished[shard] = _verified_record(self.layout, self.worker, shard, self.key)
        return self.finished[shard] is None

    def skip(self, start: int, stop: int) -> bool:
        """True when no shard overlapping global rows `[start, stop)` needs writing."""
        first, last = start // self.rows_per_shard, (stop - 1) // self.rows_per_shard
        return not any(self.needs_work(k) for k in range(first, last + 1))

    def run(self) -> None:
        self.layout.remove_stale_temporaries(self.worker)
        self.layout.done_path(self.worker).unlink(missing_ok=True)
        stream = RowStream(self.run_spec.files, self.skip)
        # A Parquet row group can also hold rows of finished shards: leave those out.
        todo = (row for row in stream if self.needs_work(row.index // self.rows_per_shard))
        bar = tqdm(
            desc=f"scoring {self.layout.split} (worker {self.worker}/{self.workers})",
            unit="pair",
            disable=None if self.run_spec.options.progress else True,
            dynamic_ncols=True,
        )
        with bar:
            by_shard = itertools.groupby(todo, key=lambda r: r.index // self.rows_per_shard)
            for shard, rows in by_shard:
                writer = _ShardWriter(self.run_spec, shard, self.key, bar, self.summary)
                self.finished[shard] = writer.write(list(rows))
                self.summary.shards_written += 1
        self._write_done(stream.total_rows)

    def _write_done(self, total_rows: int) -> None:
        num_shards = -(-total_rows // self.rows_per_shard)
        mine = range(self.worker, num_shards, self.workers)
        records = [self.finished.get(k) for k in mine]
        if any(r is None for r in records):
            raise RuntimeError(f"worker {self.worker}: shards {list(mine)} were not all written")
        summary = self.summary
        summary.shards_skipped = len(records) - summary.shards_written
        summary.records = records
        summary.seconds = time.monotonic() - self.started
        done = {
            "job": self.key,
            "worker": self.worker,
            "num_workers": self.workers,
            "total_rows": total_rows,
            "num_shards": num_shards,
            "shards": records,
            "wall_time_s": round(summary.seconds, 3),
            "command": list(self.run_spec.options.command),
        }
        write_text_atomic(self.layout.done_path(self.worker), json.dumps(done, indent=2) + "\n")


def _verified_record(layout: Layout, worker: int, shard: int, key: str) -> dict | None:
    """The shard's record if the shard is finished and intact, else None."""
    try:
        record = json.loads(layout.record_path(worker, shard).read_text())
    except (OSError, ValueError):
        return None
    path = layout.shard_path(worker, shard)
    problem = None
    if record.get("job") != key:
        problem = "was written by another job"
    elif not path.is_file() or file_sha256(path) != record["sha256"]:
        problem = "is missing or differs from its record"
    elif record["rejects"] and (
        not layout.rejects_part_path(worker, shard).is_file()
        or file_sha256(layout.rejects_part_path(worker, shard)) != record["rejects"]["sha256"]
    ):
        problem = "has lost its rejects file"
    else:
        try:
            validate_shard(path)
        except ShardValidationError as e:
            problem = f"does not validate ({e})"
    if problem:
        logger.warning("%s %s; scoring it again", path, problem)
        return None
    logger.info("%s is finished and verified; skipping it", path)
    return record


class _ShardWriter:
    """Parse, encode, score and write one shard."""

    def __init__(self, run: WorkerRun, shard: int, key: str, bar: tqdm, summary: WorkerSummary):
        self.run, self.shard, self.key, self.bar, self.summary = run, shard, key, bar, summary
        self.worker = run.options.worker_index
        self.rejects: list[dict] = []
        self.rejected: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    def write(self, rows: list[SourceRow]) -> dict:
        started = time.monotonic()
        layout = self.run.layout
        layout.record_path(self.worker, self.shard).unlink(missing_ok=True)
        pairs = self._encode(rows)
        logps = self._score(pairs)

        row_range = (rows[0].index, rows[-1].index + 1)
        sources = list(dict.fromkeys(r.path for r in rows))
        table = shard_table(
            [p.id for p in pairs],
            [p.prompt_ids for p in pairs],
            [p.chosen_ids for p in pairs],
            [p.rejected_ids for p in pairs],
            [c for c, _ in logps],
            [r for _, r in logps],
            self.run.metadata(sources, row_range),
        )
        rejects = None
        if self.rejects:
            rejects_path = layout.rejects_part_path(self.worker, self.shard)
            self.rejects.sort(key=lambda r: r["index"])
            lines = "".join(json.dumps(r, default=str) + "\n" for r in self.rejects)
            write_text_atomic(rejects_path, lines)
            rejects = {"file": rejects_path.name, "sha256": file_sha256(rejects_path)}
        path = layout.shard_path(self.worker, self.shard)
        write_shard(table, path)
        report = validate_shard(path)

        record = {
            "job": self.key,
            "shard": self.shard,
            "worker": self.worker,
            "file": path.name,
            "sha256": file_sha256(path),
            "rows": report.num_rows,
            "row_range": list(row_range),
            "source_files": sources,
            "prompt_tokens": int(sum(len(p.prompt_ids) for p in pairs)),
            "chosen_tokens": int(sum(len(p.chosen_ids) for p in pairs)),
            "rejected_tokens": int(sum(len(p.rejected_ids) for p in pairs)),
            "dropped": dict(sorted(self.dropped.items())),
            "rejected": dict(sorted(self.rejected.items())),
            "rejects": rejects,
            "seconds": round(time.monotonic() - started, 3),
        }
        write_text_atomic(layout.record_path(self.worker, self.shard), json.dumps(record) + "\n")
        fault_point("shard-done")
        logger.info(
            "wrote %s: %d pairs, %d dropped, %d rejected",
            path,
            report.num_rows,
            sum(self.dropped.values()),
            sum(self.rejected.values()),
        )
        return record

    def _encode(self, rows: list[SourceRow]) -> list[EncodedPair]:
        """Checked, encoded pairs of the shard; bad rows raise or go to the rejects."""
        parsed: list[tuple[SourceRow, Row]] = []
        for source in rows:
            try:
                parsed.append((source, parse(source)))
            except BadRow as bad:
                self._bad(source, bad)
        encoded = self.run.encoder.encode([row for _, row in parsed])

        pairs, seen = [], {}
        for (source, _), pair in zip(parsed, encoded, strict=True):
            if isinstance(pair, BadRow):
                if pair.reason == "overlong" and self.run.options.overlong == "drop":
                    self.dropped[pair.reason] += 1
                elif pair.reason == "overlong" or pair.reason in FATAL_REASONS:
                    raise BadRowError(source, pair)
                else:
                    self._bad(source, pair)
            elif pair.id in seen:
                first = seen[pair.id]
                detail = f"id {pair.id!r} is also at {first.path} {first.where}"
                self._bad(source, BadRow("duplicate_id", "id", detail))
            else:
                seen[pair.id] = source
                pairs.append(pair)
        return pairs

    def _bad(self, source: SourceRow, bad: BadRow) -> None:
        if self.run.options.on_bad_row == "error":
            raise BadRowError(source, bad)
        raw = source.raw.decode("utf-8", "replace") if isinstance(source.raw, bytes) else source.raw
        self.rejects.append(
            {
                "index": source.index,
                "source": source.path,
                "line" if isinstance(source.raw, bytes) else "row": source.line,
                "reason": bad.reason,
                "field": bad.field,
                "message": bad.detail,
                "raw": raw,
            }
        )
        self.rejected[bad.reason] += 1

    def _score(self, pairs: list[EncodedPair]) -> list[tuple[Any, Any]]:
        if not pairs:
            return []
        scorer = self.run.scorer()
        batch = self.run.options.batch_pairs
        logps: list[tuple[Any, Any]] = []
        summary = self.summary
        for i in range(0, len(pairs), batch):
            chunk = pairs[i : i + batch]
            started = time.monotonic()
            logps.extend(scorer.score(chunk))
            fault_point("score-batch")
            summary.scoring_seconds += time.monotonic() - started
            summary.pairs += len(chunk)
            summary.scored_tokens += sum(p.num_scored_tokens for p in chunk)
            self.bar.update(len(chunk))
            rate = summary.scored_tokens / max(summary.scoring_seconds, 1e-9)
            self.bar.set_postfix_str(f"{rate:,.0f} tokens/s")
        return logps
