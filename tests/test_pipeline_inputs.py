"""Input discovery, streaming and row checks (no engine)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.inputs import BadRow, RowStream, discover, parse
from schemas import InputError
from toy.pairs import make_pairs, write_jsonl


def write_parquet(rows, path, row_group_size=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def test_toy_pairs_are_deterministic_and_distinct():
    assert make_pairs(20, seed=3) == make_pairs(20, seed=3)
    assert make_pairs(5) == make_pairs(9)[:5]
    assert make_pairs(5, seed=1) != make_pairs(5, seed=2)
    rows = make_pairs(500) + make_pairs(100, conversational=True)
    assert all(r["chosen"] != r["rejected"] for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    chat = make_pairs(3, conversational=True)[0]
    assert chat["prompt"][-1]["role"] == "user"
    assert [m["role"] for m in chat["chosen"]] == ["assistant"]


def test_discover_files_folders_and_globs(tmp_path):
    a = write_jsonl(make_pairs(2), tmp_path / "d" / "a.jsonl")
    b = write_parquet(make_pairs(2), tmp_path / "d" / "sub" / "b.parquet")
    c = write_jsonl(make_pairs(2), tmp_path / "c.jsonl")
    (tmp_path / "d" / "notes.txt").write_text("not input")

    assert discover([tmp_path / "d"]) == [a, b]
    assert discover([str(tmp_path / "*.jsonl")]) == [c]
    assert discover([c, tmp_path / "d", c]) == [c, a, b]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p / "missing.jsonl", "no such file or folder"),
        (lambda p: (p / "x.csv").write_text("a,b") and p / "x.csv", "unknown file type '.csv'"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "holds no .jsonl or .parquet"),
        (lambda p: str(p / "*.parquet"), "matches no .jsonl or .parquet"),
    ],
)
def test_discover_refuses_bad_paths(tmp_path, setup, message):
    with pytest.raises(InputError, match=message):
        discover([setup(tmp_path)])


def test_stream_numbers_rows_across_files(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text('{"x": 1}\n\n{"x": 2}\n')
    b = write_parquet([{"prompt": str(i)} for i in range(5)], tmp_path / "b.parquet", 2)
    stream = RowStream([a, b])
    rows = list(stream)
    assert [r.index for r in rows] == list(range(7))
    assert [(r.path, r.line) for r in rows[:2]] == [(str(a), 1), (str(a), 3)]
    assert [r.line for r in rows[2:]] == [0, 1, 2, 3, 4]
    assert rows[0].where == "line 1" and rows[2].where == "row 0"
    assert stream.total_rows == 7
    assert stream.files_between(1, 3) == [str(a), str(b)]


def test_stream_skips_unneeded_row_groups_but_counts_them(tmp_path):
    b = write_parquet([{"prompt": str(i)} for i in range(6)], tmp_path / "b.parquet", 2)
    asked = []

    def skip(start, stop):
        asked.append((start, stop))
        return start < 4

    stream = RowStream([b], skip)
    assert [r.raw["prompt"] for r in stream] == ["4", "5"]
    assert asked == [(0, 2), (2, 4), (4, 6)]
    assert stream.total_rows == 6


def test_stream_refuses_an_empty_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="holds no rows"):
        list(RowStream([empty]))


def _source(tmp_path, text: bytes):
    path = tmp_path / "one.jsonl"
    path.write_bytes(text + b"\n")
    return next(iter(RowStream([path])))


GOOD = {"prompt": "p", "chosen": "a", "rejected": "b"}
CHAT = {
    "prompt": [{"role": "user", "content": "p"}],
    "chosen": [{"role": "assistant", "content": "a"}],
    "rejected": [{"role": "assistant", "content": "b"}],
}
BAD_ROWS = {
    "malformed_json": (b'{"prompt": "p", "chosen": ', None),
    "missing_field": (json.dumps({"prompt": "p", "chosen": "a"}).encode(), "rejected"),
    "null_field": (json.dumps({**GOOD, "chosen": None}).encode(), "chosen"),
    "wrong_type": (json.dumps({**GOOD, "prompt": 3}).encode(), "prompt"),
    "empty_completion": (json.dumps({**GOOD, "rejected": ""}).encode(), "rejected"),
    "chosen_equals_rejected": (json.dumps({**GOOD, "rejected": "a"}).encode(), "rejected"),
    "undecodable_bytes": (b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}', None),
    "unknown_role": (
        json.dumps({**CHAT, "prompt": [{"role": "robot", "content": "p"}]}).encode(),
        "prompt",
    ),
}


@pytest.mark.parametrize("reason", sorted(BAD_ROWS))
def test_parse_names_the_reason_and_field(tmp_path, reason):
    text, field = BAD_ROWS[reason]
    with pytest.raises(BadRow) as caught:
        parse(_source(tmp_path, text))
    assert (caught.value.reason, caught.value.field) == (reason, field)


def test_parse_more_wrong_shapes(tmp_path):
    cases = [
        (b"[1, 2]", "wrong_type"),
        (json.dumps({**CHAT, "chosen": "a"}).encode(), "wrong_type"),
        (json.dumps({**CHAT, "chosen": [{"role": "assistant"}]}).encode(), "wrong_type"),
        (json.dumps({**CHAT, "chosen": []}).encode(), "empty_completion"),
        (json.dumps({**GOOD, "id": [1]}).encode(), "wrong_type"),
    ]
    for text, reason in cases:
        with pytest.raises(BadRow) as caught:
            parse(_source(tmp_path, text))
        assert caught.value.reason == reason, text


def test_ids_from_the_row_or_a_stable_content_hash(tmp_path):
    assert parse(_source(tmp_path, json.dumps({**GOOD, "id": 7}).encode())).id == "7"
    derived = parse(_source(tmp_path, json.dumps(GOOD).encode())).id
    again = parse(_source(tmp_path, json.dumps(dict(reversed(GOOD.items()))).encode())).id
    other = parse(_source(tmp_path, json.dumps({**GOOD, "chosen": "c"}).encode())).id
    assert derived == again != other
    assert derived.startswith("sha256-")
    row = parse(_source(tmp_path, json.dumps(CHAT).encode()))
    assert row.conversational and row.chosen == CHAT["chosen"]
