"""The data contract between `pipeline` (writes scored shards) and `train` (reads them).

A scored shard is one Parquet file. Each row is one preference pair:

    id                  string        stable, unique within the dataset
    prompt_ids          list<int32>   prompt tokens (chat template applied, BOS included)
    chosen_ids          list<int32>   chosen completion tokens, EOS last
    rejected_ids        list<int32>   rejected completion tokens, EOS last
    ref_chosen_logps    list<float32> reference log-prob of each chosen token   [len(chosen_ids)]
    ref_rejected_logps  list<float32> reference log-prob of each rejected token [len(rejected_ids)]
    ref_chosen_logp     float64       sum of ref_chosen_logps (summed in float64)
    ref_rejected_logp   float64       sum of ref_rejected_logps

The file's key-value metadata (all values are UTF-8 strings, under the `slpo.` prefix) says how
the reference log-probs were made: see `MetaKey`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa

SCHEMA_VERSION = "1"
"""Version of the shard layout and metadata. Bump it on any change a reader must know about."""

KNOWN_SCHEMA_VERSIONS = frozenset({SCHEMA_VERSION})

REFERENCE_PARITY_ATOL = 1e-4
"""Largest per-token difference (nats) accepted between stored reference log-probs and the same
model's log-probs recomputed by the trainer in float32. Scoring parity was measured well inside
it (see docs); anything above means tokenizer, template or dtype drift."""

MESSAGE_ROLES = frozenset({"system", "user", "assistant"})

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])

STANDARD_INPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
    ]
)
"""Input rows with plain-text prompt and completions. `id` is optional."""

CONVERSATIONAL_INPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.list_(MESSAGE_TYPE)),
        ("chosen", pa.list_(MESSAGE_TYPE)),
        ("rejected", pa.list_(MESSAGE_TYPE)),
    ]
)
"""Input rows as message lists: the prompt's turns, then each completion's assistant turn(s)."""

INPUT_FIELDS = ("prompt", "chosen", "rejected")

SHARD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("prompt_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("chosen_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("rejected_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("ref_chosen_logps", pa.list_(pa.float32()), nullable=False),
        pa.field("ref_rejected_logps", pa.list_(pa.float32()), nullable=False),
        pa.field("ref_chosen_logp", pa.float64(), nullable=False),
        pa.field("ref_rejected_logp", pa.float64(), nullable=False),
    ]
)

COMPLETIONS = ("chosen", "rejected")
"""Completion names; column names are derived from them (`{name}_ids`, `ref_{name}_logps`, ...)."""


class MetaKey:
    """Parquet key-value metadata keys of a scored shard."""

    SCHEMA_VERSION = "slpo.schema_version"
    REFERENCE_MODEL = "slpo.reference_model"  # path or hub name the scorer loaded
    REFERENCE_FINGERPRINT = "slpo.reference_fingerprint"  # `weights_fingerprint` of that model
    TOKENIZER_FINGERPRINT = "slpo.tokenizer_fingerprint"  # `tokenizer_fingerprint`
    CHAT_TEMPLATE = "slpo.chat_template"  # "" when the tokenizer has none
    EOS_TOKEN_IDS = "slpo.eos_token_ids"  # JSON list of ints a completion may end with
    DTYPE = "slpo.dtype"  # dtype the reference ran in, e.g. "float32"
    SCORER = "slpo.scorer"  # e.g. "vllm"
    SCORER_VERSION = "slpo.scorer_version"  # version of the scoring engine
    PACKAGE_VERSION = "slpo.package_version"  # version of this package that wrote the shard
    SOURCE_FILES = "slpo.source_files"  # JSON list of input files, as given
    SPLIT = "slpo.split"
    MAX_LENGTH = "slpo.max_length"  # prompt + completion token limit used when scoring
    OVERLONG = "slpo.overlong"  # how over-long pairs were handled: drop | keep-end | error


REQUIRED_META_KEYS = (
    MetaKey.SCHEMA_VERSION,
    MetaKey.REFERENCE_MODEL,
    MetaKey.REFERENCE_FINGERPRINT,
    MetaKey.TOKENIZER_FINGERPRINT,
    MetaKey.CHAT_TEMPLATE,
    MetaKey.EOS_TOKEN_IDS,
    MetaKey.DTYPE,
    MetaKey.SCORER,
    MetaKey.SCORER_VERSION,
    MetaKey.SOURCE_FILES,
)


@dataclass(frozen=True)
class ShardMetadata:
    """Typed view of a shard's key-value metadata."""

    reference_model: str
    reference_fingerprint: str
    tokenizer_fingerprint: str
    chat_template: str
    eos_token_ids: tuple[int, ...]
    dtype: str
    scorer: str
    scorer_version: str
    source_files: tuple[str, ...]
    split: str = "train"
    max_length: int = 0
    overlong: str = "drop"
    package_version: str = ""
    schema_version: str = SCHEMA_VERSION
    extra: dict[str, str] = field(default_factory=dict)

    def to_kv(self) -> dict[bytes, bytes]:
        """Encode as Parquet key-value metadata (bytes to bytes)."""
        kv = {
            MetaKey.SCHEMA_VERSION: self.schema_version,
            MetaKey.REFERENCE_MODEL: self.reference_model,
            MetaKey.REFERENCE_FINGERPRINT: self.reference_fingerprint,
            MetaKey.TOKENIZER_FINGERPRINT: self.tokenizer_fingerprint,
            MetaKey.CHAT_TEMPLATE: self.chat_template,
            MetaKey.EOS_TOKEN_IDS: json.dumps(list(self.eos_token_ids)),
            MetaKey.DTYPE: self.dtype,
            MetaKey.SCORER: self.scorer,
            MetaKey.SCORER_VERSION: self.scorer_version,
            MetaKey.PACKAGE_VERSION: self.package_version,
            MetaKey.SOURCE_FILES: json.dumps(list(self.source_files)),
            MetaKey.SPLIT: self.split,
            MetaKey.MAX_LENGTH: str(self.max_length),
            MetaKey.OVERLONG: self.overlong,
            **self.extra,
        }
        return {k.encode(): v.encode() for k, v in kv.items()}

    @classmethod
    def from_kv(cls, kv: dict[str, str]) -> ShardMetadata:
        """Decode from string key-value metadata; the caller has checked the required keys."""
        known = {v for k, v in vars(MetaKey).items() if k.isupper()}
        return cls(
            schema_version=kv[MetaKey.SCHEMA_VERSION],
            reference_model=kv[MetaKey.REFERENCE_MODEL],
            reference_fingerprint=kv[MetaKey.REFERENCE_FINGERPRINT],
            tokenizer_fingerprint=kv[MetaKey.TOKENIZER_FINGERPRINT],
            chat_template=kv[MetaKey.CHAT_TEMPLATE],
            eos_token_ids=tuple(int(i) for i in json.loads(kv[MetaKey.EOS_TOKEN_IDS])),
            dtype=kv[MetaKey.DTYPE],
            scorer=kv[MetaKey.SCORER],
            scorer_version=kv[MetaKey.SCORER_VERSION],
            package_version=kv.get(MetaKey.PACKAGE_VERSION, ""),
            source_files=tuple(json.loads(kv[MetaKey.SOURCE_FILES])),
            split=kv.get(MetaKey.SPLIT, "train"),
            max_length=int(kv.get(MetaKey.MAX_LENGTH, "0") or 0),
            overlong=kv.get(MetaKey.OVERLONG, "drop"),
            extra={k: v for k, v in kv.items() if k not in known and k.startswith("slpo.")},
        )
