"""Tiny Llama models with random weights, built deterministically for tests and the demo.

A model folder is a complete Hugging Face model directory (config, generation config,
safetensors weights, tokenizer, chat template) that loads with ``AutoModelForCausalLM`` /
``AutoTokenizer`` and with vLLM. Every file in it is a pure function of (size, seed).

The tokenizer does not depend on the weight seed or the size: every toy model shares one
tokenizer (one tokenizer fingerprint), so a policy built with one seed can train on shards
scored by a reference built with another.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from toy.tokenizer import VOCAB_SIZE, train_tokenizer, wrap_tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToySpec:
    """Shape of a toy Llama model. The vocabulary is the toy tokenizer's (``VOCAB_SIZE``)."""

    hidden_size: int
    """Width of the residual stream."""
    num_hidden_layers: int
    """Number of decoder layers."""
    num_attention_heads: int
    """Query heads; ``hidden_size / num_attention_heads`` is the head size."""
    num_key_value_heads: int
    """Key/value heads (fewer than the query heads is grouped-query attention)."""
    intermediate_size: int
    """Width of the SwiGLU MLP."""
    init_std: float = 0.05
    """Std of the normal init of every matrix. Larger than Llama's 0.02 so that next-token
    log-probs spread over a few nats instead of all sitting near ``-log(vocab)``."""
    max_position_embeddings: int = 512
    """Longest sequence the model (and vLLM's ``max_model_len``) accepts."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# Head sizes 32 (tiny) and 64 (small); both load and score in vLLM's CPU build as they are.
PRESETS: dict[str, ToySpec] = {
    # About 1.4M parameters: the model of unit tests and the demo.
    "tiny": ToySpec(
        hidden_size=192,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=6,
        intermediate_size=768,
    ),
    # About 32M parameters, with grouped-query attention: the model of benchmarks.
    "small": ToySpec(
        hidden_size=512,
        num_hidden_layers=10,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=1536,
    ),
}


def _resolve_spec(size: str | ToySpec) -> ToySpec:
    if isinstance(size, ToySpec):
        return size
    if size not in PRESETS:
        raise ValueError(f"size must be one of {sorted(PRESETS)} or a ToySpec, got {size!r}")
    return PRESETS[size]


def make_config(spec: ToySpec, *, bos_id: int, eos_id: int, pad_id: int) -> LlamaConfig:
    """The ``LlamaConfig`` of ``spec``, with the tokenizer's special ids."""
    if spec.hidden_size % spec.num_attention_heads:
        raise ValueError(
            f"hidden_size ({spec.hidden_size}) must be a multiple of num_attention_heads "
            f"({spec.num_attention_heads})"
        )
    if spec.num_attention_heads % spec.num_key_value_heads:
        raise ValueError(
            f"num_attention_heads ({spec.num_attention_heads}) must be a multiple of "
            f"num_key_value_heads ({spec.num_key_value_heads})"
        )
    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.init_std,
        rms_norm_eps=1e-5,
        # Untied: the checkpoint then holds an explicit lm_head, which every loader reads alike.
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
    )


@torch.no_grad()
def init_weights(model: torch.nn.Module, *, std: float, seed: int) -> None:
    """Overwrite every parameter from a generator seeded with ``seed``, in name order.

    Norm weights are ones; every other tensor is ``N(0, std^2)``. Drawing from a dedicated
    generator, in a fixed order, makes the weights a pure function of (shape, std, seed),
    whatever transformers' own init does and whatever the global RNG state is.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def build_model(out_dir: str | Path, *, size: str | ToySpec = "tiny", seed: int = 0) -> Path:
    """Build a toy model folder (tokenizer + random-weight Llama) in ``out_dir``.

    ``size`` is a key of ``PRESETS`` or a ``ToySpec``; ``seed`` draws the weights. Same
    (size, seed), byte-identical files; another seed, other weights, same tokenizer.
    """
    spec = _resolve_spec(size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = wrap_tokenizer(train_tokenizer(seed=0))
    ids = {
        "bos_id": tokenizer.bos_token_id,
        "eos_id": tokenizer.eos_token_id,
        "pad_id": tokenizer.pad_token_id,
    }
    config = make_config(spec, **ids)
    model = LlamaForCausalLM(config)
    init_weights(model, std=spec.init_std, seed=seed)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos_id"], eos_token_id=ids["eos_id"], pad_token_id=ids["pad_id"]
    )

    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    logger.info(
        "saved toy model %s (seed %s, %s parameters) to %s",
        asdict(spec),
        seed,
        count_parameters(model),
        out_dir,
    )
    return out_dir


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
