"""Collation, log-prob gathering, the loss call through the registry, and the step-0 check,
on the tiny model and the scored shards (plain transformers forward, no DeepSpeed)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from schemas import REFERENCE_PARITY_ATOL, read_shard_metadata
from train.collate import IGNORE, collate
from train.data import load_split
from train.logps import per_token_logps
from train.objective import Objective
from train.refcheck import ReferenceMismatchError, raise_on_mismatch, reference_check
from train.stream import read_pairs


@pytest.fixture(scope="module")
def pairs(scored_dataset):
    split_dir = scored_dataset / "train"
    fingerprint = read_shard_metadata(sorted(split_dir.glob("*.parquet"))[0]).tokenizer_fingerprint
    split = load_split(scored_dataset, "train", tokenizer_fingerprint=fingerprint)
    return list(read_pairs([s.path for s in split.shards], read_batch_rows=64))[:4]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def test_collate_layout_is_chosen_then_rejected_without_retokenizing(pairs):
    batch = collate(pairs, pad_id=2)
    b = len(pairs)
    assert batch.input_ids.shape[0] == 2 * b
    for i, pair in enumerate(pairs):
        for row, name in ((i, "chosen"), (b + i, "rejected")):
            completion = getattr(pair, f"{name}_ids").tolist()
            p, c = len(pair.prompt_ids), len(completion)
            ids = batch.input_ids[row]
            assert ids[: p + c].tolist() == pair.prompt_ids.tolist() + completion
            assert batch.attention_mask[row].sum() == p + c
            assert (ids[p + c :] == 2).all()
            labels = batch.labels[row]
            # Position t predicts token t + 1, only for completion tokens.
            assert labels[p - 1 : p - 1 + c].tolist() == completion
            assert int((labels != IGNORE).sum()) == c
            stored = getattr(pair, f"ref_{name}_logps")
            assert batch.ref_per_token_logps[row][labels != IGNORE].tolist() == stored.tolist()
            assert batch.ref_logps[row] == getattr(pair, f"ref_{name}_logp")
            assert batch.completion_lengths[row] == c


def test_chunked_logps_equal_a_full_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(3, 11, 17, dtype=torch.float32, requires_grad=True)
    labels = torch.randint(0, 17, (3, 11))
    labels[:, :4] = IGNORE
    full = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    full = full.masked_fill(labels == IGNORE, 0.0)
    chunked = per_token_logps(logits, labels, chunk_size=4)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-6)
    (g_chunked,) = torch.autograd.grad(chunked.sum(), logits)
    (g_full,) = torch.autograd.grad(full.sum(), logits)
    torch.testing.assert_close(g_chunked, g_full, rtol=0, atol=1e-6)


def test_bf16_logits_are_gathered_in_float32():
    logits = torch.randn(2, 5, 9).to(torch.bfloat16)
    labels = torch.randint(0, 9, (2, 5))
    out = per_token_logps(logits, labels, chunk_size=2)
    assert out.dtype == torch.float32
    expected = torch.log_softmax(logits.float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def _forward(model, batch):
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def test_policy_equal_to_reference_reproduces_stored_logps(model, pairs):
    """The shards were scored from the same weights: the padded batch forward must agree."""
    batch = collate(pairs, pad_id=2)
    result = reference_check(model, batch, atol=REFERENCE_PARITY_ATOL)
    assert result.passed, result
    assert result.num_tokens == int(batch.completion_lengths.sum())
    assert result.mean_abs_diff <= result.max_abs_diff <= REFERENCE_PARITY_ATOL


def test_reference_check_fails_with_the_numbers_on_drifted_logps(model, pairs):
    batch = collate(pairs, pad_id=2)
    batch.ref_per_token_logps[batch.labels != IGNORE] += 0.01  # what a dtype drift looks like
    result = reference_check(model, batch, atol=REFERENCE_PARITY_ATOL)
    assert not result.passed
    assert result.max_abs_diff == pytest.approx(0.01, abs=REFERENCE_PARITY_ATOL)
    with pytest.raises(ReferenceMismatchError, match=r"differ .* by up to 0\.01") as info:
        raise_on_mismatch(result, model_dir="M", fingerprint="sha256:x")
    assert "--skip-ref-check" in str(info.value) and "tolerance 0.0001" in str(info.value)


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        ("dpo", lambda rw, rl: math.log(2.0)),
        ("cdpo", lambda rw, rl: math.log(2.0)),
        ("ipo", lambda rw, rl: 1.0 / (4 * 0.1**2)),
        # alpha = 1: KL(pi || q/M) = -log(q_w / M) over the pair.
        ("slpo", lambda rw, rl: math.log1p(math.exp(rl - rw))),
    ],
)
def test_step0_loss_through_the_registry(model, pairs, loss, expected):
    batch = collate(pairs, pad_id=2)
    options = {"alpha": 1.0, "target_rule": "shift", "beta": 0.1, "label_smoothing": 0.1}
    objective = Objective(loss, options, chunk_size=16)
    output = objective(_forward(model, batch), batch)
    want = [expected(p.ref_chosen_logp, p.ref_rejected_logp) for p in pairs]
    assert output.losses.tolist() == pytest.approx(want, rel=1e-4, abs=1e-4)
    metrics = objective.metrics(output)
    assert metrics["loss"] == pytest.approx(sum(want) / len(want), rel=1e-4)
    assert abs(float(metrics["rewards/margins"])) < 1e-4


def test_tempered_loss_gets_complements_and_token_counts(model, pairs):
    batch = collate(pairs, pad_id=2)
    options = {"alpha": 1.0, "target_rule": "shift", "beta": 0.1, "label_smoothing": 0.0}
    logits = _forward(model, batch).requires_grad_(True)
    output = Objective("slpo_tempered", options, chunk_size=8)(logits, batch)
    assert output.losses.shape == (len(pairs),)
    assert torch.isfinite(output.losses).all() and (output.losses >= 0).all()
    (grad,) = torch.autograd.grad(output.losses.sum(), logits)
    # Only positions that predict completion tokens receive gradient.
    touched = grad.abs().sum(-1) > 0
    assert touched[batch.labels == IGNORE].sum() == 0
    assert touched[batch.labels != IGNORE].any()
