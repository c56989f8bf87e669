"""Shard reader: rows per second and memory while the trainer's reader streams 10 thousand,
100 thousand and 1 million synthetic rows, against the rate the trainer consumes rows.

    python -m bench.reader [--rows 10000,100000,1000000] [--quick]

Shards are written through `schemas.shard_table` and `schemas.write_shard` (the pipeline's own
writer), from vectorised random data with realistic lengths: prompts of 32 to 128 tokens,
completions of 16 to 128, one float32 reference log-prob per completion token. They go to a
temporary folder that is deleted afterwards (1 million rows are about 0.9 GB), in shards of
the pipeline's default size (10,000 rows) unless `--shard-rows` says otherwise.

The reader is the trainer's: `train.data.load_split` (footers) and `train.stream`'s
`rank_micro_batches`, with the trainer's default shuffle buffer and read batch, one rank,
micro-batches of 8 pairs. Each size is read in a fresh process whose peak RSS (the kernel's
high-water mark, and a 20 Hz sample) is its own; "flat" means the 1 million row peak is within
10% of the 10 thousand row peak.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import common

DEFAULT_ROWS = (10_000, 100_000, 1_000_000)
QUICK_ROWS = (1_000, 10_000, 50_000)
TARGET_RATE = 50.0
TARGET_FLAT = 0.10
TOKENIZER_FINGERPRINT = "synthetic-benchmark-shards"


# --- sides (each runs in its own process) -------------------------------------------------


def synthetic_table(rows: int, seed: int):
    """A shard table of `rows` random pairs, built with numpy and `schemas.shard_table`."""
    import numpy as np

    from schemas import ShardMetadata, shard_table

    rng = np.random.default_rng(seed)

    def lists(lengths, values):
        """`values` cut into consecutive lists of `lengths` (views, no copies)."""
        return np.split(values, np.cumsum(lengths)[:-1])

    prompt_len = rng.integers(32, 129, rows)
    chosen_len, rejected_len = rng.integers(16, 129, rows), rng.integers(16, 129, rows)
    prompt_ids = rng.integers(6, 512, int(prompt_len.sum()), dtype=np.int32)
    prompt_ids[np.cumsum(prompt_len) - prompt_len] = 0  # BOS first
    completions = []
    for lengths in (chosen_len, rejected_len):
        ids = rng.integers(6, 512, int(lengths.sum()), dtype=np.int32)
        ids[np.cumsum(lengths) - 1] = 1  # EOS last
        logps = -rng.exponential(2.0, int(lengths.sum())).astype(np.float32)
        completions.append((lists(lengths, ids), lists(lengths, logps)))
    metadata = ShardMetadata(
        reference_model="synthetic",
        reference_fingerprint="synthetic",
        tokenizer_fingerprint=TOKENIZER_FINGERPRINT,
        chat_template="",
        eos_token_ids=(1,),
        dtype="float32",
        scorer="bench.reader",
        scorer_version="0",
        source_files=(),
    )
    return shard_table(
        [f"syn-{seed}-{i:07d}" for i in range(rows)],
        lists(prompt_len, prompt_ids),
        completions[0][0],
        completions[1][0],
        completions[0][1],
        completions[1][1],
        metadata,
    )


def side_write(args: argparse.Namespace) -> dict[str, Any]:
    """Write `args.rows` rows as shards of up to `args.shard_rows` into `args.data/train`."""
    from schemas import write_shard

    started = time.perf_counter()
    split = args.data / "train"
    total, done, index = int(args.rows), 0, 0
    while done < total:
        rows = min(args.shard_rows, total - done)
        write_shard(synthetic_table(rows, seed=index), split / f"part-{index:05d}.parquet")
        done, index = done + rows, index + 1
    size = sum(p.stat().st_size for p in split.glob("*.parquet"))
    return {"rows": done, "shards": index, "bytes": size, "seconds": time.perf_counter() - started}


class RssSampler(threading.Thread):
    """This process's RSS, sampled every `interval` seconds; keeps the peak."""

    def __init__(self, interval: float = 0.05):
        super().__init__(daemon=True)
        import psutil

        self.process, self.interval, self.peak = psutil.Process(), interval, 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._done.wait(self.interval)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak / common.MIB


def side_read(args: argparse.Namespace) -> dict[str, Any]:
    """Stream one epoch of `args.data/train` through the trainer's reader."""
    import psutil

    from train.config import TrainConfig
    from train.data import load_split
    from train.stream import EpochPlan, rank_micro_batches

    defaults = TrainConfig.__dataclass_fields__
    buffer_size = defaults["shuffle_buffer"].default
    read_batch_rows = defaults["read_batch_rows"].default
    baseline = psutil.Process().memory_info().rss / common.MIB
    sampler = RssSampler()
    sampler.start()
    started = time.perf_counter()
    split = load_split(args.data, "train", tokenizer_fingerprint=TOKENIZER_FINGERPRINT)
    plan = EpochPlan(split.num_rows, args.micro_batch_size, 1, 1).check("train")
    rows = tokens = 0
    for micro_batch in rank_micro_batches(
        split,
        plan,
        rank=0,
        seed=0,
        epoch=0,
        start_step=0,
        buffer_size=buffer_size,
        read_batch_rows=read_batch_rows,
    ):
        rows += len(micro_batch)
        tokens += sum(len(p.chosen_ids) + len(p.rejected_ids) for p in micro_batch)
    seconds = time.perf_counter() - started
    return {
        "rows": rows,
        "completion_tokens": tokens,
        "seconds": seconds,
        "rows_per_second": rows / seconds,
        "sampled_peak_rss_mib": sampler.stop(),
        "rss_after_imports_mib": baseline,
        "shuffle_buffer": buffer_size,
        "read_batch_rows": read_batch_rows,
        "micro_batch_size": args.micro_batch_size,
    }


