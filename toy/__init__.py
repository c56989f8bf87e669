"""Deterministic tiny models and tokenizers for tests, benchmarks and the demo.

``build_model(dir, size="tiny", seed=0)`` writes a complete Hugging Face model folder that loads
with transformers and with vLLM; ``build_tokenizer(dir)`` writes the tokenizer alone.
"""

from toy.factory import PRESETS, ToySpec, build_model, count_parameters
from toy.tokenizer import BOS, EOS, PAD, SPECIAL_TOKENS, VOCAB_SIZE, build_tokenizer

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "PRESETS",
    "SPECIAL_TOKENS",
    "VOCAB_SIZE",
    "ToySpec",
    "build_model",
    "build_tokenizer",
    "count_parameters",
]
