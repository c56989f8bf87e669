"""A vLLM engine on the tiny model, and a scored dataset built by the real pipeline.

Both are per session: starting vLLM takes about a minute on 2 cores, so every test that scores
shares `vllm_scorer`.
"""

from __future__ import annotations

import pytest

from toy.pairs import make_pairs, write_jsonl

SCORED_TRAIN_PAIRS = 48
SCORED_EVAL_PAIRS = 16


@pytest.fixture(scope="session")
def vllm_scorer(tiny_model_dir):
    """A started `VllmScorer` (float32, default max_model_len) on `tiny_model_dir`."""
    from pipeline.scorer import VllmScorer

    scorer = VllmScorer(tiny_model_dir, dtype="float32", kv_cache_gib=0.5)
    yield scorer
    scorer.close()


@pytest.fixture(scope="session")
def scored_dataset(tmp_path_factory, tiny_model_dir, vllm_scorer):
    """A finalized dataset folder scored from `tiny_model_dir` by the real pipeline.

    Split `train`: 48 standard (string) pairs in 3 shards of 16. Split `eval`: 16
    conversational pairs (chat template) in 1 shard. No row is dropped or rejected.
    """
    from pipeline import score

    root = tmp_path_factory.mktemp("scored")
    train = write_jsonl(make_pairs(SCORED_TRAIN_PAIRS, seed=0), root / "inputs" / "train.jsonl")
    eval_rows = make_pairs(SCORED_EVAL_PAIRS, seed=1, conversational=True)
    eval_ = write_jsonl(eval_rows, root / "inputs" / "eval.jsonl")
    out = root / "dataset"
    for split, path in (("train", train), ("eval", eval_)):
        score(
            path,
            model=tiny_model_dir,
            out=out,
            split=split,
            rows_per_shard=16,
            scorer=vllm_scorer,
            progress=False,
        )
    return out
