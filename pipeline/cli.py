"""`python -m pipeline score|finalize|inspect`: the command line over `pipeline.api`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from pipeline.encode import OVERLONG_MODES
from pipeline.job import (
    DEFAULT_BATCH_PAIRS,
    DEFAULT_ROWS_PER_SHARD,
    ON_BAD_ROW_MODES,
    IncompleteDatasetError,
    JobMismatchError,
    WorkerBusyError,
)
from pipeline.scorer import DTYPES
from schemas import ContractError

EXPECTED_ERRORS = (
    ContractError,
    JobMismatchError,
    WorkerBusyError,
    IncompleteDatasetError,
    FileNotFoundError,
    ValueError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Score reference log-probs of preference pairs with vLLM into Parquet shards.",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)

    score = commands.add_parser("score", help="score input rows into DIR/<split>/")
    score.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="JSONL/Parquet files, folders, globs"
    )
    score.add_argument("--model", required=True, help="reference model folder (or hub name)")
    score.add_argument("--out", required=True, help="dataset folder")
    score.add_argument("--split", default="train", help="split name (default train)")
    score.add_argument(
        "--max-length", type=int, help="token limit of prompt + completion (default: the model's)"
    )
    score.add_argument("--overlong", choices=OVERLONG_MODES, default="drop")
    score.add_argument("--dtype", choices=DTYPES, default="auto")
    score.add_argument("--rows-per-shard", type=int, default=DEFAULT_ROWS_PER_SHARD)
    score.add_argument("--num-workers", type=int, default=1, help="workers of the job array")
    score.add_argument(
        "--worker-index",
        type=int,
        help="this worker, 0..N-1 (default: $SLURM_ARRAY_TASK_ID, else 0 for a single worker)",
    )
    score.add_argument("--on-bad-row", choices=ON_BAD_ROW_MODES, default="error")
    score.add_argument(
        "--batch-pairs", type=int, default=DEFAULT_BATCH_PAIRS, help="pairs per engine call"
    )
    score.add_argument("--kv-cache-gib", type=float, help="vLLM KV cache on CPU (default 2)")
    score.add_argument("--no-progress", action="store_true", help="no progress bar")
    score.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run Python code shipped in the model folder (off by default)",
    )

    finalize = commands.add_parser(
        "finalize", help="check a finished job array, write the manifest"
    )
    finalize.add_argument("dir", help="dataset folder")

    inspect = commands.add_parser("inspect", help="provenance, counts, validation, statistics")
    inspect.add_argument("dir", help="dataset folder, split folder or shard")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.add_argument("--no-validate", action="store_true", help="skip the validator")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from pipeline import api

    try:
        if args.command == "score":
            result = api.score(
                args.inputs,
                model=args.model,
                out=args.out,
                split=args.split,
                max_length=args.max_length,
                overlong=args.overlong,
                dtype=args.dtype,
                rows_per_shard=args.rows_per_shard,
                num_workers=args.num_workers,
                worker_index=_worker_index(args),
                on_bad_row=args.on_bad_row,
                batch_pairs=args.batch_pairs,
                kv_cache_gib=args.kv_cache_gib,
                progress=not args.no_progress,
                trust_remote_code=args.trust_remote_code,
                command=["python", "-m", "pipeline", *argv],
            )
            busy = max(result.scoring_seconds, 1e-9)
            print(
                f"split {result.split}, worker {result.worker_index}/{result.num_workers}: "
                f"{result.shards_written} shards written, {result.shards_skipped} already done; "
                f"{result.pairs_scored} pairs, {result.scored_tokens} tokens scored in "
                f"{result.scoring_seconds:.1f} s ({result.pairs_scored / busy:.1f} pairs/s, "
                f"{result.scored_tokens / busy:.0f} tokens/s); wall time {result.seconds:.1f} s"
            )
            if result.manifest:
                print(f"manifest: {result.manifest}")
        elif args.command == "finalize":
            print(f"manifest: {api.finalize(args.dir)}")
        else:
            from pipeline.inspect import format_report

            report = api.inspect(args.dir, validate=not args.no_validate)
            print(json.dumps(report, indent=2) if args.json else format_report(report))
            if report and any(
                s["validation"] not in ("ok", "not checked") for s in report["splits"].values()
            ):
                return 1
    except EXPECTED_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _worker_index(args: argparse.Namespace) -> int:
    if args.worker_index is not None:
        return args.worker_index
    if args.num_workers > 1:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        if task is None:
            raise SystemExit(
                "error: --num-workers > 1 needs --worker-index (or $SLURM_ARRAY_TASK_ID)"
            )
        return int(task)
    return 0
