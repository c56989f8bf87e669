"""A scoring job: its options, where its files live, and what makes two runs the same job.

Dataset folder layout:

    DIR/manifest.json, DIR/README.md            written by `finalize`
    DIR/<split>/part-<worker>-<shard>.parquet   the scored shards
    DIR/<split>/rejects.jsonl                   skipped bad rows (written by `finalize`)
    DIR/<split>/.work/                          bookkeeping that makes runs resumable:
        job.json                                the job's identity (options, inputs, fingerprints)
        part-<worker>-<shard>.json              one record per finished shard (sha256, counts)
        part-<worker>-<shard>.rejects.jsonl     that shard's skipped rows
        worker-<worker>.done.json               a worker's shard list, written when it finishes
        worker-<worker>.lock                    held while a worker runs
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.encode import OVERLONG_MODES
from pipeline.scorer import DTYPES

ON_BAD_ROW_MODES = ("error", "skip")
DEFAULT_ROWS_PER_SHARD = 10_000
DEFAULT_BATCH_PAIRS = 1024


class JobMismatchError(ValueError):
    """The output folder holds another dataset, or the same split started with other options."""


class WorkerBusyError(RuntimeError):
    """Another process is running the same worker of the same split."""


class IncompleteDatasetError(RuntimeError):
    """`finalize` found workers that have not finished, or shards that are missing or damaged."""


@dataclass(frozen=True)
class ScoreOptions:
    """Everything `score` needs; checked once, here."""

    inputs: tuple[str, ...]
    """Input files, folders and globs."""
    model: str
    """Reference model folder (or hub name)."""
    out: Path
    """Dataset folder."""
    split: str = "train"
    """Split name: the sub-folder of `out` the shards go to."""
    max_length: int | None = None
    """Token limit on prompt + the longer completion; default the model's context length - 1."""
    overlong: str = "drop"
    """Over-long pairs: `drop` (and count), `keep-end` (cut the prompt's start) or `error`."""
    dtype: str = "auto"
    """Scoring dtype; `auto` is float32 on CPU, the checkpoint's dtype on GPU."""
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    """Input rows per shard (bad and dropped rows included, so shard bounds depend on the input
    alone)."""
    num_workers: int = 1
    """Workers of the job array."""
    worker_index: int = 0
    """This worker, in `[0, num_workers)`: it takes shards `k` with `k % num_workers == index`."""
    on_bad_row: str = "error"
    """Bad rows: `error` (stop, naming file, line and reason) or `skip` (write to rejects)."""
    batch_pairs: int = DEFAULT_BATCH_PAIRS
    """Pairs sent to the engine per call (results do not depend on it; progress does)."""
    kv_cache_gib: float | None = None
    """vLLM KV cache size on CPU, GiB."""
    progress: bool = True
    """Show a progress bar (on stderr, when it is a terminal)."""
    trust_remote_code: bool = False
    """Let transformers and vLLM run Python code shipped in the model folder; off by default."""
    command: tuple[str, ...] = field(default_factory=tuple)
    """The command line, for the manifest."""

    def __post_init__(self) -> None:
        checks = [
            (bool(self.inputs), f"inputs must name at least one file, got {self.inputs!r}"),
            (
                bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", self.split)),
                f"split must be a plain name like 'train', got {self.split!r}",
            ),
            (
                self.max_length is None or self.max_length >= 2,
                f"max_length must be >= 2, got {self.max_length}",
            ),
            (
                self.overlong in OVERLONG_MODES,
                f"overlong must be one of {OVERLONG_MODES}, got {self.overlong!r}",
            ),
            (self.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {self.dtype!r}"),
            (self.rows_per_shard > 0, f"rows_per_shard must be > 0, got {self.rows_per_shard}"),
            (self.num_workers > 0, f"num_workers must be > 0, got {self.num_workers}"),
            (
                0 <= self.worker_index < self.num_workers,
                f"worker_index must be in [0, num_workers={self.num_workers}), got "
                f"{self.worker_index}",
            ),
            (
                self.on_bad_row in ON_BAD_ROW_MODES,
                f"on_bad_row must be one of {ON_BAD_ROW_MODES}, got {self.on_bad_row!r}",
            ),
            (self.batch_pairs > 0, f"batch_pairs must be > 0, got {self.batch_pairs}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class Layout:
    """Paths of one split of a dataset folder."""

    def __init__(self, out: str | Path, split: str):
        self.out = Path(out)
        self.split = split
        self.split_dir = self.out / split
        self.work_dir = self.split_dir / ".work"
        self.job_path = self.work_dir / "job.json"

    @staticmethod
    def shard_name(worker: int, shard: int) -> str:
        return f"part-{worker:05d}-{shard:06d}"

    def shard_path(self, worker: int, shard: int) -> Path:
        return self.split_dir / f"{self.shard_name(worker, shard)}.parquet"

    def record_path(self, worker: int, shard: int) -> Path:
        return self.work_dir / f"{self.shard_name(worker, shard)}.json"

    def rejects_part_path(self, worker: int, shard: int) -> Path:
        return self.work_dir / f"{self.shard_name(worker, shard)}.rejects.jsonl"

    def done_path(self, worker: int) -> Path:
        return self.work_dir / f"worker-{worker:05d}.done.json"

    def lock_path(self, worker: int) -> Path:
        return self.work_dir / f"worker-{worker:05d}.lock"

    @property
    def rejects_path(self) -> Path:
        return self.split_dir / "rejects.jsonl"

    def remove_stale_temporaries(self, worker: int) -> None:
        """Remove temporary files a killed run of `worker` left (call with its lock held)."""
        prefix = f".{self.shard_name(worker, 0)[:-6]}"
        for folder in (self.split_dir, self.work_dir):
            for path in folder.glob(f"{prefix}*.tmp"):
                path.unlink(missing_ok=True)
        for path in self.work_dir.glob(f".worker-{worker:05d}.*.tmp"):
            path.unlink(missing_ok=True)


DATASET_KEYS = ("schema_version", "reference_fingerprint", "tokenizer_fingerprint", "dtype")
"""Identity keys every split of a dataset folder shares."""


def job_hash(job: dict) -> str:
    """A short digest of a job's identity, stamped on every record the job writes."""
    canonical = json.dumps(job, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def claim_job(layout: Layout, job: dict) -> None:
    """Record `job` as the identity of `layout.split`, or check it against the recorded one.

    Refuses (`JobMismatchError`) a split started with other inputs or options, and a split whose
    model, tokenizer or dtype differs from the other splits of the folder.
    """
    if layout.out.exists() and not layout.out.is_dir():
        raise JobMismatchError(f"--out {layout.out} is a file; pass a folder")
    _check_other_splits(layout, job)
    if layout.job_path.exists():
        existing = json.loads(layout.job_path.read_text())
        _compare(existing, job, f"{layout.split_dir} was started by another job", layout)
        return
    if any(layout.split_dir.glob("*.parquet")):
        raise JobMismatchError(
            f"{layout.split_dir} holds Parquet files that no scoring job of this pipeline wrote; "
            "choose another --out or --split"
        )
    layout.work_dir.mkdir(parents=True, exist_ok=True)
    # Several workers may start at once: each writes the same identity, then all compare.
    tmp = layout.job_path.with_name(f".job.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(job, indent=2, sort_keys=True))
    try:
        os.link(tmp, layout.job_path)
    except FileExistsError:
        existing = json.loads(layout.job_path.read_text())
        _compare(existing, job, f"{layout.split_dir} was started by another job", layout)
    except OSError:
        # No hard links on this file system: a plain rename, which may race.
        os.replace(tmp, layout.job_path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_other_splits(layout: Layout, job: dict) -> None:
    if not layout.out.is_dir():
        return
    for other in sorted(layout.out.glob("*/.work/job.json")):
        if other.parent.parent.name == layout.split:
            continue
        existing = json.loads(other.read_text())
        subset = {k: existing.get(k) for k in DATASET_KEYS}
        _compare(
            subset,
            {k: job.get(k) for k in DATASET_KEYS},
            f"{layout.out} holds split {other.parent.parent.name!r} scored differently",
            layout,
        )
    manifest = layout.out / "manifest.json"
    if manifest.is_file() and not any(layout.out.glob("*/.work/job.json")):
        raise JobMismatchError(
            f"{layout.out} holds a dataset without its bookkeeping (.work folders); choose "
            "another --out"
        )


def _compare(existing: dict, new: dict, problem: str, layout: Layout) -> None:
    differences = [
        f"{key}: {existing.get(key)!r} there, {new.get(key)!r} now"
        for key in sorted(set(existing) | set(new))
        if existing.get(key) != new.get(key)
    ]
    if differences:
        raise JobMismatchError(
            f"{problem} ({'; '.join(differences)}). Re-run with the same inputs and options, or "
            f"choose another --out (or delete {layout.split_dir} to start that split over)"
        )


class WorkerLock:
    """An exclusive lock on one worker of one split, held while it runs."""

    def __init__(self, layout: Layout, worker: int):
        self.path = layout.lock_path(worker)
        self.worker = worker
        self.split = layout.split
        self._file = None

    def __enter__(self) -> WorkerLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise WorkerBusyError(
                f"worker {self.worker} of split {self.split!r} is already running (pid "
                f"{holder}, lock {self.path}); wait for it, or give this run another "
                "--worker-index"
            ) from None
        self._file.truncate(0)
        self._file.write(str(os.getpid()))
        self._file.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
