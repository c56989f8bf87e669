"""Input rows: find the files, stream their rows in order, and check each row.

The rows of a split are numbered globally: file by file in the order `discover` returns them,
line by line (JSONL, blank lines are not rows) or row by row (Parquet). Shards and job-array
slices are defined on that numbering, so they depend on the input alone.

Reading is lazy: JSONL line by line, Parquet one row group at a time, and a caller can skip
blocks of rows it does not need without parsing them.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas import INPUT_FIELDS, MESSAGE_ROLES, InputError

JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)

FIXES = {
    "malformed_json": "Make the line one JSON object",
    "missing_field": "Add the field",
    "null_field": "Give the field a value",
    "wrong_type": (
        "`prompt`, `chosen` and `rejected` must all be strings, or all lists of "
        "{role, content} messages; `id` a string or an integer"
    ),
    "empty_completion": "Give both completions some text",
    "empty_prompt": "Give the prompt some text, or use a tokenizer that adds BOS",
    "chosen_equals_rejected": "Make `chosen` and `rejected` differ, or remove the row",
    "undecodable_bytes": "Save the file as UTF-8",
    "unknown_role": f"Use the roles {sorted(MESSAGE_ROLES)}",
    "duplicate_id": "Give every row a unique `id`, or drop `id` to derive it from the content",
    "overlong": "Raise --max-length, or pass --overlong drop or --overlong keep-end",
    "template_prefix": (
        "Use a chat template that renders the prompt (with the generation prompt) as a prefix "
        "of the conversation with the answer, or give the rows as plain strings"
    ),
}
"""Bad-row reasons (short, stable: the manifest counts them) and what to do about each."""


class BadRow(Exception):
    """A row that cannot become a preference pair: a reason from `FIXES`, a field, a detail."""

    def __init__(self, reason: str, field: str | None, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.field = field
        self.detail = detail


class BadRowError(InputError):
    """A bad row met with `on_bad_row="error"` (or an over-long pair with `overlong="error"`)."""

    def __init__(self, row: SourceRow, bad: BadRow):
        fix = FIXES[bad.reason]
        if bad.reason not in ("overlong", "template_prefix"):
            fix += ", or pass `--on-bad-row skip` to skip and count such rows"
        super().__init__(
            f"{row.path} {row.where}",
            f"{bad.reason}: {bad.detail}",
            column=bad.field,
            fix=fix + ".",
        )
        self.reason = bad.reason


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One input row, not yet parsed: a JSONL line's bytes or a Parquet row's dict."""

    index: int
    """Global row number within the split's input."""
    path: str
    """The file, as `discover` found it."""
    line: int
    """1-based line number (JSONL) or 0-based row index (Parquet)."""
    raw: bytes | dict[str, Any]

    @property
    def where(self) -> str:
        return f"line {self.line}" if isinstance(self.raw, bytes) else f"row {self.line}"


@dataclass(frozen=True)
class Row:
    """A checked row: the three fields in one format, and its id."""

    id: str
    prompt: str | list[dict[str, str]]
    chosen: str | list[dict[str, str]]
    rejected: str | list[dict[str, str]]
    conversational: bool


def discover(paths: list[str | Path]) -> list[Path]:
    """Input files from files, folders (their `.jsonl`/`.parquet` files, sorted) and globs.

    Order is the order of `paths`, each expanded in sorted order; a file named twice counts once.
    """
    if not paths:
        raise InputError("<inputs>", "no input given", fix="Name at least one file or folder.")
    found: list[Path] = []
    for given in map(str, paths):
        if any(ch in given for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(given, recursive=True))
            files = [p for p in matches if p.is_file() and _is_input(p)]
            if not files:
                raise InputError(
                    given,
                    "the pattern matches no .jsonl or .parquet file",
                    fix="Check the pattern (quote it so the shell does not expand it).",
                )
        elif os.path.isdir(given):
            files = sorted(p for p in Path(given).rglob("*") if p.is_file() and _is_input(p))
            if not files:
                raise InputError(
                    given,
                    "the folder holds no .jsonl or .parquet file",
                    fix="Point at a folder with input files.",
                )
        elif os.path.isfile(given):
            files = [Path(given)]
            if not _is_input(files[0]):
                raise InputError(
                    given,
                    f"unknown file type {files[0].suffix!r}",
                    fix=f"Use JSON Lines ({', '.join(JSONL_SUFFIXES)}) or Parquet (.parquet).",
                )
        else:
            raise InputError(given, "no such file or folder", fix="Check the path.")
        found.extend(files)
    return list(dict.fromkeys(found))


def _is_input(path: Path) -> bool:
    return path.suffix in JSONL_SUFFIXES + PARQUET_SUFFIXES


class RowStream:
    """Iterate the rows of `files` in global order; `total_rows` is known once exhausted.

    `skip(start, stop)` may return True for a block of global rows `[start, stop)` the caller
    does not need: those rows are counted but not yielded (a Parquet row group is then not read).
    """

    def __init__(self, files: list[Path], skip: Callable[[int, int], bool] | None = None):
        self.files = files
        self.skip = skip or (lambda start, stop: False)
        self.total_rows: int | None = None
        self.file_ranges: list[tuple[str, int, int]] = []
        """(file, first row, end row) of every file read so far."""

    def __iter__(self) -> Iterator[SourceRow]:
        index = 0
        for path in self.files:
            reader = _jsonl_rows if path.suffix in JSONL_SUFFIXES else _parquet_rows
            end = yield from reader(path, index, self.skip)
            if end == index:
                raise InputError(path, "the file holds no rows", fix="Remove the empty file.")
            self.file_ranges.append((str(path), index, end))
            index = end
        self.total_rows = index

    def files_between(self, start: int, stop: int) -> list[str]:
        """Files holding any of the global rows `[start, stop)` (among the files read so far)."""
        return [f for f, a, b in self.file_ranges if a < stop and start < b]


