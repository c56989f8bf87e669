"""Finding a split's shards and checking their provenance before any training.

A dataset folder holds one subfolder per split (`train/`, `eval/`, ...), each with scored shards
(`*.parquet`, see `schemas.contract`). Before training, every shard's footer is read: the schema
version must be known, the tokenizer fingerprint must be the policy tokenizer's, and the
reference model is compared with the policy (a different policy is allowed, with a warning).
Row counts come from the footers too, so the number of steps is known without reading rows.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute  # noqa: F401  (schemas.validate uses `pa.compute` without importing it)
import pyarrow.parquet as pq

from schemas import ShardMetadata, check_tokenizer, read_shard_metadata, validate_shard

logger = logging.getLogger(__name__)


MANIFEST = "manifest.json"


class ProvenanceError(ValueError):
    """The shards cannot be trained on with this policy (mixed references, empty split...)."""


@dataclass(frozen=True)
class Shard:
    """One scored shard, as its footer describes it."""

    path: Path
    num_rows: int
    metadata: ShardMetadata


@dataclass(frozen=True)
class Split:
    """The shards of one split, in file-name order."""

    name: str
    shards: tuple[Shard, ...]

    @property
    def num_rows(self) -> int:
        return sum(s.num_rows for s in self.shards)

    @property
    def reference_fingerprint(self) -> str:
        return self.shards[0].metadata.reference_fingerprint

    @property
    def reference_model(self) -> str:
        return self.shards[0].metadata.reference_model

    def signature(self) -> list[list]:
        """(file name, row count) of every shard: what a checkpoint's data position refers to."""
        return [[s.path.name, s.num_rows] for s in self.shards]


def discover_shards(data_dir: Path, split: str) -> list[Path]:
    """The `*.parquet` files of `data_dir/split`, sorted; temporary files (`.name`) skipped."""
    folder = Path(data_dir) / split
    if not folder.is_dir():
        found = sorted(p.name for p in Path(data_dir).iterdir() if p.is_dir())
        raise ProvenanceError(
            f"{data_dir}: no {split!r} split folder (found folders {found}); pass the folder "
            "written by the scoring pipeline, or name the split with --train-split/--eval-split"
        )
    paths = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
    if not paths:
        raise ProvenanceError(f"{folder}: no .parquet shards; was scoring finished?")
    return paths


def load_split(data_dir: Path, split: str, *, tokenizer_fingerprint: str) -> Split:
    """Read every shard's footer and refuse what cannot be trained on.

    Raises `schemas.SchemaVersionError` (unknown schema version) and
    `schemas.TokenizerMismatchError` (another tokenizer), each naming the file and both values;
    `ProvenanceError` when shards disagree about their reference model or a split is empty.
    """
    shards = []
    for path in discover_shards(data_dir, split):
        metadata = read_shard_metadata(path)
        check_tokenizer(path, metadata, tokenizer_fingerprint)
        shards.append(Shard(path, pq.ParquetFile(path).metadata.num_rows, metadata))
    check_manifest(Path(data_dir), split, shards)

    first = shards[0]
    for shard in shards[1:]:
        if shard.metadata.reference_fingerprint != first.metadata.reference_fingerprint:
            raise ProvenanceError(
                f"{shard.path}: scored by reference {shard.metadata.reference_fingerprint} "
                f"({shard.metadata.reference_model}) but {first.path} by "
                f"{first.metadata.reference_fingerprint} ({first.metadata.reference_model}); "
                "a dataset must be scored by one reference model"
            )
    result = Split(split, tuple(shards))
    if result.num_rows == 0:
        raise ProvenanceError(f"{Path(data_dir) / split}: the shards hold no rows")
    logger.info(
        "split %r: %d shards, %d pairs, reference %s",
        split,
        len(shards),
        result.num_rows,
        first.metadata.reference_model,
    )
    return result


def check_manifest(data_dir: Path, split: str, shards: list[Shard]) -> None:
    """When the dataset has a `manifest.json`, its shard list for `split` must be what is found.

    A difference means an unfinished job array, a missing shard or a foreign file. A scoring
    job's folder without a manifest is refused (it was not finalized); a folder of shards
    written otherwise (by hand, say) is accepted with a warning.
    """
    path = data_dir / MANIFEST
    if not path.is_file() and (data_dir / split / ".work" / "job.json").is_file():
        raise ProvenanceError(
            f"{data_dir / split} was written by a scoring job that was not finalized (no "
            f"{path}): a worker may not have finished. Run `python -m pipeline finalize "
            f"{data_dir}`, which checks every worker and shard, then train"
        )
    if not path.is_file():
        logger.warning("%s has no %s: shards are used as found", data_dir, MANIFEST)
        return
    entry = json.loads(path.read_text()).get("splits", {}).get(split)
    if entry is None:
        raise ProvenanceError(f"{path}: no split {split!r}; was it scored and finalized?")
    listed = {Path(s["path"]).name: int(s["rows"]) for s in entry.get("shards", [])}
    found = {s.path.name: s.num_rows for s in shards}
    if listed != found:
        differ = sorted(set(listed.items()) ^ set(found.items()))
        raise ProvenanceError(
            f"{data_dir / split}: the shards found differ from {path} (differing (file, rows): "
            f"{differ}); finish and finalize the scoring job, or remove foreign files"
        )


def policy_is_reference(split: Split, policy_fingerprint: str) -> bool:
    """Whether the policy's weights are the scoring model's; warn when they are not."""
    if policy_fingerprint == split.reference_fingerprint:
        return True
    logger.warning(
        "the policy's weights (%s) differ from the model that scored the shards (%s, %s): "
        "training proceeds, the step-0 reference check is skipped, and the loss at step 0 will "
        "not be the policy-equals-reference value",
        policy_fingerprint,
        split.reference_model,
        split.reference_fingerprint,
    )
    return False


def validate_rows(split: Split, *, rank: int, world_size: int) -> str | None:
    """Row-level validation of this rank's share of the shards (shard i on rank i % world).

    Returns the first error's message, or None. Ids are checked for uniqueness within each
    rank's share only.
    """
    seen_ids: dict[str, tuple[str, int]] = {}
    for i, shard in enumerate(split.shards):
        if i % world_size != rank:
            continue
        try:
            validate_shard(shard.path, seen_ids=seen_ids)
        except ValueError as e:
            return str(e)
    return None
