"""Errors raised when a shard or an input file breaks the contract.

Every error names the file, and where it concerns a row, the row's index in the file, its id and
the column; its message ends with what to do about it.
"""

from __future__ import annotations

from pathlib import Path


class ContractError(ValueError):
    """Base of every contract violation."""

    fix = "Re-score the input with `python -m pipeline score`."

    def __init__(
        self,
        path: str | Path,
        problem: str,
        *,
        row: int | None = None,
        row_id: str | None = None,
        column: str | None = None,
        fix: str | None = None,
    ):
        self.path = str(path)
        self.problem = problem
        self.row = row
        self.row_id = row_id
        self.column = column
        self.fix = fix or self.fix
        where = [self.path]
        if row is not None:
            where.append(f"row {row}")
        if row_id is not None:
            where.append(f"id {row_id!r}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {problem}. {self.fix}")


class ShardValidationError(ContractError):
    """A scored shard does not satisfy the contract."""


class CorruptShardError(ShardValidationError):
    """The file cannot be read as Parquet (truncated, not Parquet, or damaged)."""

    fix = "Delete it and re-run the scoring worker that wrote it; the re-run redoes missing shards."


class SchemaVersionError(ShardValidationError):
    """The shard's schema version is missing or unknown to this reader."""

    fix = "Re-score with this version of the pipeline, or upgrade the reader."


class MissingMetadataError(ShardValidationError):
    """A required key-value metadata entry is missing."""


class SchemaMismatchError(ShardValidationError):
    """A column is missing or has the wrong Arrow type."""


class MissingIdError(ShardValidationError):
    """A row has a null or empty id."""


class DuplicateIdError(ShardValidationError):
    """An id occurs twice in a shard or a dataset."""

    fix = "Give every input row a unique `id`, or drop the `id` field to derive ids from content."


class LengthMismatchError(ShardValidationError):
    """A completion's token count differs from its log-prob count."""


class EmptyCompletionError(ShardValidationError):
    """A completion has no tokens."""


class MissingEosError(ShardValidationError):
    """A completion does not end with the tokenizer's EOS token."""


class NonFiniteError(ShardValidationError):
    """A log-prob is NaN or infinite."""


class PositiveLogpError(ShardValidationError):
    """A log-prob is above zero, which no probability has."""


class SumMismatchError(ShardValidationError):
    """A stored sum differs from the sum of its per-token log-probs."""


class TokenizerMismatchError(ShardValidationError):
    """The shard was scored with a different tokenizer than the one in use."""

    fix = (
        "Train with the tokenizer the shards were scored with, or re-score the data with the "
        "policy's tokenizer."
    )


class ModelFolderError(ContractError):
    """A model folder is missing, incomplete or damaged (found before anything loads it)."""

    fix = "Pass a folder written by `save_pretrained` (config.json, tokenizer files, weights)."


class InputError(ContractError):
    """An input row or file cannot be turned into a preference pair."""

    fix = "Fix the row, or pass `--on-bad-row skip` to skip and count such rows."
