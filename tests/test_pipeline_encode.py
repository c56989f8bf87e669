"""Pair tokenization (SPEC section 3) with the toy tokenizer (no engine)."""

from __future__ import annotations

import copy

import pytest
from transformers import AutoTokenizer

from pipeline.encode import EncodedPair, PairEncoder
from pipeline.inputs import BadRow, Row


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def encoder(tokenizer, max_length=511, overlong="drop"):
    return PairEncoder(
        tokenizer, eos_token_ids=[tokenizer.eos_token_id], max_length=max_length, overlong=overlong
    )


def chat_row(prompt="What is 2 + 3?", chosen="5", rejected="6"):
    return Row(
        "c",
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}],
        [{"role": "assistant", "content": chosen}],
        [{"role": "assistant", "content": rejected}],
        conversational=True,
    )


def test_standard_rows_tokenize_each_part_separately_and_end_with_eos(tokenizer):
    eos = tokenizer.eos_token_id
    rows = [
        Row("a", "What is 2 + 3?", " 5.", " 6.", False),
        Row("b", "Say hi", "hi<|eos|>", "bye", False),
    ]
    (a, b) = encoder(tokenizer).encode(rows)
    assert isinstance(a, EncodedPair)
    assert a.prompt_ids.tolist() == tokenizer("What is 2 + 3?")["input_ids"]
    assert a.prompt_ids[0] == tokenizer.bos_token_id
    assert a.chosen_ids.tolist() == [*tokenizer(" 5.", add_special_tokens=False)["input_ids"], eos]
    assert a.rejected_ids.tolist()[-1] == eos
    # A completion that already ends with EOS gets no second one.
    assert b.chosen_ids.tolist() == tokenizer("hi<|eos|>", add_special_tokens=False)["input_ids"]
    assert b.chosen_ids.tolist().count(eos) == 1
    assert a.num_scored_tokens == 2 * len(a.prompt_ids) + len(a.chosen_ids) + len(a.rejected_ids)


def test_chat_rows_use_the_template_with_the_generation_prompt(tokenizer):
    row = chat_row()
    (pair,) = encoder(tokenizer).encode([row])
    prompt_text = tokenizer.apply_chat_template(
        row.prompt, add_generation_prompt=True, tokenize=False
    )
    full_text = tokenizer.apply_chat_template(row.prompt + row.chosen, tokenize=False)
    assert pair.prompt_ids.tolist() == tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    assert [*pair.prompt_ids.tolist(), *pair.chosen_ids.tolist()] == full
    assert tokenizer.decode(pair.chosen_ids) == "5<|eos|>"
    assert tokenizer.decode(pair.rejected_ids) == "6<|eos|>"


def test_text_a_template_renders_after_eos_is_not_part_of_the_completion(tokenizer):
    trailing = copy.deepcopy(tokenizer)
    trailing.chat_template = tokenizer.chat_template.replace(
        "{{- eos_token -}}", "{{- eos_token ~ '\\n' -}}"
    )
    (pair,) = encoder(trailing).encode([chat_row()])
    assert trailing.decode(pair.chosen_ids) == "5<|eos|>"


def test_a_template_that_does_not_render_the_prompt_as_a_prefix_is_refused(tokenizer):
    broken = copy.deepcopy(tokenizer)
    # The generation prompt differs from how the assistant turn starts.
    broken.chat_template = tokenizer.chat_template.replace("'<|assistant|>\\n'", "'<|user|>\\n'")
    (bad,) = encoder(broken).encode([chat_row()])
    assert isinstance(bad, BadRow) and bad.reason == "template_prefix"


def test_overlong_pairs_are_dropped_cut_or_refused(tokenizer):
    row = Row("a", "one two three four five six seven eight nine ten", "yes", "no no no", False)
    (full,) = encoder(tokenizer).encode([row])
    longest = max(len(full.chosen_ids), len(full.rejected_ids))
    limit = longest + 4

    (dropped,) = encoder(tokenizer, limit, "drop").encode([row])
    assert isinstance(dropped, BadRow) and dropped.reason == "overlong"
    (refused,) = encoder(tokenizer, limit, "error").encode([row])
    assert isinstance(refused, BadRow) and refused.reason == "overlong"

    (cut,) = encoder(tokenizer, limit, "keep-end").encode([row])
    assert len(cut.prompt_ids) + longest == limit
    # BOS stays, then the end of the prompt; the completions are untouched.
    assert cut.prompt_ids.tolist() == [full.prompt_ids[0], *full.prompt_ids[-3:].tolist()]
    assert cut.rejected_ids.tolist() == full.rejected_ids.tolist()

    # A completion that alone fills the limit cannot be kept by cutting the prompt.
    (hopeless,) = encoder(tokenizer, longest + 1, "keep-end").encode([row])
    assert isinstance(hopeless, BadRow) and hopeless.reason == "overlong"


def test_encoder_options_are_checked(tokenizer):
    with pytest.raises(ValueError, match="overlong must be one of"):
        encoder(tokenizer, overlong="truncate")
    with pytest.raises(ValueError, match="max_length must be >= 2, got 1"):
        encoder(tokenizer, max_length=1)


def test_an_empty_prompt_that_encodes_to_no_tokens_is_a_bad_row(tokenizer):
    """With a tokenizer that adds no BOS, an empty prompt has no token to condition on."""
    from tokenizers import processors

    bare = copy.deepcopy(tokenizer)
    bare.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    assert bare("")["input_ids"] == []
    (bad, good) = encoder(bare).encode(
        [Row("e", "", " 5.", " 6.", False), Row("f", "Say hi", "hi", "bye", False)]
    )
    assert isinstance(bad, BadRow) and (bad.reason, bad.field) == ("empty_prompt", "prompt")
    assert isinstance(good, EncodedPair) and good.prompt_ids[0] != tokenizer.bos_token_id
