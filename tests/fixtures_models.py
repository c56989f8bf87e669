"""Tiny models built once per test session with the real factory (no hub is reachable)."""

from __future__ import annotations

import pytest

from toy.factory import build_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A complete Hugging Face model folder: tiny Llama, BPE tokenizer, chat template."""
    return build_model(tmp_path_factory.mktemp("models") / "tiny", size="tiny", seed=0)
