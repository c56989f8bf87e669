"""Scoring: the pipeline's vLLM scorer against a plain batched transformers forward.

    python -m bench.scoring [--sizes tiny,small] [--quick]

Both sides score the same pairs, encoded by the pipeline's own `PairEncoder` (so the token ids
are identical), with the same float32 model. The transformers side is how TRL precomputes
reference log-probs: batches of `[chosen; rejected]` right-padded sequences, one forward each,
log-softmax gathered at the completion tokens. Each side runs in its own process; its start-up
(vLLM engine start, or the model load) is timed apart from its warm throughput, which is
measured after one warm-up batch.

The transformers forward also runs on one thread, a per-core reference: vLLM's own CPU
default binds its model worker to all cores but one (kept for its scheduler), which on 2 cores
is one core; the pipeline binds the worker to every core (`pipeline.scorer.cpu_engine_env`).

The achieved FLOP rate is 2 x matmul parameters x processed tokens per second (prompt once per
completion, plus both completions; attention's own FLOPs are left out), against the peak of a
float32 `torch.matmul` of square matrices measured here with the same thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import common, workload

DEFAULT_PAIRS = {"tiny": 512, "small": 128}
QUICK_PAIRS = {"tiny": 64, "small": 16}
HF_BATCH_PAIRS = 8
TARGET = 3.0


# --- sides (each runs in its own process) -------------------------------------------------


def encoded_pairs(pairs_file: Path, model: Path, n: int, max_length: int):
    """The first `n` pairs of `pairs_file`, encoded exactly as the pipeline encodes them."""
    from transformers import AutoTokenizer

    from pipeline.encode import PairEncoder
    from pipeline.inputs import Row

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = []
    with open(pairs_file, encoding="utf-8") as f:
        for line in f:
            data = json.loads(line)
            rows.append(Row(data["id"], data["prompt"], data["chosen"], data["rejected"], False))
            if len(rows) == n:
                break
    encoder = PairEncoder(tokenizer, eos_token_ids=[tokenizer.eos_token_id], max_length=max_length)
    return [p for p in encoder.encode(rows) if not isinstance(p, Exception)]


def token_counts(pairs) -> dict[str, int]:
    return {
        "pairs": len(pairs),
        "completion_tokens": sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs),
        "processed_tokens": sum(p.num_scored_tokens for p in pairs),
    }


def side_matmul(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    best: dict[str, float] = {}
    for n in (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):
            torch.matmul(a, b)
        reps = max(2, int(4e9 / (2 * n**3)))
        rates = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(reps):
                torch.matmul(a, b)
            rates.append(2 * n**3 * reps / (time.perf_counter() - started) / 1e9)
        best[str(n)] = max(rates)
    return {
        "gflops_by_size": best,
        "peak_gflops": max(best.values()),
        "threads": torch.get_num_threads(),
    }


def side_hf(args: argparse.Namespace) -> dict[str, Any]:
    """Batched float32 transformers forward, `[chosen; rejected]` per batch, right-padded."""
    import torch
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    startup = time.perf_counter() - started
    pairs = encoded_pairs(args.pairs_file, args.model, args.n, args.max_length)
    pad_id = model.config.pad_token_id or 0

    def score(batch) -> tuple[list[float], int]:
        """Sequence log-prob sums in pair order (chosen, rejected, chosen, ...); padded size."""
        prompts = [p.prompt_ids for p in batch] * 2
        completions = [p.chosen_ids for p in batch] + [p.rejected_ids for p in batch]
        length = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
        ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)  # [2B, S]
        mask = torch.zeros_like(ids)
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            ids[i, : len(p) + len(c)] = torch.from_numpy(np.concatenate([p, c]).astype(np.int64))
            mask[i, : len(p) + len(c)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            logps = torch.log_softmax(logits.float(), dim=-1)  # [2B, S, V]
            sums = []
            for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
                # Position len(p) - 1 + j predicts completion token j.
                positions = torch.arange(len(p) - 1, len(p) - 1 + len(c))
                picked = logps[i, positions, torch.from_numpy(c.astype(np.int64))]
                sums.append(float(picked.double().sum()))
        half = len(batch)
        return [x for pair in zip(sums[:half], sums[half:], strict=True) for x in pair], ids.numel()

    b = args.batch_pairs
    score(pairs[:b])  # warm-up
    started = time.perf_counter()
    sums, padded = [], 0
    for start in range(0, len(pairs), b):
        batch_sums, batch_padded = score(pairs[start : start + b])
        sums += batch_sums
        padded += batch_padded
    seconds = time.perf_counter() - started
    return {
        **token_counts(pairs),
        "seconds": seconds,
        "startup_seconds": startup,
        "padded_tokens": padded,
        "batch_pairs": b,
        "threads": torch.get_num_threads(),
        "sums": sums,
    }


def side_vllm(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline's `VllmScorer`, called with the pipeline's batch of pairs."""
    from pipeline.scorer import VllmScorer

    pairs = encoded_pairs(args.pairs_file, args.model, args.n, args.max_length)
    started = time.perf_counter()
    scorer = VllmScorer(args.model, dtype="float32", max_model_len=args.max_length + 1)
    startup = time.perf_counter() - started
    try:
        scorer.score(pairs[: args.batch_pairs])  # warm-up
        started = time.perf_counter()
        sums = []
        for start in range(0, len(pairs), args.batch_pairs):
            for chosen, rejected in scorer.score(pairs[start : start + args.batch_pairs]):
                sums += [
                    float(chosen.astype("float64").sum()),
                    float(rejected.astype("float64").sum()),
                ]
        seconds = time.perf_counter() - started
    finally:
        scorer.close()
    return {
        **token_counts(pairs),
        "seconds": seconds,
        "startup_seconds": startup,
        "batch_pairs": args.batch_pairs,
        "vllm_version": scorer.version,
        "sums": sums,
    }


