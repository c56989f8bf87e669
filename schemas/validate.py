"""One validator for scored shards, used by the pipeline (after writing) and the trainer (before
reading). It streams the file in record batches, so memory stays bounded whatever its size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.contract import (
    COMPLETIONS,
    KNOWN_SCHEMA_VERSIONS,
    REQUIRED_META_KEYS,
    SHARD_SCHEMA,
    MetaKey,
    ShardMetadata,
)
from schemas.errors import (
    CorruptShardError,
    DuplicateIdError,
    EmptyCompletionError,
    LengthMismatchError,
    MissingEosError,
    MissingIdError,
    MissingMetadataError,
    NonFiniteError,
    PositiveLogpError,
    SchemaMismatchError,
    SchemaVersionError,
    SumMismatchError,
    TokenizerMismatchError,
)

SUM_ATOL = 1e-3
"""Absolute tolerance between a stored sum and the float64 sum of its float32 per-token values."""
SUM_RTOL = 1e-6


@dataclass(frozen=True)
class ShardReport:
    """What a valid shard holds."""

    path: str
    metadata: ShardMetadata
    num_rows: int
    prompt_tokens: int
    completion_tokens: int


def read_shard_metadata(path: str | Path) -> ShardMetadata:
    """Read and check a shard's footer: Parquet readable, schema version known, keys present."""
    kv, _ = _read_footer(Path(path))
    return ShardMetadata.from_kv(kv)


def check_tokenizer(path: str | Path, metadata: ShardMetadata, tokenizer_fingerprint: str) -> None:
    """Refuse a shard scored with another tokenizer than `tokenizer_fingerprint`."""
    if metadata.tokenizer_fingerprint != tokenizer_fingerprint:
        raise TokenizerMismatchError(
            path,
            f"tokenizer fingerprint {metadata.tokenizer_fingerprint} in the shard differs from "
            f"{tokenizer_fingerprint} of the tokenizer in use",
            column=MetaKey.TOKENIZER_FINGERPRINT,
        )


def validate_shard(
    path: str | Path,
    *,
    tokenizer_fingerprint: str | None = None,
    seen_ids: dict[str, tuple[str, int]] | None = None,
    batch_size: int = 8192,
) -> ShardReport:
    """Check a shard's footer and every row's invariants; return what it holds.

    Row invariants: id present and unique (across files when `seen_ids` is shared between calls);
    each completion non-empty, ending with an EOS id from the metadata, with one log-prob per
    token; every log-prob finite and <= 0; each stored sum equal to the float64 sum of its
    per-token values within `SUM_ATOL + SUM_RTOL * |sum|`. Raises a `ShardValidationError`
    subclass naming the file, row, id and column.
    """
    path = Path(path)
    kv, parquet = _read_footer(path)
    metadata = ShardMetadata.from_kv(kv)
    if tokenizer_fingerprint is not None:
        check_tokenizer(path, metadata, tokenizer_fingerprint)
    seen_ids = {} if seen_ids is None else seen_ids
    eos_ids = np.asarray(metadata.eos_token_ids, dtype=np.int64)

    num_rows = prompt_tokens = completion_tokens = 0
    try:
        batches = parquet.iter_batches(batch_size=batch_size, columns=SHARD_SCHEMA.names)
        for batch in batches:
            _check_batch(path, batch, num_rows, eos_ids, seen_ids)
            prompt_tokens += int(pc.sum(pc.list_value_length(batch["prompt_ids"])).as_py() or 0)
            for name in COMPLETIONS:
                lengths = pc.list_value_length(batch[f"{name}_ids"])
                completion_tokens += int(pc.sum(lengths).as_py() or 0)
            num_rows += batch.num_rows
    except (OSError, pa.ArrowInvalid) as e:
        raise CorruptShardError(path, f"cannot read row data ({e})") from e
    return ShardReport(str(path), metadata, num_rows, prompt_tokens, completion_tokens)


def validate_files(
    paths: Iterable[str | Path], *, tokenizer_fingerprint: str | None = None
) -> list[ShardReport]:
    """Validate several shards as one dataset: ids unique across all of them."""
    seen_ids: dict[str, tuple[str, int]] = {}
    return [
        validate_shard(p, tokenizer_fingerprint=tokenizer_fingerprint, seen_ids=seen_ids)
        for p in paths
    ]


