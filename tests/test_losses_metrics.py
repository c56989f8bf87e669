"""`loss_metrics` against hand values, and every `LOSSES` entry called the trainer's way."""

import math

import pytest
import torch

from train.losses import LOSSES, get_loss_spec, loss_metrics, sequence_complement_logps

F64 = torch.float64


def test_metrics_hand_values():
    """beta = 0.5. Example 1: policy (-1, -2), reference (-1.5, -1.5): rewards 0.25, -0.25.
    Example 2: policy (-3, -1), reference (-2, -2): rewards -0.5, 0.5. Means: chosen -0.125,
    rejected 0.125, margins -0.25, accuracies 0.5. Equal reference log-probs give
    sigma_w = 1/2, so the `shift` target share with alpha = 0.5 is 1/2 + 0.5 * 1/2 = 0.75."""
    s_w = torch.tensor([-1.0, -3.0], requires_grad=True)
    s_l = torch.tensor([-2.0, -1.0], requires_grad=True)
    r_w, r_l = torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0])
    metrics = loss_metrics(s_w, s_l, r_w, r_l, beta=0.5, alpha=0.5)

    def logaddexp(a, b):
        return max(a, b) + math.log1p(math.exp(-abs(a - b)))

    def sigmoid(x):
        return 1 / (1 + math.exp(-x))

    expected = {
        "rewards/chosen": -0.125,
        "rewards/rejected": 0.125,
        "rewards/margins": -0.25,
        "rewards/accuracies": 0.5,
        "logps/chosen": -2.0,
        "logps/rejected": -1.5,
        "slpo/policy_chosen_share": (sigmoid(1.0) + sigmoid(-2.0)) / 2,
        "slpo/target_chosen_share": 0.75,
        "slpo/pair_log_mass_ratio": (
            logaddexp(-1, -2) - logaddexp(-1.5, -1.5) + logaddexp(-3, -1) - logaddexp(-2, -2)
        )
        / 2,
    }
    assert set(metrics) == set(expected)
    for name, value in metrics.items():
        assert value.dim() == 0 and not value.requires_grad, name
        assert value.item() == pytest.approx(expected[name], rel=1e-12, abs=1e-15), name
    split = loss_metrics(s_w, s_l, r_w, r_l, alpha=0.2, target_rule="split")
    assert split["slpo/target_chosen_share"].item() == pytest.approx(0.8, rel=1e-15)


def test_metrics_reject_bad_options():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match=r"`alpha` must be in \[0, 1\], got 3"):
        loss_metrics(x, x, x, x, alpha=3)


def toy_pair_batch(seed):
    """Logits [2B, S, V] of a tiny random 'policy' for B pairs, batch layout [chosen; rejected]."""
    gen = torch.Generator().manual_seed(seed)
    batch, seq, vocab = 3, 6, 5
    logits = torch.randn(2 * batch, seq, vocab, generator=gen, requires_grad=True)
    labels = torch.randint(vocab, (2 * batch, seq), generator=gen)
    mask = torch.zeros(2 * batch, seq)
    for i, start in enumerate([1, 2, 3, 1, 4, 0]):
        mask[i, start:] = 1
    return logits, labels, mask


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_runs_from_its_spec(name):
    """The trainer's side: build the inputs the spec asks for, call, backpropagate."""
    spec = get_loss_spec(name)
    logits, labels, mask = toy_pair_batch(seed=0)
    per_token_logps = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    token_counts = mask.sum(1)  # [2B]
    logps = (per_token_logps * mask).sum(1)  # [2B]
    if spec.wants_means:
        logps = logps / token_counts
    ref_logps = logps.detach() - 0.3 * torch.arange(6)
    chosen, rejected = logps.chunk(2)
    ref_chosen, ref_rejected = ref_logps.chunk(2)

    extra = {}
    if spec.wants_complements:
        complements = sequence_complement_logps(logits, labels, mask).chunk(2)
        extra |= dict(
            zip(
                ["policy_chosen_complement_logps", "policy_rejected_complement_logps"],
                complements,
                strict=True,
            )
        )
    if spec.wants_token_counts:
        extra |= dict(
            zip(
                ["chosen_temperatures", "rejected_temperatures"], token_counts.chunk(2), strict=True
            )
        )
    config = {"beta": 0.1, "label_smoothing": 0.1, "alpha": 0.9, "target_rule": "shift"}
    loss = spec.fn(
        chosen, rejected, ref_chosen, ref_rejected, **extra, **spec.select_options(config)
    )
    assert loss.shape == (3,) and loss.dtype == F64
    loss.mean().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_unknown_loss_and_cdpo_without_smoothing_raise():
    with pytest.raises(ValueError, match=r"unknown loss 'kto'; choose one of \['cdpo', 'dpo'"):
        get_loss_spec("kto")
    x = torch.zeros(2)
    spec = get_loss_spec("cdpo")
    with pytest.raises(ValueError, match=r"cDPO needs label smoothing"):
        spec.fn(x, x, x, x, **spec.select_options({"beta": 0.1, "label_smoothing": 0.0}))
