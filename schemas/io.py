"""Building and writing scored shards exactly as the contract lays them out."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.contract import SHARD_SCHEMA, ShardMetadata
from schemas.faults import fault_point

ROW_GROUP_ROWS = 1024
"""Rows per Parquet row group: small enough to stream, large enough to compress well."""


def shard_table(
    ids: Sequence[str],
    prompt_ids: Sequence[Sequence[int]],
    chosen_ids: Sequence[Sequence[int]],
    rejected_ids: Sequence[Sequence[int]],
    ref_chosen_logps: Sequence[Sequence[float]],
    ref_rejected_logps: Sequence[Sequence[float]],
    metadata: ShardMetadata,
) -> pa.Table:
    """An Arrow table in `SHARD_SCHEMA` with the metadata attached.

    The sums are computed here, in float64 from the float32 per-token values, so they always
    agree with what a reader recomputes.
    """
    columns = {
        "id": pa.array(ids, pa.string()),
        "prompt_ids": pa.array(prompt_ids, pa.list_(pa.int32())),
        "chosen_ids": pa.array(chosen_ids, pa.list_(pa.int32())),
        "rejected_ids": pa.array(rejected_ids, pa.list_(pa.int32())),
    }
    for name, per_token in (("chosen", ref_chosen_logps), ("rejected", ref_rejected_logps)):
        values = [np.asarray(v, dtype=np.float32) for v in per_token]
        columns[f"ref_{name}_logps"] = pa.array(values, pa.list_(pa.float32()))
        columns[f"ref_{name}_logp"] = pa.array(
            [float(v.astype(np.float64).sum()) for v in values], pa.float64()
        )
    table = pa.table(columns, schema=SHARD_SCHEMA)
    return table.replace_schema_metadata(metadata.to_kv())


def write_shard(table: pa.Table, path: str | Path, *, row_group_rows: int = ROW_GROUP_ROWS) -> None:
    """Write a shard atomically: a temporary file in the same folder, fsync, then rename.

    A reader never sees a partial file under the final name; a crash leaves only a `.tmp` file
    that the next run removes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # What `pq.write_table` does, with a fault point before the footer is written.
        with pq.ParquetWriter(
            tmp,
            table.schema,
            compression="zstd",
            use_dictionary=["id"],
            write_statistics=["id"],
        ) as writer:
            writer.write_table(table, row_group_size=row_group_rows)
            fault_point("shard-write")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file so that readers see the old content or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
