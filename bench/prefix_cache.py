"""Can vLLM's prefix caching serve prompt log-probs? Scores the same pairs three ways.

    python -m bench.prefix_cache [--pairs 400] [--shared-prompt-tokens 96]

Chosen and rejected completions share their prompt, so a prefix cache could skip half the
prompt work. Each pair's prompt is padded with a long shared system text so that cache hits
reach past block boundaries. The three engines:

- `off`: prefix caching off (what the pipeline runs);
- `on`: prefix caching on, vLLM's defaults (requests asking for prompt log-probs skip reading
  the cache);
- `on, forced read`: prefix caching on and `skip_reading_prefix_cache=False`.

Each is compared with `off`, position by position: the largest difference and the count of
positions that differ. Prefix caching may be used only where nothing differs and it is faster.
Appends a record to `bench/results/prefix_cache.jsonl`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import common
from toy.factory import build_model
from toy.pairs import make_pairs

SHARED = (
    "You are a careful assistant. Read the question, think about each number and each word, "
    "and answer in one short sentence that states the result plainly. "
)


def sequences(model_dir: Path, pairs: int, shared_tokens: int) -> list[tuple[list[int], int]]:
    """(token ids, completion start) of each chosen and rejected completion."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    shared = tokenizer(SHARED * 20, add_special_tokens=False)["input_ids"][:shared_tokens]
    out = []
    for row in make_pairs(pairs, seed=0):
        prompt = [tokenizer.bos_token_id, *shared]
        prompt += tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        for name in ("chosen", "rejected"):
            completion = tokenizer(row[name], add_special_tokens=False)["input_ids"]
            out.append(([*prompt, *completion, tokenizer.eos_token_id], len(prompt)))
    return out


def score(model_dir: Path, seqs, *, caching: bool, skip_read: bool) -> tuple[list, float]:
    """Per-token completion log-probs of each sequence, and the seconds `generate` took."""
    import vllm
    from vllm.inputs import TokensPrompt

    llm = vllm.LLM(
        model=str(model_dir),
        dtype="float32",
        enforce_eager=True,
        logprobs_mode="raw_logprobs",
        enable_prefix_caching=caching,
        kv_cache_memory_bytes=1 << 30,
        seed=0,
    )
    params = vllm.SamplingParams(
        max_tokens=1,
        prompt_logprobs=0,
        detokenize=False,
        flat_logprobs=True,
        skip_reading_prefix_cache=skip_read,
    )
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids, _ in seqs]
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    logps = [
        np.asarray(o.prompt_logprobs.logprobs[start - 1 :], dtype=np.float64)
        for o, (_, start) in zip(outputs, seqs, strict=True)
    ]
    llm.llm_engine.engine_core.shutdown()
    return logps, seconds


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench.prefix_cache", description=__doc__)
    p.add_argument("--pairs", type=int, default=400)
    p.add_argument("--shared-prompt-tokens", type=int, default=96)
    args = p.parse_args(argv)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    load_before = common.load_average()
    with tempfile.TemporaryDirectory(prefix="slpo-prefix-") as tmp:
        model_dir = build_model(Path(tmp) / "model", size="tiny", seed=0)
        seqs = sequences(model_dir, args.pairs, args.shared_prompt_tokens)
        modes = {
            "off": dict(caching=False, skip_read=True),
            "on": dict(caching=True, skip_read=True),
            "on, forced read": dict(caching=True, skip_read=False),
        }
        results = {name: score(model_dir, seqs, **kw) for name, kw in modes.items()}

    base, base_seconds = results["off"]
    rows, record_modes = [], {}
    for name, (logps, seconds) in results.items():
        diffs = np.concatenate([np.abs(a - b) for a, b in zip(logps, base, strict=True)])
        positive = int(sum((a > 0).sum() for a in logps))
        entry = {
            "seconds": seconds,
            "speedup_vs_off": base_seconds / seconds,
            "max_abs_diff_vs_off": float(diffs.max()),
            "positions_differing": int((diffs > 0).sum()),
            "positions": int(diffs.size),
            "positive_logps": positive,
        }
        record_modes[name] = entry
        rows.append(
            [
                name,
                f"{seconds:.2f}",
                f"{entry['speedup_vs_off']:.2f}",
                f"{entry['max_abs_diff_vs_off']:.3g}",
                f"{entry['positions_differing']:,} of {entry['positions']:,}",
                positive,
            ]
        )
    record = {
        **common.base_record("prefix_cache", argv, load_before),
        "pairs": args.pairs,
        "shared_prompt_tokens": args.shared_prompt_tokens,
        "modes": record_modes,
    }
    common.append_record("prefix_cache", record)
    header = ["prefix caching", "seconds", "speed-up", "max diff vs off", "differing", "logp > 0"]
    print(common.markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
