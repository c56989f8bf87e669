"""The benchmarks' inputs, built locally and cached under `WORK_DIR`: toy models, pairs long
enough to be realistic, and the pipeline's scored shards of them.

The toy pairs (`toy.pairs`) are one short question and one short answer each: about 16 prompt
and 11 completion tokens, so short that per-call overheads would dominate every measurement.
A benchmark pair joins `join` consecutive toy pairs: the prompt asks all their questions, the
chosen completion gives all the right answers, the rejected one all the wrong answers. With the
default `join=6` that is about 95 prompt and 65 completion tokens per sequence.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from bench.common import WORK_DIR, python, run_side, side_env

DEFAULT_JOIN = 6
SIZES = ("tiny", "small")


def model_dir(size: str) -> Path:
    return WORK_DIR / "models" / size


def ensure_model(size: str, *, threads: int) -> Path:
    """The toy model of `size` (seed 0), built once with `python -m toy build`."""
    out = model_dir(size)
    if not (out / "model.safetensors").is_file():
        cmd = [python(), "-m", "toy", "build", str(out), "--size", size, "--seed", "0"]
        run_side(
            cmd,
            label=f"build-{size}",
            env=side_env(threads),
            timeout=900,
            result_file=out / ".none",
        )
    return out


def count_parameters(model: Path) -> dict[str, int]:
    """Parameter counts read from the safetensors header (no torch needed).

    `matmul` excludes the input embedding table: a lookup, not a matrix multiply.
    """
    with open(Path(model) / "model.safetensors", "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    counts = {
        name: math.prod(info["shape"]) for name, info in header.items() if name != "__metadata__"
    }
    total = sum(counts.values())
    embedding = sum(n for name, n in counts.items() if name.endswith("embed_tokens.weight"))
    return {"total": total, "matmul": total - embedding}


def bench_pair(index: int, *, join: int = DEFAULT_JOIN, seed: int = 0) -> dict[str, Any]:
    """Benchmark pair `index`: toy pairs `index * join ... index * join + join - 1` joined."""
    from toy.pairs import make_pair

    parts = [make_pair(index * join + k, seed=seed) for k in range(join)]
    return {
        "id": f"bench-{seed}-{join}-{index:07d}",
        "prompt": " ".join(p["prompt"] for p in parts),
        "chosen": " ".join(p["chosen"] for p in parts),
        "rejected": " ".join(p["rejected"] for p in parts),
    }


def ensure_pairs(n: int, *, join: int = DEFAULT_JOIN, seed: int = 0) -> Path:
    """A JSONL file of `n` benchmark pairs."""
    from toy.pairs import write_jsonl

    path = WORK_DIR / "pairs" / f"pairs-{n}-join{join}-seed{seed}.jsonl"
    if not path.is_file():
        write_jsonl([bench_pair(i, join=join, seed=seed) for i in range(n)], path)
    return path


def ensure_scored(model: Path, pairs: Path, *, threads: int, max_length: int = 511) -> Path:
    """The dataset folder the pipeline writes for `pairs` scored by `model` (split `train`)."""
    out = WORK_DIR / "scored" / f"{model.name}-{pairs.stem}"
    if not (out / "train").is_dir() or not any((out / "train").glob("*.parquet")):
        cmd = [python(), "-m", "pipeline", "score", str(pairs), "--model", str(model)]
        cmd += ["--out", str(out), "--max-length", str(max_length)]
        run_side(
            cmd,
            label=f"score-{out.name}",
            env=side_env(threads),
            timeout=1800,
            result_file=out / ".none",
        )
    return out