SIDES = {"write": side_write, "read": side_read}


# --- the comparison -------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.reader", description=__doc__.split("\n")[0])
    p.add_argument("--rows", help="dataset sizes, comma-separated (default 10000,100000,1000000)")
    p.add_argument("--quick", action="store_true", help="1k, 10k, 50k rows: a smoke run")
    p.add_argument("--micro-batch-size", type=int, default=8, help="pairs per micro-batch (8)")
    p.add_argument(
        "--trainer-rows-per-second",
        type=float,
        help="the trainer's consumption (default: from the newest training record)",
    )
    p.add_argument("--shard-rows", type=int, help="rows per shard (default: the pipeline's)")
    p.add_argument("--tmp-dir", type=Path, default=common.WORK_DIR, help="where shards go")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="OMP threads per side")
    # One side, run by the comparison in its own process.
    p.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = QUICK_ROWS if args.quick else DEFAULT_ROWS
    args.sizes = [int(x) for x in args.rows.split(",")] if args.rows else list(sizes)
    if args.shard_rows is None and args.side is None:
        from pipeline.job import DEFAULT_ROWS_PER_SHARD

        args.shard_rows = DEFAULT_ROWS_PER_SHARD
    return args


def trainer_rate(given: float | None) -> tuple[float | None, str]:
    """The trainer's pairs per second: given, or the fastest of the newest full training run."""
    if given:
        return given, "given on the command line"
    record = common.latest_record("training", quick=False)
    if record is None:
        return None, "no training record: run `python -m bench.training` first"
    best = max(record["results"], key=lambda r: r["rows_per_second"] or 0)
    source = (
        f"bench.training {record['date']}: {best['size']} model, "
        f"{record['micro_batch_size']} pairs per step"
    )
    return best["rows_per_second"], source


def run_size(rows: int, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    data = root / f"rows-{rows}"
    env = common.side_env(args.threads)
    base = [common.python(), "-m", "bench.reader", "--data", data]
    try:
        write = common.run_side(
            [*base, "--side", "write", "--rows", rows, "--shard-rows", args.shard_rows],
            label=f"reader-write-{rows}",
            env=env,
            timeout=3600,
        ).result
        read = common.run_side(
            [*base, "--side", "read", "--micro-batch-size", args.micro_batch_size],
            label=f"reader-read-{rows}",
            env=env,
            timeout=3600,
        )
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return {
        "rows": rows,
        "write": write,
        "read": {**read.result, "tree_peak_rss_mib": read.peak_rss_mib},
    }


def report(results: list[dict[str, Any]], rate: float | None, source: str) -> tuple[str, dict]:
    rows = [
        [
            r["rows"],
            r["write"]["shards"],
            r["write"]["bytes"] / common.MIB,
            r["write"]["seconds"],
            r["read"]["rows_per_second"],
            r["read"]["self_peak_rss_mib"],
            r["read"]["rss_after_imports_mib"],
            common.ratio(r["read"]["rows_per_second"], rate),
        ]
        for r in results
    ]
    first, last = results[0]["read"], results[-1]["read"]
    growth = last["self_peak_rss_mib"] / first["self_peak_rss_mib"] - 1
    slowest = min(r["read"]["rows_per_second"] for r in results)
    summary = {
        "rss_growth": growth,
        "slowest_rows_per_second": slowest,
        "rate_ratio": common.ratio(slowest, rate),
    }
    text = "\n\n".join(
        [
            common.markdown_table(
                [
                    "rows",
                    "shards",
                    "MiB on disk",
                    "write s",
                    "read rows/s",
                    "peak RSS MiB",
                    "RSS after imports MiB",
                    "vs trainer consumption",
                ],
                rows,
            ),
            f"trainer consumption: {rate if rate else 'n/a'} pairs/s ({source})",
            common.markdown_table(
                [
                    "slowest read rows/s / trainer",
                    "target",
                    "peak RSS growth, smallest to largest",
                    "target",
                ],
                [
                    [
                        summary["rate_ratio"],
                        common.verdict(summary["rate_ratio"], TARGET_RATE, at_least=True),
                        f"{100 * growth:+.1f}%",
                        common.verdict(abs(growth), TARGET_FLAT, at_least=False),
                    ]
                ],
            ),
        ]
    )
    return text, summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.side:
        common.write_result(args.result, SIDES[args.side](args))
        return 0

    needed = 1.2 * 1024 * max(args.sizes) + 2**30  # ~0.9 KiB per row on disk, with margin
    args.tmp_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.tmp_dir).free
    if free < needed:
        print(
            f"error: {args.tmp_dir} has {free / 2**30:.1f} GiB free, the shards need about "
            f"{needed / 2**30:.1f} GiB; pass --tmp-dir on a larger disk or fewer --rows",
            file=sys.stderr,
        )
        return 1
    load_before = common.load_average()
    rate, source = trainer_rate(args.trainer_rows_per_second)
    root = Path(tempfile.mkdtemp(prefix="reader-", dir=args.tmp_dir))
    try:
        results = [run_size(rows, root, args) for rows in args.sizes]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text, summary = report(results, rate, source)
    record = common.base_record("reader", argv, load_before)
    record.update(
        quick=args.quick,
        threads=args.threads,
        shard_rows=args.shard_rows,
        trainer_rows_per_second=rate,
        trainer_rate_source=source,
        results=results,
        **summary,
    )
    path = common.append_record("reader", record)
    print("\n" + text)
    print(f"\nload average before {load_before}, after {record['load_after']}; record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