SIDES = {"matmul": side_matmul, "hf": side_hf, "vllm": side_vllm}


# --- the comparison -------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scoring", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="tiny,small", help="toy model sizes (default tiny,small)")
    p.add_argument("--pairs", type=int, help="pairs per size (default 512 tiny, 128 small)")
    p.add_argument("--quick", action="store_true", help="few pairs: a smoke run, not a measure")
    p.add_argument("--join", type=int, default=workload.DEFAULT_JOIN, help="toy pairs per pair")
    p.add_argument("--hf-batch-pairs", type=int, default=HF_BATCH_PAIRS)
    p.add_argument("--vllm-batch-pairs", type=int, default=256, help="the pipeline's default")
    p.add_argument("--max-length", type=int, default=511, help="the toy models' context - 1")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="OMP threads per side")
    # One side, run by the comparison in its own process.
    p.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--pairs-file", type=Path, dest="pairs_file", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--batch-pairs", type=int, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_size(size: str, n: int, args: argparse.Namespace, peak_gflops: float) -> dict[str, Any]:
    """Both sides on one model size; their results and the derived rates."""
    model = workload.ensure_model(size, threads=args.threads)
    pairs_file = workload.ensure_pairs(n, join=args.join)
    params = workload.count_parameters(model)
    common_args = ["--model", model, "--pairs-file", pairs_file, "--n", n]
    common_args += ["--max-length", args.max_length]
    sides = {}
    runs = (
        ("vllm", "vllm", args.vllm_batch_pairs, args.threads),
        ("hf", "hf", args.hf_batch_pairs, args.threads),
        ("hf_1t", "hf", args.hf_batch_pairs, 1),
    )
    for key, side, batch, threads in runs:
        cmd = [common.python(), "-m", "bench.scoring", "--side", side, *common_args]
        run = common.run_side(
            [*cmd, "--batch-pairs", batch],
            label=f"scoring-{size}-{key}",
            env=common.side_env(threads),
            timeout=3600,
        )
        result = run.result
        sums = result.pop("sums")
        result.update(
            completion_tokens_per_second=result["completion_tokens"] / result["seconds"],
            processed_tokens_per_second=result["processed_tokens"] / result["seconds"],
            process_wall_seconds=run.wall_seconds,
            peak_rss_mib=run.peak_rss_mib,
            peak_pss_mib=run.peak_pss_mib,
        )
        gflops = 2 * params["matmul"] * result["processed_tokens_per_second"] / 1e9
        result.update(gflops=gflops, fraction_of_peak=gflops / peak_gflops)
        sides[key] = (result, sums)

    (vllm, vllm_sums), (hf, hf_sums) = sides["vllm"], sides["hf"]
    hf_1t = sides["hf_1t"][0]
    diffs = [abs(a - b) for a, b in zip(vllm_sums, hf_sums, strict=True)]
    speedup = vllm["completion_tokens_per_second"] / hf["completion_tokens_per_second"]
    per_core = vllm["completion_tokens_per_second"] / hf_1t["completion_tokens_per_second"]
    # Pairs after which vLLM's longer start-up is paid back by its faster scoring.
    per_pair_saved = hf["seconds"] / hf["pairs"] - vllm["seconds"] / vllm["pairs"]
    extra_startup = vllm["startup_seconds"] - hf["startup_seconds"]
    return {
        "size": size,
        "parameters": params,
        "vllm": vllm,
        "hf": hf,
        "hf_1t": hf_1t,
        "speedup": speedup,
        "speedup_vs_one_thread": per_core,
        "break_even_pairs": extra_startup / per_pair_saved if per_pair_saved > 0 else None,
        "max_abs_sum_diff": max(diffs),
        "mean_abs_token_diff": sum(diffs) / vllm["completion_tokens"],
    }


