"""`sequence_complement_logps`: log(1 - pi(y|x)) from the logits, against brute force.

Absolute tolerances in log space are relative ones on the probability `1 - pi(y|x)`.

The toy model: a vocabulary of 3 tokens, completions of exactly 3 tokens, no EOS, and
next-token logits that are a fixed random function of the completion prefix. All 27
completions then have probabilities summing to 1, so `1 - pi(y|x)` is the sum of the
probabilities of the 26 others, a sum of positive terms with no cancellation.
"""

import itertools
import math

import pytest
import torch
from mpmath import mp, mpf

from train.losses import sequence_complement_logps

F64 = torch.float64
VOCAB, LENGTH, PROMPT = 3, 3, 2


def toy_batch(scale, dtype=F64):
    """Logits [27, PROMPT + LENGTH, VOCAB], labels and mask for every completion in order.

    Prompt positions get arbitrary logits and label -100: they must be ignored.
    """
    gen = torch.Generator().manual_seed(0)
    table = {
        prefix: scale * torch.randn(VOCAB, generator=gen, dtype=F64)
        for n in range(LENGTH)
        for prefix in itertools.product(range(VOCAB), repeat=n)
    }
    completions = list(itertools.product(range(VOCAB), repeat=LENGTH))
    prompt_logits = torch.randn(PROMPT, VOCAB, generator=gen, dtype=F64)
    logits = torch.stack(
        [
            torch.cat([prompt_logits, torch.stack([table[y[:t]] for t in range(LENGTH)])])
            for y in completions
        ]
    ).to(dtype)
    labels = torch.tensor([[-100] * PROMPT + list(y) for y in completions])
    mask = torch.tensor([[0] * PROMPT + [1] * LENGTH] * len(completions))
    return logits, labels, mask


def brute_force_complements(logits):
    """log of the summed probability of the 26 other completions, in mpmath."""
    with mp.workdps(50):
        probs = []
        for i, y in enumerate(itertools.product(range(VOCAB), repeat=LENGTH)):
            p = mpf(1)
            for t, token in enumerate(y):
                row = [mpf(v) for v in logits[i, PROMPT + t].tolist()]
                p *= mp.exp(row[token]) / sum(mp.exp(v) for v in row)
            probs.append(p)
        assert abs(sum(probs) - 1) < mpf(10) ** -40
        return [float(mp.log(sum(probs) - p)) for p in probs], [float(mp.log(p)) for p in probs]


def test_matches_enumeration_of_every_other_sequence():
    logits, labels, mask = toy_batch(scale=1.0)
    expected, _ = brute_force_complements(logits)
    got = sequence_complement_logps(logits, labels, mask)
    assert got.dtype == F64
    torch.testing.assert_close(got, torch.tensor(expected, dtype=F64), rtol=1e-13, atol=1e-14)


def test_accurate_when_the_sequence_is_nearly_certain():
    """At scale 25 the likeliest completion has probability 1 - 1.1e-18: its float64 log-prob
    sums to exactly 0 and `log1mexp` of it is -inf. The logits-based form gets log(1.1e-18),
    in float64 and in float32 (to float32's precision on each position's log(1 - p))."""
    logits, labels, mask = toy_batch(scale=25.0)
    expected, seq_logps = brute_force_complements(logits)
    best = max(range(len(seq_logps)), key=lambda i: seq_logps[i])
    assert expected[best] < -40
    token_logps = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])
    assert (token_logps.squeeze(-1) * mask)[best].sum().item() == 0.0

    got64 = sequence_complement_logps(logits, labels, mask)
    torch.testing.assert_close(got64, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-14)
    got32 = sequence_complement_logps(logits.float(), labels, mask)
    expected32, _ = brute_force_complements(logits.float().to(F64))
    torch.testing.assert_close(got32, torch.tensor(expected32, dtype=F64), rtol=1e-5, atol=1e-6)


def test_matches_log1mexp_of_the_sequence_logp_where_that_is_accurate():
    gen = torch.Generator().manual_seed(1)
    batch, seq, vocab = 4, 12, 7
    logits = torch.randn(batch, seq, vocab, generator=gen, dtype=F64)
    labels = torch.randint(vocab, (batch, seq), generator=gen)
    mask = torch.zeros(batch, seq, dtype=torch.long)
    for i, (start, end) in enumerate([(2, 12), (0, 5), (7, 8), (3, 11)]):
        mask[i, start:end] = 1
    token_logps = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    seq_logps = (token_logps * mask).sum(1)
    assert (seq_logps < -0.1).all()
    expected = torch.log(-torch.expm1(seq_logps))
    for chunk_size in (1, 5, 64):
        got = sequence_complement_logps(logits, labels, mask, chunk_size=chunk_size)
        torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-14)


def test_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 4, generator=gen, dtype=F64, requires_grad=True)
    labels = torch.randint(4, (2, 5), generator=gen)
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 1, 1, 0]])
    assert torch.autograd.gradcheck(
        lambda x: sequence_complement_logps(x, labels, mask, chunk_size=2), (logits,)
    )


def test_bfloat16_logits_are_read_as_float32():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 6, 11, generator=gen).to(torch.bfloat16)
    labels = torch.randint(11, (2, 6), generator=gen)
    mask = torch.ones(2, 6)
    got = sequence_complement_logps(logits, labels, mask, chunk_size=4)
    torch.testing.assert_close(
        got, sequence_complement_logps(logits.float(), labels, mask), rtol=0, atol=0
    )
    assert math.isfinite(got.sum().item())


def test_bad_inputs_raise():
    logits = torch.zeros(2, 4, 3)
    labels = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"`logits` must have shape \[B, S, V\], got \[2, 4\]"):
        sequence_complement_logps(logits[..., 0], labels, labels)
    with pytest.raises(ValueError, match=r"`mask` must have shape \[B, S\] = \[2, 4\]"):
        sequence_complement_logps(logits, labels, labels[:, :3])
    with pytest.raises(ValueError, match=r"`chunk_size` must be >= 1, got 0"):
        sequence_complement_logps(logits, labels, labels, chunk_size=0)
