"""Fingerprints change with any weight or tokenizer change, survive re-saving, and cache hashes."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoTokenizer

from schemas import tokenizer_fingerprint, weights_fingerprint


@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


def test_weights_fingerprint_changes_with_one_byte(model_copy, tmp_path):
    cache = tmp_path / "cache.json"
    before = weights_fingerprint(model_copy, cache_path=cache)
    assert before.startswith("sha256:")
    assert weights_fingerprint(model_copy, cache_path=cache) == before

    weights = model_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert weights_fingerprint(model_copy, cache_path=cache) != before


def test_weights_fingerprint_covers_config(model_copy, tmp_path):
    before = weights_fingerprint(model_copy, cache_path=tmp_path / "cache.json")
    config = json.loads((model_copy / "config.json").read_text())
    config["rms_norm_eps"] = 1e-3
    (model_copy / "config.json").write_text(json.dumps(config))
    assert weights_fingerprint(model_copy, cache_path=tmp_path / "cache.json") != before


def test_weights_are_read_once_per_machine(model_copy, tmp_path, monkeypatch):
    cache = tmp_path / "cache.json"
    weights_fingerprint(model_copy, cache_path=cache)
    reads = []
    monkeypatch.setattr("schemas.fingerprint.file_sha256", lambda p: reads.append(p) or "x")
    weights_fingerprint(model_copy, cache_path=cache)
    assert reads == []


def test_weights_fingerprint_needs_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no weight files"):
        weights_fingerprint(tmp_path, cache_path=tmp_path / "cache.json")


def test_tokenizer_fingerprint_survives_save_and_sees_changes(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    original = tokenizer_fingerprint(tokenizer)
    tokenizer.save_pretrained(tmp_path / "resaved")
    resaved = AutoTokenizer.from_pretrained(tmp_path / "resaved")
    assert tokenizer_fingerprint(resaved) == original

    resaved.chat_template = "{{ messages[0]['content'] }}"
    assert tokenizer_fingerprint(resaved) != original

    changed = AutoTokenizer.from_pretrained(tiny_model_dir)
    changed.add_tokens(["<|new|>"])
    assert tokenizer_fingerprint(changed) != original

    padded = AutoTokenizer.from_pretrained(tiny_model_dir)
    padded.padding_side = "left"
    padded.backend_tokenizer.enable_truncation(8)
    assert tokenizer_fingerprint(padded) == original