def _read_footer(path: Path) -> tuple[dict[str, str], pq.ParquetFile]:
    """Open the Parquet footer and check schema, version and metadata keys."""
    if not path.is_file():
        raise CorruptShardError(path, "no such file", fix="Check the dataset path.")
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise CorruptShardError(path, f"not a readable Parquet file ({e})") from e
    raw = parquet.schema_arrow.metadata or {}
    kv = {k.decode(): v.decode() for k, v in raw.items() if k.startswith(b"slpo.")}

    version = kv.get(MetaKey.SCHEMA_VERSION)
    if version is None:
        raise SchemaVersionError(
            path, f"no {MetaKey.SCHEMA_VERSION!r} in the Parquet metadata; not a scored shard"
        )
    if version not in KNOWN_SCHEMA_VERSIONS:
        raise SchemaVersionError(
            path,
            f"schema version {version!r} is unknown; this reader knows "
            f"{sorted(KNOWN_SCHEMA_VERSIONS)}",
        )
    for key in REQUIRED_META_KEYS:
        if key not in kv:
            raise MissingMetadataError(path, f"metadata key {key!r} is missing", column=key)

    schema = parquet.schema_arrow
    for expected in SHARD_SCHEMA:
        if expected.name not in schema.names:
            raise SchemaMismatchError(path, "column is missing", column=expected.name)
        found = schema.field(expected.name).type
        if found != expected.type:
            raise SchemaMismatchError(
                path, f"type is {found}, expected {expected.type}", column=expected.name
            )
    return kv, parquet


def _check_batch(
    path: Path,
    batch: pa.RecordBatch,
    offset: int,
    eos_ids: np.ndarray,
    seen_ids: dict[str, tuple[str, int]],
) -> None:
    """Check the row invariants of one record batch; `offset` is its first row's index."""
    ids = batch["id"].to_pylist()

    def fail(error_type, local_row: int, column: str, problem: str):
        raise error_type(
            path, problem, row=offset + local_row, row_id=ids[local_row], column=column
        )

    for i, row_id in enumerate(ids):
        if not row_id:
            raise MissingIdError(path, "id is null or empty", row=offset + i, column="id")
        if row_id in seen_ids:
            first_path, first_row = seen_ids[row_id]
            fail(DuplicateIdError, i, "id", f"id also at {first_path} row {first_row}")
        seen_ids[row_id] = (str(path), offset + i)

    for name in COMPLETIONS:
        ids_col, logps_col, sum_col = f"{name}_ids", f"ref_{name}_logps", f"ref_{name}_logp"
        token_ids = batch[ids_col]
        per_token = batch[logps_col]
        for col in (ids_col, logps_col, sum_col):
            if batch[col].null_count:
                fail(NonFiniteError, _first(batch[col].is_null()), col, "value is null")

        n_tokens = pc.list_value_length(token_ids).to_numpy(zero_copy_only=False)
        n_logps = pc.list_value_length(per_token).to_numpy(zero_copy_only=False)
        if (bad := np.flatnonzero(n_tokens != n_logps)).size:
            i = int(bad[0])
            fail(
                LengthMismatchError,
                i,
                logps_col,
                f"{n_logps[i]} log-probs for {n_tokens[i]} tokens",
            )
        if (bad := np.flatnonzero(n_tokens == 0)).size:
            fail(EmptyCompletionError, int(bad[0]), ids_col, "completion has no tokens")

        # Last token of each list: offsets[1:] - 1 indexes into the flat values.
        flat_ids = token_ids.values.to_numpy(zero_copy_only=False)
        last = flat_ids[np.asarray(token_ids.offsets)[1:] - 1]
        if (bad := np.flatnonzero(~np.isin(last, eos_ids))).size:
            i = int(bad[0])
            fail(
                MissingEosError,
                i,
                ids_col,
                f"last token is {last[i]}, EOS ids are {eos_ids.tolist()}",
            )

        values = per_token.values.to_numpy(zero_copy_only=False).astype(np.float64)
        starts = np.asarray(per_token.offsets)[:-1]
        row_of = np.repeat(np.arange(len(n_tokens)), n_logps)
        if (bad := np.flatnonzero(~np.isfinite(values))).size:
            fail(NonFiniteError, int(row_of[bad[0]]), logps_col, "log-prob is NaN or infinite")
        if (bad := np.flatnonzero(values > 0)).size:
            j = int(bad[0])
            fail(PositiveLogpError, int(row_of[j]), logps_col, f"log-prob {values[j]} is above 0")

        sums = batch[sum_col].to_numpy(zero_copy_only=False)
        if (bad := np.flatnonzero(~np.isfinite(sums))).size:
            fail(NonFiniteError, int(bad[0]), sum_col, "sum is NaN or infinite")
        recomputed = np.add.reduceat(values, starts) if values.size else np.zeros(0)
        tolerance = SUM_ATOL + SUM_RTOL * np.abs(sums)
        if (bad := np.flatnonzero(np.abs(recomputed - sums) > tolerance)).size:
            i = int(bad[0])
            fail(
                SumMismatchError,
                i,
                sum_col,
                f"stored sum {sums[i]!r} but the per-token values sum to {recomputed[i]!r}",
            )


def _first(mask: pa.Array) -> int:
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])
