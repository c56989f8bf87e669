"""The shard contract: round trip through pyarrow and polars, and one named error per violation."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from schemas import (
    SHARD_SCHEMA,
    MetaKey,
    ShardMetadata,
    shard_table,
    validate_files,
    validate_shard,
    write_shard,
)

EOS = 2


def make_metadata(**overrides) -> ShardMetadata:
    fields = dict(
        reference_model="toy",
        reference_fingerprint="sha256:" + "0" * 64,
        tokenizer_fingerprint="sha256:" + "1" * 64,
        chat_template="",
        eos_token_ids=(EOS,),
        dtype="float32",
        scorer="test",
        scorer_version="0",
        source_files=("input.jsonl",),
    )
    fields.update(overrides)
    return ShardMetadata(**fields)


def make_rows(n: int = 5, seed: int = 0) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("ids", "prompt_ids", "chosen_ids", "rejected_ids")}
    rows["ref_chosen_logps"], rows["ref_rejected_logps"] = [], []
    for i in range(n):
        rows["ids"].append(f"pair-{i}")
        rows["prompt_ids"].append(rng.integers(3, 50, size=rng.integers(1, 6)).tolist())
        for name in ("chosen", "rejected"):
            length = int(rng.integers(1, 7))
            rows[f"{name}_ids"].append([*rng.integers(3, 50, size=length).tolist(), EOS])
            rows[f"ref_{name}_logps"].append((-rng.random(length + 1) * 5).tolist())
    return rows


def write(tmp_path, rows=None, name="part-0000-00000.parquet", table=None, **meta):
    table = (
        table
        if table is not None
        else shard_table(**(rows or make_rows()), metadata=make_metadata(**meta))
    )
    path = tmp_path / name
    write_shard(table, path)
    return path


def with_column(table: pa.Table, name: str, values: list) -> pa.Table:
    index = table.schema.get_field_index(name)
    column = pa.array(values, table.schema.field(name).type)
    return table.set_column(index, table.schema.field(name), column)


def test_round_trip_pyarrow_and_polars(tmp_path):
    rows = make_rows(7)
    path = write(tmp_path, rows)

    table = pq.read_table(path)
    assert table.schema.remove_metadata() == SHARD_SCHEMA
    assert table.column("id").to_pylist() == rows["ids"]
    assert table.column("chosen_ids").to_pylist() == rows["chosen_ids"]
    stored = table.column("ref_chosen_logps").to_pylist()
    np.testing.assert_allclose(
        np.concatenate(stored), np.concatenate(rows["ref_chosen_logps"]), rtol=1e-6
    )
    expected_sums = [float(np.asarray(v, np.float32).astype(np.float64).sum()) for v in stored]
    assert table.column("ref_chosen_logp").to_pylist() == expected_sums

    frame = pl.read_parquet(path)
    assert frame["id"].to_list() == rows["ids"]
    assert frame["rejected_ids"].to_list() == rows["rejected_ids"]
    assert frame.schema["ref_rejected_logps"] == pl.List(pl.Float32)

    meta = schemas.read_shard_metadata(path)
    assert meta == make_metadata()
    report = validate_shard(path)
    assert report.num_rows == 7
    assert report.completion_tokens == sum(map(len, rows["chosen_ids"] + rows["rejected_ids"]))


def test_write_is_atomic_and_leaves_no_temp(tmp_path):
    path = write(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_metadata_round_trip_keeps_extra_keys():
    meta = make_metadata(extra={"slpo.note": "x"}, split="eval", max_length=64)
    kv = {k.decode(): v.decode() for k, v in meta.to_kv().items()}
    assert ShardMetadata.from_kv(kv) == meta


def table_with(column: str, values: list) -> pa.Table:
    table = shard_table(**make_rows(), metadata=make_metadata())
    return with_column(table, column, values)


def bad_sum_table():
    table = shard_table(**make_rows(), metadata=make_metadata())
    sums = table.column("ref_rejected_logp").to_pylist()
    sums[3] -= 0.5
    return with_column(table, "ref_rejected_logp", sums)


def row_cases():
    rows = make_rows()
    cases = {}

    r = make_rows()
    r["ids"][2] = r["ids"][1]
    cases["duplicate_id"] = (r, schemas.DuplicateIdError, "row 2, id 'pair-1', column 'id'")

    r = make_rows()
    r["ref_chosen_logps"][1] = r["ref_chosen_logps"][1][:-1]
    cases["length"] = (r, schemas.LengthMismatchError, "row 1.*ref_chosen_logps.*log-probs for")

    r = make_rows()
    r["chosen_ids"][4] = [*r["chosen_ids"][4][:-1], 7]
    cases["eos"] = (r, schemas.MissingEosError, "row 4.*chosen_ids.*last token is 7")

    r = make_rows()
    r["ref_rejected_logps"][2][0] = float("nan")
    cases["nan"] = (r, schemas.NonFiniteError, "row 2.*ref_rejected_logps.*NaN")

    r = make_rows()
    r["ref_chosen_logps"][0][0] = float("-inf")
    cases["inf"] = (r, schemas.NonFiniteError, "row 0.*ref_chosen_logps")

    r = make_rows()
    r["ref_chosen_logps"][3][1] = 0.25
    cases["positive"] = (r, schemas.PositiveLogpError, "row 3.*above 0")

    r = make_rows()
    r["chosen_ids"][1], r["ref_chosen_logps"][1] = [], []
    cases["empty"] = (r, schemas.EmptyCompletionError, "row 1.*chosen_ids.*no tokens")

    r = make_rows()
    r["ids"][0] = ""
    cases["missing_id"] = (r, schemas.MissingIdError, "row 0.*id is null or empty")
    del rows
    return cases


@pytest.mark.parametrize("case", sorted(row_cases()))
def test_each_row_violation_has_its_own_error(tmp_path, case):
    rows, error, message = row_cases()[case]
    path = write(tmp_path, rows)
    with pytest.raises(error, match=message) as info:
        validate_shard(path)
    assert str(path) in str(info.value)
    assert info.value.fix in str(info.value)


def test_sum_mismatch(tmp_path):
    path = write(tmp_path, table=bad_sum_table())
    with pytest.raises(
        schemas.SumMismatchError, match="row 3, id 'pair-3', column 'ref_rejected_logp'"
    ):
        validate_shard(path)


def test_unknown_schema_version(tmp_path):
    path = write(tmp_path, schema_version="99")
    with pytest.raises(schemas.SchemaVersionError, match="schema version '99' is unknown"):
        validate_shard(path)


def test_missing_version_means_not_a_shard(tmp_path):
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"id": ["a"]}), path)
    with pytest.raises(schemas.SchemaVersionError, match="not a scored shard"):
        validate_shard(path)


def test_missing_metadata_key(tmp_path):
    table = shard_table(**make_rows(), metadata=make_metadata())
    kv = dict(table.schema.metadata)
    del kv[MetaKey.DTYPE.encode()]
    path = write(tmp_path, table=table.replace_schema_metadata(kv))
    with pytest.raises(schemas.MissingMetadataError, match="slpo.dtype"):
        validate_shard(path)


def test_wrong_column_type(tmp_path):
    table = shard_table(**make_rows(), metadata=make_metadata())
    kv = table.schema.metadata
    table = table.set_column(
        table.schema.get_field_index("ref_chosen_logp"),
        pa.field("ref_chosen_logp", pa.float32()),
        table.column("ref_chosen_logp").cast(pa.float32()),
    ).replace_schema_metadata(kv)
    path = tmp_path / "shard.parquet"
    pq.write_table(table, path)
    with pytest.raises(
        schemas.SchemaMismatchError, match="column 'ref_chosen_logp': type is float"
    ):
        validate_shard(path)


def test_missing_column(tmp_path):
    table = shard_table(**make_rows(), metadata=make_metadata())
    table = table.drop_columns(["prompt_ids"]).replace_schema_metadata(table.schema.metadata)
    path = tmp_path / "shard.parquet"
    pq.write_table(table, path)
    with pytest.raises(schemas.SchemaMismatchError, match="'prompt_ids': column is missing"):
        validate_shard(path)


def test_truncated_file(tmp_path):
    path = write(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(schemas.CorruptShardError, match="not a readable Parquet file"):
        validate_shard(path)


def test_tokenizer_mismatch_names_both_values(tmp_path):
    path = write(tmp_path)
    other = "sha256:" + "2" * 64
    with pytest.raises(schemas.TokenizerMismatchError) as info:
        validate_shard(path, tokenizer_fingerprint=other)
    assert "1" * 64 in str(info.value) and other in str(info.value)


def test_duplicate_ids_across_files(tmp_path):
    first = write(tmp_path, make_rows(3), name="a.parquet")
    second = write(tmp_path, make_rows(3, seed=1), name="b.parquet")
    with pytest.raises(schemas.DuplicateIdError, match=f"b.parquet, row 0.*also at {first}"):
        validate_files([first, second])


def test_large_shard_streams_in_batches(tmp_path):
    rows = make_rows(3000)
    path = write(tmp_path, rows)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    report = validate_shard(path, batch_size=1000)
    assert report.num_rows == 3000
