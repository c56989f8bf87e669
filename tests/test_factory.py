"""The toy factory: deterministic files, a byte-level tokenizer with a chat template, and
Llama models that load in transformers at the advertised sizes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from toy import PRESETS, ToySpec, build_model, build_tokenizer, count_parameters
from toy.factory import make_config

CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is 12 + 7?"},
]
ANSWER = {"role": "assistant", "content": "It is 19."}


def _cli_build(out_dir: Path, *, seed: int, hash_seed: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    command = [sys.executable, "-m", "toy", "build", str(out_dir), "--seed", str(seed)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _read_folder(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def cli_builds(tmp_path_factory) -> dict[str, Path]:
    """Seed 0 built twice by the CLI, in two processes with different hash seeds, at once."""
    root = tmp_path_factory.mktemp("factory")
    procs = {name: _cli_build(root / name, seed=0, hash_seed=name) for name in ("1", "2")}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"build with PYTHONHASHSEED={name} failed:\n{stderr.decode()}"
        assert f"parameters={count_parameters_of('tiny'):,}" in stdout.decode()
    return {name: root / name for name in procs}


def count_parameters_of(size: str) -> int:
    """Parameter count of a preset, from a model built on the meta device (no memory, fast)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(make_config(PRESETS[size], bos_id=0, eos_id=1, pad_id=2))
    return count_parameters(model)


def test_same_seed_is_byte_identical_across_processes(cli_builds, tiny_model_dir):
    first, second = _read_folder(cli_builds["1"]), _read_folder(cli_builds["2"])

    assert set(first) >= {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    }
    assert first == second
    assert first == _read_folder(tiny_model_dir)


def test_other_seed_changes_weights_only(tmp_path, tiny_model_dir):
    seed0 = _read_folder(tiny_model_dir)
    seed1 = _read_folder(build_model(tmp_path / "seed1", size="tiny", seed=1))

    assert seed0["model.safetensors"] != seed1["model.safetensors"]
    # One tokenizer for every seed: a policy and its reference share a tokenizer fingerprint.
    del seed0["model.safetensors"], seed1["model.safetensors"]
    assert seed0 == seed1


def test_build_tokenizer_alone_matches_the_model_folder(tmp_path, tiny_model_dir):
    built = build_tokenizer(tmp_path / "tok", seed=0)

    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (built / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize(
    "text",
    [
        "The cat sat on the mat. 12 + 7 = 19",
        "  leading spaces,\ttabs\nand newlines\n\n",
        "naïve café, smörgåsbord — 日本語 🙂 ∑ π ≈ 3.14159",
        "<b>markup</b> & {braces} [1, 2] \\ \"quotes\" 'single'",
    ],
)
def test_tokenizer_round_trip_adds_bos_not_eos(tokenizer, text):
    ids = tokenizer(text)["input_ids"]

    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.bos_token_id not in ids[1:]
    assert tokenizer.eos_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids[1:]


def test_tokenizer_special_tokens(tokenizer):
    assert len(tokenizer) == 512
    assert tokenizer.unk_token is None
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<|bos|>", "<|eos|>", "<|pad|>"]
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|bos|>",
        "<|eos|>",
        "<|pad|>",
    )
    # Special tokens written in text are single tokens, never split into bytes.
    ids = tokenizer("<|user|>hi<|eos|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|user|>")
    assert ids[-1] == tokenizer.eos_token_id


def test_chat_template_renders_turns_and_generation_prompt(tokenizer):
    prompt = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template([*CONVERSATION, ANSWER], tokenize=False)

    assert prompt == (
        "<|bos|><|system|>\nYou answer briefly.\n<|user|>\nWhat is 12 + 7?\n<|assistant|>\n"
    )
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == prompt.removesuffix(
        "<|assistant|>\n"
    )
    # The conversation with its answer extends the prompt; the rest is the answer and EOS.
    assert full.startswith(prompt)
    assert full[len(prompt) :] == "It is 19.<|eos|>"


def test_chat_completion_ids_end_with_eos_and_concatenate(tokenizer):
    prompt = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template([*CONVERSATION, ANSWER], tokenize=False)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731

    prompt_ids, completion_ids = encode(prompt), encode(full[len(prompt) :])

    assert prompt_ids[0] == tokenizer.bos_token_id
    assert completion_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in completion_ids[:-1]
    assert prompt_ids + completion_ids == encode(full)


def test_chat_template_rejects_unknown_role(tokenizer):
    with pytest.raises(Exception, match="role must be system, user or assistant, got tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_model_loads_and_gives_finite_logits(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = tokenizer(["The cat sat.", "12 + 7 = 19 and more"], padding=True, return_tensors="pt")

    with torch.no_grad():
        logits = model(**ids).logits  # [B, T, V]

    assert model.dtype == torch.float32
    assert logits.shape == (2, ids["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()
    # Random weights, but not uniform: next-token log-probs spread over several nats.
    per_token_logps = logits.log_softmax(-1)
    assert (per_token_logps.amax(-1) - per_token_logps.amin(-1)).min() > 1.0
    for config in (model.config, model.generation_config):
        assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
        )
    assert count_parameters(model) == count_parameters_of("tiny")


def test_preset_parameter_counts():
    tiny, small = count_parameters_of("tiny"), count_parameters_of("small")

    assert 1_000_000 <= tiny <= 2_000_000
    assert 10 * tiny <= small <= 50 * tiny


def test_custom_spec_and_unknown_size(tmp_path):
    spec = ToySpec(
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=128,
    )
    model = AutoModelForCausalLM.from_pretrained(build_model(tmp_path / "custom", size=spec))
    assert (model.config.hidden_size, model.config.num_key_value_heads) == (64, 1)

    with pytest.raises(ValueError, match=r"size must be one of \['small', 'tiny'\].*'huge'"):
        build_model(tmp_path / "huge", size="huge")
