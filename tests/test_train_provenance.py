"""What the trainer refuses before training, and what it only warns about."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from transformers import AutoTokenizer

from schemas import (
    SchemaVersionError,
    TokenizerMismatchError,
    read_shard_metadata,
    tokenizer_fingerprint,
    weights_fingerprint,
)
from tests.fixtures_training import derive_dataset, split_rows, with_metadata, write_split
from toy.factory import build_model
from train.api import _preflight
from train.config import TrainConfig
from train.data import ProvenanceError, load_split, policy_is_reference, validate_rows


@pytest.fixture(scope="module")
def fingerprint(tiny_model_dir):
    return tokenizer_fingerprint(AutoTokenizer.from_pretrained(tiny_model_dir))


def test_the_scored_dataset_is_accepted(scored_dataset, fingerprint, tiny_model_dir):
    split = load_split(scored_dataset, "train", tokenizer_fingerprint=fingerprint)
    assert split.num_rows == len(split_rows(scored_dataset / "train"))
    assert policy_is_reference(split, weights_fingerprint(tiny_model_dir))
    assert validate_rows(split, rank=0, world_size=1) is None


def test_unknown_schema_version_is_refused_naming_file_and_versions(
    scored_dataset, fingerprint, tmp_path
):
    data = derive_dataset(scored_dataset, tmp_path, change=with_metadata(schema_version="999"))
    with pytest.raises(SchemaVersionError) as info:
        load_split(data, "train", tokenizer_fingerprint=fingerprint)
    message = str(info.value)
    first = sorted((data / "train").glob("*.parquet"))[0]
    assert str(first) in message and "'999'" in message and "['1']" in message


def test_other_tokenizer_is_refused_naming_file_and_both_fingerprints(
    scored_dataset, fingerprint, tmp_path
):
    other = "sha256:" + "0" * 64
    data = derive_dataset(
        scored_dataset, tmp_path, change=with_metadata(tokenizer_fingerprint=other)
    )
    with pytest.raises(TokenizerMismatchError) as info:
        load_split(data, "eval", tokenizer_fingerprint=fingerprint)
    message = str(info.value)
    assert str(sorted((data / "eval").glob("*.parquet"))[0]) in message
    assert other in message and fingerprint in message


def test_policy_with_other_weights_is_allowed_with_a_warning(
    scored_dataset, fingerprint, tmp_path, caplog
):
    policy = build_model(tmp_path / "seed1", size="tiny", seed=1)
    split = load_split(scored_dataset, "train", tokenizer_fingerprint=fingerprint)
    policy_fp = weights_fingerprint(policy)
    with caplog.at_level(logging.WARNING, logger="train.data"):
        assert not policy_is_reference(split, policy_fp)
    (record,) = [r for r in caplog.records if r.name == "train.data"]
    assert policy_fp in record.getMessage() and split.reference_fingerprint in record.getMessage()


def test_shards_of_two_references_are_refused(scored_dataset, fingerprint, tmp_path):
    rows = split_rows(scored_dataset / "train")
    metadata = read_shard_metadata(sorted((scored_dataset / "train").glob("*.parquet"))[0])
    write_split(rows[:10], tmp_path / "a" / "train", metadata)
    other = with_metadata(reference_fingerprint="sha256:" + "1" * 64)(metadata)
    write_split(rows[10:], tmp_path / "b" / "train", other)
    shutil.move(
        tmp_path / "b" / "train" / "part-00000-00000.parquet",
        tmp_path / "a" / "train" / "part-x.parquet",
    )
    with pytest.raises(ProvenanceError, match="a dataset must be scored by one reference model"):
        load_split(tmp_path / "a", "train", tokenizer_fingerprint=fingerprint)


def test_shards_differing_from_the_manifest_are_refused(scored_dataset, fingerprint, tmp_path):
    n = len(split_rows(scored_dataset / "train"))
    data = derive_dataset(scored_dataset, tmp_path, sizes={"train": [n - 3, 3]})
    shutil.copy(scored_dataset / "manifest.json", data / "manifest.json")
    with pytest.raises(ProvenanceError, match=r"differ from .*manifest.json"):
        load_split(data, "train", tokenizer_fingerprint=fingerprint)
    # The real pipeline's dataset agrees with its own manifest.
    assert json.loads((scored_dataset / "manifest.json").read_text())["splits"]["train"]
    load_split(scored_dataset, "train", tokenizer_fingerprint=fingerprint)


def test_broken_rows_are_found_by_the_row_checks(scored_dataset, fingerprint, tmp_path):
    rows = split_rows(scored_dataset / "train")
    rows[5]["ref_chosen_logps"][0] = 0.5  # no probability has a positive log
    metadata = read_shard_metadata(sorted((scored_dataset / "train").glob("*.parquet"))[0])
    write_split(rows, tmp_path / "train", metadata, [20, len(rows) - 20])
    split = load_split(tmp_path, "train", tokenizer_fingerprint=fingerprint)
    assert validate_rows(split, rank=1, world_size=2) is None  # shard 1: intact
    problem = validate_rows(split, rank=0, world_size=2)
    assert problem and "ref_chosen_logps" in problem and rows[5]["id"] in problem


def test_an_used_out_folder_needs_resume(scored_dataset, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    config = TrainConfig(data=scored_dataset, model=tiny_model_dir, out=out)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match="already holds a run; pass --resume auto"):
        _preflight(config, tokenizer)
    config.resume = "auto"
    assert _preflight(config, tokenizer).resume_from is None
