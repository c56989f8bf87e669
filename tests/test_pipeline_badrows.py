"""Bad rows and over-long pairs through the whole pipeline, in both modes."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import score
from pipeline.inputs import BadRowError
from schemas import DuplicateIdError, validate_files
from tests.test_pipeline_inputs import BAD_ROWS
from toy.pairs import make_pairs

pytestmark = pytest.mark.vllm

GOOD_ROWS = make_pairs(3, seed=7)
DUPLICATE = json.dumps({**GOOD_ROWS[0], "chosen": "something else"}).encode()
CASES = {**{reason: text for reason, (text, _) in BAD_ROWS.items()}, "duplicate_id": DUPLICATE}
FIELDS = {**{reason: field for reason, (_, field) in BAD_ROWS.items()}, "duplicate_id": "id"}


def write_lines(path, lines: list[bytes]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def good_lines(rows=GOOD_ROWS) -> list[bytes]:
    return [json.dumps(r).encode() for r in rows]


@pytest.mark.parametrize("reason", sorted(CASES))
def test_error_mode_names_file_line_field_and_reason(tmp_path, tiny_model_dir, vllm_scorer, reason):
    path = write_lines(tmp_path / "in.jsonl", [*good_lines(), CASES[reason]])
    out = tmp_path / "out"
    with pytest.raises(BadRowError) as caught:
        score(path, model=tiny_model_dir, out=out, scorer=vllm_scorer, progress=False)
    message = str(caught.value)
    assert message.startswith(f"{path} line 4")
    assert f"{reason}:" in message and "--on-bad-row skip" in message
    if FIELDS[reason]:
        assert f"column {FIELDS[reason]!r}" in message
    assert caught.value.reason == reason
    # Nothing that looks complete: no shard, no done marker, no manifest.
    assert not list(out.rglob("*.parquet"))
    assert not list(out.rglob("*.done.json"))
    assert not (out / "manifest.json").exists()


def test_error_mode_keeps_finished_shards_but_nothing_looks_complete(
    tmp_path, tiny_model_dir, vllm_scorer
):
    path = write_lines(tmp_path / "in.jsonl", [*good_lines(), CASES["null_field"]])
    out = tmp_path / "out"
    with pytest.raises(BadRowError, match="line 4"):
        score(path, model=tiny_model_dir, out=out, rows_per_shard=2, scorer=vllm_scorer)
    assert [p.name for p in (out / "train").glob("*.parquet")] == ["part-00000-000000.parquet"]
    assert not list(out.rglob("*.done.json")) and not (out / "manifest.json").exists()


def test_skip_mode_writes_rejects_and_counts_each_reason(tmp_path, tiny_model_dir, vllm_scorer):
    reasons = sorted(CASES)
    lines = [*good_lines()]
    for reason in reasons:
        lines += [CASES[reason]]
    path = write_lines(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out"
    result = score(
        path,
        model=tiny_model_dir,
        out=out,
        on_bad_row="skip",
        scorer=vllm_scorer,
        progress=False,
    )
    manifest = json.loads(result.manifest.read_text())["splits"]["train"]
    assert manifest["rows"] == len(GOOD_ROWS)
    assert manifest["rejected"] == {reason: 1 for reason in reasons}
    assert manifest["input_rows"] == len(lines)
    validate_files(sorted((out / "train").glob("*.parquet")))

    rejects = [
        json.loads(line) for line in (out / "train" / "rejects.jsonl").read_text().splitlines()
    ]
    assert [r["reason"] for r in rejects] == reasons
    assert [r["line"] for r in rejects] == list(range(len(GOOD_ROWS) + 1, len(lines) + 1))
    assert {r["source"] for r in rejects} == {str(path)}
    assert [r["field"] for r in rejects] == [FIELDS[reason] for reason in reasons]
    by_reason = {r["reason"]: r for r in rejects}
    assert by_reason["malformed_json"]["raw"] == CASES["malformed_json"].decode()
    assert "\ufffd" in by_reason["undecodable_bytes"]["raw"]


def test_a_duplicate_id_in_another_shard_is_refused_by_finalize(
    tmp_path, tiny_model_dir, vllm_scorer
):
    """Ids are checked within a shard while reading, across shards by the validator."""
    path = write_lines(tmp_path / "in.jsonl", [*good_lines(), DUPLICATE])
    out = tmp_path / "out"
    with pytest.raises(DuplicateIdError, match="toy-7-0000000"):
        score(
            path,
            model=tiny_model_dir,
            out=out,
            rows_per_shard=2,
            on_bad_row="skip",
            scorer=vllm_scorer,
        )
    assert not (out / "manifest.json").exists()


def test_parquet_bad_rows_are_named_by_row_index(tmp_path, tiny_model_dir, vllm_scorer):
    rows = [*GOOD_ROWS, {**GOOD_ROWS[0], "id": "x", "rejected": None}]
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(BadRowError, match=r"in\.parquet row 3, column 'rejected': null_field"):
        score(path, model=tiny_model_dir, out=tmp_path / "out", scorer=vllm_scorer)


def test_overlong_pairs_are_dropped_and_counted_cut_or_refused(
    tmp_path, tiny_model_dir, vllm_scorer
):
    long_prompt = {"id": "long", "prompt": "count " * 60, "chosen": "yes", "rejected": "no"}
    path = write_lines(tmp_path / "in.jsonl", [*good_lines(), json.dumps(long_prompt).encode()])
    common = dict(model=tiny_model_dir, max_length=48, scorer=vllm_scorer, progress=False)

    dropped = score(path, out=tmp_path / "drop", **common)
    split = json.loads(dropped.manifest.read_text())["splits"]["train"]
    assert (split["rows"], split["dropped"], split["rejected"]) == (3, {"overlong": 1}, {})

    kept = score(path, out=tmp_path / "keep", overlong="keep-end", **common)
    table = pq.read_table(tmp_path / "keep" / "train" / "part-00000-000000.parquet").to_pylist()
    row = next(r for r in table if r["id"] == "long")
    assert len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"])) == 48
    assert json.loads(kept.manifest.read_text())["splits"]["train"]["dropped"] == {}

    with pytest.raises(BadRowError, match=r"line 4: overlong: .* over max_length 48"):
        score(path, out=tmp_path / "error", overlong="error", on_bad_row="skip", **common)