def _jsonl_rows(path: Path, index: int, skip) -> Iterator[SourceRow]:
    """Rows of a JSON Lines file from global row `index`; returns the index after the last."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if not skip(index, index + 1):
                if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]
                yield SourceRow(index, str(path), number, line.rstrip(b"\r\n"))
            index += 1
    return index


def _parquet_rows(path: Path, index: int, skip) -> Iterator[SourceRow]:
    """Rows of a Parquet file, one row group at a time; returns the index after the last."""
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:
        raise InputError(path, f"not a readable Parquet file ({e})", fix="Check the file.") from e
    _check_parquet_types(path, parquet.schema_arrow)
    columns = [c for c in ("id", *INPUT_FIELDS) if c in parquet.schema_arrow.names]
    first = 0
    for group in range(parquet.num_row_groups):
        n = parquet.metadata.row_group(group).num_rows
        if n and not skip(index + first, index + first + n):
            table = parquet.read_row_group(group, columns=columns)
            for offset, data in enumerate(table.to_pylist()):
                yield SourceRow(index + first + offset, str(path), first + offset, data)
        first += n
    return index + first


def _check_parquet_types(path: Path, schema: pa.Schema) -> None:
    """Refuse a column whose type no row could be valid in: a file error, whatever
    `on_bad_row` says (skipping would reject every row)."""
    t = pa.types
    for name in ("id", *INPUT_FIELDS):
        if name not in schema.names:
            continue
        kind = schema.field(name).type
        text = t.is_null(kind) or t.is_string(kind) or t.is_large_string(kind)
        if name == "id":
            ok = text or t.is_integer(kind)
        else:
            listed = t.is_list(kind) or t.is_large_list(kind)
            ok = text or (listed and t.is_struct(kind.value_type))
        if not ok:
            raise InputError(
                path,
                f"the column's type is {kind}",
                column=name,
                fix=(
                    "Write `prompt`, `chosen` and `rejected` as string columns, or as "
                    "list<struct<role: string, content: string>> columns, and `id` as a string "
                    "or integer column."
                ),
            )


def parse(row: SourceRow) -> Row:
    """Check one row and return it in one format; raise `BadRow` with the reason."""
    if isinstance(row.raw, bytes):
        try:
            text = row.raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRow("undecodable_bytes", None, f"not UTF-8 at byte {e.start}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BadRow("malformed_json", None, f"{e.msg} at column {e.colno}") from None
    else:
        data = row.raw
    if not isinstance(data, dict):
        raise BadRow("wrong_type", None, f"a row must be a JSON object, got {_kind(data)}")

    for name in INPUT_FIELDS:
        if name not in data:
            raise BadRow("missing_field", name, f"field {name!r} is missing")
        if data[name] is None:
            raise BadRow("null_field", name, f"field {name!r} is null")
    conversational = isinstance(data["prompt"], list)
    for name in INPUT_FIELDS:
        value = data[name]
        if conversational:
            _check_messages(name, value)
        elif not isinstance(value, str):
            raise BadRow("wrong_type", name, f"expected a string like `prompt`, got {_kind(value)}")
    for name in ("chosen", "rejected"):
        if not data[name] or (conversational and not any(m["content"] for m in data[name])):
            raise BadRow("empty_completion", name, f"{name!r} is empty")
    if data["chosen"] == data["rejected"]:
        raise BadRow("chosen_equals_rejected", "rejected", "`chosen` equals `rejected`")
    return Row(
        _row_id(data),
        data["prompt"],
        data["chosen"],
        data["rejected"],
        conversational,
    )


def _check_messages(name: str, value: Any) -> None:
    if not isinstance(value, list):
        raise BadRow(
            "wrong_type", name, f"expected a message list like `prompt`, got {_kind(value)}"
        )
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise BadRow(
                "wrong_type",
                name,
                f"message {i} must be an object with string `role` and `content`",
            )
        role = message.get("role")
        if not isinstance(role, str):
            raise BadRow("wrong_type", name, f"message {i} has no string `role`")
        if role not in MESSAGE_ROLES:
            raise BadRow("unknown_role", name, f"message {i} has the unknown role {role!r}")


def _row_id(data: dict[str, Any]) -> str:
    """The row's own id, or a stable hash of its content when it has none (absent, null, "")."""
    row_id = data.get("id")
    if isinstance(row_id, bool) or not isinstance(row_id, str | int | type(None)):
        raise BadRow(
            "wrong_type", "id", f"`id` must be a string or an integer, got {_kind(row_id)}"
        )
    if row_id is not None and row_id != "":
        return str(row_id)
    content = json.dumps(
        [data[name] for name in INPUT_FIELDS],
        ensure_ascii=False,
        separators=(",", ":"),
        sort_keys=True,
    )
    return "sha256-" + hashlib.sha256(content.encode()).hexdigest()[:32]


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), f"a {type(value).__name__}")
