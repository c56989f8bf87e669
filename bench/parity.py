"""The pipeline on N pairs: pairs/s of the real CLI, and parity with a transformers forward.

    python -m bench.parity [--pairs 2000] [--size tiny] [--dtype float32]

Builds a toy model, writes N toy pairs as JSONL, runs `python -m pipeline score` on them as a
user would (its own process, engine start-up included), then recomputes every stored per-token
log-prob with an eager float32 transformers forward of the same token ids and reports the
largest and mean absolute difference. Appends a record to `bench/results/parity.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from bench import common
from schemas import REFERENCE_PARITY_ATOL
from toy.factory import build_model
from toy.pairs import make_pairs, write_jsonl


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.parity", description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=2000, help="pairs to score (default 2000)")
    p.add_argument("--size", default="tiny", help="toy model preset (default tiny)")
    p.add_argument("--dtype", default="float32", help="scoring dtype (default float32)")
    p.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    return p.parse_args(argv)


def token_differences(dataset: Path, model_dir: Path, batch: int = 32) -> np.ndarray:
    """|stored - recomputed| for every completion token of every split, float32 forward."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    sequences = []  # (prompt ids, completion ids, stored log-probs)
    for path in sorted(dataset.glob("*/*.parquet")):
        for row in pq.read_table(path).to_pylist():
            for name in ("chosen", "rejected"):
                stored = row[f"ref_{name}_logps"]
                sequences.append((row["prompt_ids"], row[f"{name}_ids"], stored))
    sequences.sort(key=lambda s: len(s[0]) + len(s[1]))
    diffs = []
    with torch.inference_mode():
        for i in range(0, len(sequences), batch):
            chunk = sequences[i : i + batch]
            width = max(len(p) + len(c) for p, c, _ in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)  # right-padded [b, S]
            attention = torch.zeros_like(ids)
            for j, (p, c, _) in enumerate(chunk):
                ids[j, : len(p) + len(c)] = torch.tensor(p + c)
                attention[j, : len(p) + len(c)] = 1
            logps = torch.log_softmax(model(input_ids=ids, attention_mask=attention).logits, -1)
            for j, (p, c, stored) in enumerate(chunk):
                positions = torch.arange(len(p) - 1, len(p) + len(c) - 1)
                recomputed = logps[j, positions, torch.tensor(c)].numpy()
                diffs.append(np.abs(np.asarray(stored, dtype=np.float32) - recomputed))
    return np.concatenate(diffs)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    load_before = common.load_average()
    with tempfile.TemporaryDirectory(prefix="slpo-parity-") as tmp:
        work = args.work or Path(tmp)
        model_dir = build_model(work / "model", size=args.size, seed=0)
        inputs = write_jsonl(make_pairs(args.pairs, seed=0), work / "pairs.jsonl")
        out = work / "scored"
        command = [sys.executable, "-m", "pipeline", "score", str(inputs)]
        command += ["--model", str(model_dir), "--out", str(out), "--dtype", args.dtype]
        started = time.perf_counter()
        subprocess.run(command, check=True)
        wall = time.perf_counter() - started
        manifest = json.loads((out / "manifest.json").read_text())
        train = manifest["splits"]["train"]
        tokens = train["tokens"]["chosen"] + train["tokens"]["rejected"]
        diffs = token_differences(out, model_dir)

    record = {
        **common.base_record("parity", argv, load_before),
        "size": args.size,
        "dtype": args.dtype,
        "pairs": train["rows"],
        "completion_tokens": tokens,
        "wall_seconds": wall,
        "scoring_seconds": train["scoring_time_s"],
        "pairs_per_second_wall": train["rows"] / wall,
        "pairs_per_second_scoring": train["rows"] / train["scoring_time_s"],
        "tokens_compared": int(diffs.size),
        "max_abs_diff": float(diffs.max()),
        "mean_abs_diff": float(diffs.mean()),
        "p99_abs_diff": float(np.quantile(diffs, 0.99)),
        "tolerance": REFERENCE_PARITY_ATOL,
    }
    common.append_record("parity", record)
    rows = [
        ["pairs", f"{record['pairs']:,}"],
        ["completion tokens", f"{tokens:,}"],
        ["wall time, engine start-up included", f"{wall:.1f} s"],
        ["pairs/s, wall", f"{record['pairs_per_second_wall']:.1f}"],
        ["pairs/s, inside the engine", f"{record['pairs_per_second_scoring']:.1f}"],
        ["tokens compared", f"{diffs.size:,}"],
        ["max abs(stored - transformers)", f"{record['max_abs_diff']:.3g} nats"],
        ["mean abs(stored - transformers)", f"{record['mean_abs_diff']:.3g} nats"],
        ["p99 abs(stored - transformers)", f"{record['p99_abs_diff']:.3g} nats"],
    ]
    print(common.markdown_table(["measure", f"{args.size} model, {args.dtype}"], rows))
    return 0 if record["max_abs_diff"] <= REFERENCE_PARITY_ATOL else 1


if __name__ == "__main__":
    sys.exit(main())