def report(results: list[dict[str, Any]], peak: dict[str, Any]) -> str:
    rows = []
    for r in results:
        for side, name in (
            ("vllm", "pipeline (vLLM)"),
            ("hf", "transformers forward"),
            ("hf_1t", "transformers forward, 1 thread"),
        ):
            s = r[side]
            rows.append(
                [
                    f"{r['size']} ({r['parameters']['total'] / 1e6:.1f}M)",
                    name,
                    s["pairs"],
                    s["completion_tokens_per_second"],
                    s["processed_tokens_per_second"],
                    s["gflops"],
                    f"{100 * s['fraction_of_peak']:.1f}%",
                    s["startup_seconds"],
                    s["process_wall_seconds"],
                    s["peak_rss_mib"],
                ]
            )
    header = [
        "model",
        "side",
        "pairs",
        "completion tok/s",
        "processed tok/s",
        "GFLOP/s",
        "of matmul peak",
        "start-up s",
        "process wall s",
        "peak RSS MiB",
    ]
    summary = [
        [
            r["size"],
            r["speedup"],
            common.verdict(r["speedup"], TARGET, at_least=True),
            r["speedup_vs_one_thread"],
            r["break_even_pairs"],
            r["max_abs_sum_diff"],
        ]
        for r in results
    ]
    return "\n\n".join(
        [
            f"float32 matmul peak: {peak['peak_gflops']:.1f} GFLOP/s "
            f"({peak['threads']} threads; by size {peak['gflops_by_size']})",
            common.markdown_table(header, rows),
            common.markdown_table(
                [
                    "model",
                    "vLLM / transformers (completion tok/s)",
                    "target",
                    "vLLM / transformers on 1 thread",
                    "break-even pairs (start-up paid back)",
                    "max |sum diff| nats",
                ],
                summary,
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.side:
        common.write_result(args.result, SIDES[args.side](args))
        return 0

    load_before = common.load_average()
    env = common.side_env(args.threads)
    peak = common.run_side(
        [common.python(), "-m", "bench.scoring", "--side", "matmul"],
        label="scoring-matmul",
        env=env,
        timeout=600,
    ).result
    counts = QUICK_PAIRS if args.quick else DEFAULT_PAIRS
    results = [
        run_size(size, args.pairs or counts[size], args, peak["peak_gflops"])
        for size in args.sizes.split(",")
    ]
    record = common.base_record("scoring", argv, load_before)
    record.update(quick=args.quick, threads=args.threads, join=args.join, matmul=peak)
    record["results"] = results
    path = common.append_record("scoring", record)
    print("\n" + report(results, peak))
    print(f"\nload average before {load_before}, after {record['load_after']}; record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
