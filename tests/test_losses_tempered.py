"""Tempered SLPO: an mpmath oracle of its definition, the step-0 value, gradients, robustness.

The oracle reads the definition literally: for each completion k, the binary target
`(t_k, 1 - t_k)` and the binary policy `(exp(s_k), exp(c_k))` are tempered by raising each
probability to the power `1 / T_k` and renormalising over the two outcomes; the loss is the
mean of the four pointwise KL terms `a log(a / b)`.
"""

import itertools
import math
import random

import pytest
import torch
from mpmath import mp, mpf

from train.losses import slpo_tempered_loss

F64 = torch.float64


def oracle(s_w, s_l, c_w, c_l, r_w, r_l, temp_w, temp_l, alpha, target_rule):
    s_w, s_l, c_w, c_l, r_w, r_l, alpha = (mpf(v) for v in (s_w, s_l, c_w, c_l, r_w, r_l, alpha))
    q_w, q_l = mp.exp(r_w), mp.exp(r_l)
    if target_rule == "shift":
        t_w, t_l = q_w + alpha * q_l, (1 - alpha) * q_l
    else:
        t_w, t_l = (1 - alpha) * (q_w + q_l), alpha * (q_w + q_l)

    def temper(p, p_bar, temp):
        u, v = p ** (1 / mpf(temp)), p_bar ** (1 / mpf(temp))
        return u / (u + v), v / (u + v)

    total = mpf(0)
    for t, s, c, temp in ((t_w, s_w, c_w, temp_w), (t_l, s_l, c_l, temp_l)):
        targets = temper(t, 1 - t, temp)
        policy = temper(mp.exp(s), mp.exp(c), temp)
        total += sum(a * mp.log(a / b) for a, b in zip(targets, policy, strict=True) if a != 0)
    return total / 4


def exact_complement(s):
    with mp.workdps(60):
        return float(mp.log(-mp.expm1(mpf(s))))


def call(rows, alpha, target_rule, *, complements=True):
    """`rows` hold (s_w, s_l, r_w, r_l, T_w, T_l); complements are exact unless told."""
    s_w, s_l, r_w, r_l, temp_w, temp_l = torch.tensor(rows, dtype=F64).T.unbind(0)
    extra = {}
    if complements:
        extra = {
            "policy_chosen_complement_logps": torch.tensor(
                [exact_complement(r[0]) for r in rows], dtype=F64
            ),
            "policy_rejected_complement_logps": torch.tensor(
                [exact_complement(r[1]) for r in rows], dtype=F64
            ),
        }
    return slpo_tempered_loss(
        s_w,
        s_l,
        r_w,
        r_l,
        chosen_temperatures=temp_w,
        rejected_temperatures=temp_l,
        alpha=alpha,
        target_rule=target_rule,
        **extra,
    )


SETTINGS = [("shift", 1.0), ("shift", 0.4), ("shift", 0.0), ("split", 0.0), ("split", 0.6)]


@pytest.mark.parametrize(("target_rule", "alpha"), SETTINGS)
def test_matches_high_precision_oracle(target_rule, alpha):
    logps = [-0.005, -0.3, -2.0, -15.0, -90.0, -700.0, -1500.0]
    temps = [1.0, 3.5, 40.0, 900.0]
    rng = random.Random(0)
    rows = [
        (*row, rng.choice(temps), rng.choice(temps))
        for row in itertools.product(logps, repeat=4)
        if math.exp(row[2]) + math.exp(row[3]) < 1
    ]
    rows = rng.sample(rows, 500)
    loss = call(rows, alpha, target_rule)
    with mp.workdps(80):
        expected = [
            float(
                oracle(
                    r[0],
                    r[1],
                    exact_complement(r[0]),
                    exact_complement(r[1]),
                    *r[2:],
                    alpha,
                    target_rule,
                )
            )
            for r in rows
        ]
    expected = torch.tensor(expected, dtype=F64)
    bad = (loss - expected).abs() > 1e-9 * expected.abs() + 1e-15
    assert not bad.any(), [(rows[i], loss[i].item(), expected[i].item()) for i in bad.nonzero()]


def test_policy_at_reference():
    """alpha = 0 (`shift`) keeps the reference: the loss is 0. alpha = 1 (`shift`) empties the
    rejected completion (`a_l = 0`) and gives its mass to the chosen one, so with
    `temper(p) = p^(1/T) / (p^(1/T) + (1 - p)^(1/T))`:
        L = 1/4 [ KL(temper(q_w + q_l) || temper(q_w)) - log(1 - temper(q_l)) ],
    a binary KL in the first term. E.g. r = (-1, -2), T = (4, 6): a = 0.50081, b = 0.46620,
    KL = 0.00240, temper(q_l) = 0.42333, so L = (0.00240 + 0.55056) / 4 = 0.13822."""
    refs = [(-1.0, -2.0, 4.0, 6.0), (-3.0, -2.5, 1.0, 1.0), (-40.0, -44.0, 20.0, 23.0)]
    rows = [(r_w, r_l, r_w, r_l, t_w, t_l) for r_w, r_l, t_w, t_l in refs]
    torch.testing.assert_close(
        call(rows, 0.0, "shift"), torch.zeros(3, dtype=F64), rtol=0, atol=1e-16
    )
    torch.testing.assert_close(
        call(rows, 0.0, "shift", complements=False), torch.zeros(3, dtype=F64), rtol=0, atol=1e-16
    )

    def temper(p, temp):
        u, v = p ** (1 / temp), (1 - p) ** (1 / temp)
        return u / (u + v)

    expected = []
    for r_w, r_l, t_w, t_l in refs:
        a, b = temper(math.exp(r_w) + math.exp(r_l), t_w), temper(math.exp(r_w), t_w)
        kl_w = a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))
        expected.append((kl_w - math.log(1 - temper(math.exp(r_l), t_l))) / 4)
    loss = call(rows, 1.0, "shift")
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=0)
    assert loss[0].item() == pytest.approx(0.138223, abs=1e-6)


def test_gradients_match_high_precision_finite_differences():
    """With respect to s_w, s_l and the complements c_w, c_l, each treated as free inputs."""
    rng = random.Random(1)
    logps = [-1e-9, -1e-3, -0.4, -3.0, -30.0, -400.0, -10000.0]
    rows = [
        (rng.choice(logps), rng.choice(logps), rng.choice(logps), rng.choice(logps))
        for _ in range(60)
    ]
    rows = [(*r, rng.choice([1.0, 7.0, 300.0]), rng.choice([1.0, 7.0, 300.0])) for r in rows]
    rows = [r for r in rows if math.exp(r[2]) + math.exp(r[3]) < 1]
    s_w, s_l, r_w, r_l, temp_w, temp_l = torch.tensor(rows, dtype=F64).T.unbind(0)
    c_w = torch.tensor([exact_complement(r[0]) for r in rows], dtype=F64)
    c_l = torch.tensor([exact_complement(r[1]) for r in rows], dtype=F64)
    inputs = [x.clone().requires_grad_(True) for x in (s_w, s_l, c_w, c_l)]
    slpo_tempered_loss(
        inputs[0],
        inputs[1],
        r_w,
        r_l,
        policy_chosen_complement_logps=inputs[2],
        policy_rejected_complement_logps=inputs[3],
        chosen_temperatures=temp_w,
        rejected_temperatures=temp_l,
        alpha=0.7,
    ).sum().backward()
    got = torch.stack([x.grad for x in inputs], dim=1)

    expected = []
    with mp.workdps(80):
        h = mpf("1e-30")
        for i, row in enumerate(rows):
            point = [mpf(x[i].item()) for x in (s_w, s_l, c_w, c_l)]
            grads = []
            for j in range(4):
                up, down = list(point), list(point)
                up[j] += h
                down[j] -= h
                f_up = oracle(*up, *row[2:], 0.7, "shift")
                f_down = oracle(*down, *row[2:], 0.7, "shift")
                grads.append(float((f_up - f_down) / (2 * h)))
            expected.append(grads)
    expected = torch.tensor(expected, dtype=F64)
    bad = ((got - expected).abs() > 1e-9 * expected.abs() + 1e-15).any(dim=1)
    assert not bad.any(), [(rows[i], got[i].tolist(), expected[i].tolist()) for i in bad.nonzero()]


@pytest.mark.parametrize("complements", [True, False])
@pytest.mark.parametrize(
    ("target_rule", "alpha"), [("shift", 1.0), ("shift", 0.0), ("split", 1.0), ("split", 0.0)]
)
def test_finite_loss_and_gradients_over_the_whole_range(target_rule, alpha, complements):
    logps = [-1e-9, -1e-6, -0.69, -9.0, -700.0, -10000.0]
    rows = [(*row, t, t) for row in itertools.product(logps, repeat=4) for t in (1.0, 10000.0)]
    s_w, s_l, r_w, r_l, temp_w, temp_l = torch.tensor(rows, dtype=F64).T.unbind(0)
    s_w.requires_grad_(True)
    s_l.requires_grad_(True)
    extra = {}
    if complements:
        c_w = torch.log(-torch.expm1(s_w.detach())).requires_grad_(True)
        c_l = torch.log(-torch.expm1(s_l.detach())).requires_grad_(True)
        extra = {"policy_chosen_complement_logps": c_w, "policy_rejected_complement_logps": c_l}
    loss = slpo_tempered_loss(
        s_w,
        s_l,
        r_w,
        r_l,
        chosen_temperatures=temp_w,
        rejected_temperatures=temp_l,
        alpha=alpha,
        target_rule=target_rule,
        **extra,
    )
    loss.sum().backward()
    assert torch.isfinite(loss).all()
    grads = [s_w.grad, s_l.grad] + ([c_w.grad, c_l.grad] if complements else [])
    assert all(torch.isfinite(g).all() for g in grads)


def test_missing_complements_fall_back_to_log1mexp_and_temperatures_to_one():
    gen = torch.Generator().manual_seed(3)
    s_w, s_l, r_w, r_l = (-30 * torch.rand(8, generator=gen, dtype=F64) for _ in range(4))
    given = slpo_tempered_loss(
        s_w,
        s_l,
        r_w,
        r_l,
        policy_chosen_complement_logps=torch.log(-torch.expm1(s_w)),
        policy_rejected_complement_logps=torch.log(-torch.expm1(s_l)),
        chosen_temperatures=torch.ones(8, dtype=F64),
        rejected_temperatures=torch.ones(8, dtype=F64),
    )
    torch.testing.assert_close(slpo_tempered_loss(s_w, s_l, r_w, r_l), given, rtol=1e-14, atol=0)


def test_float32_inputs_and_batch_independence():
    gen = torch.Generator().manual_seed(4)
    inputs = [-60 * torch.rand(10, generator=gen) for _ in range(4)]
    temps = {
        "chosen_temperatures": torch.full((10,), 12.0),
        "rejected_temperatures": torch.full((10,), 9.0),
    }
    loss32 = slpo_tempered_loss(*inputs, **temps, alpha=0.3)
    loss64 = slpo_tempered_loss(*(x.to(F64) for x in inputs), **temps, alpha=0.3)
    assert loss32.dtype == F64
    torch.testing.assert_close(loss32, loss64, rtol=0, atol=0)
    perm = torch.randperm(10, generator=gen)
    permuted = slpo_tempered_loss(
        *(x[perm] for x in inputs), **{k: v[perm] for k, v in temps.items()}, alpha=0.3
    )
    torch.testing.assert_close(permuted, loss32[perm], rtol=0, atol=0)


def test_bad_options_raise():
    x = torch.full((2,), -5.0, dtype=F64)
    with pytest.raises(ValueError, match=r"`alpha` must be in \[0, 1\], got 2"):
        slpo_tempered_loss(x, x, x, x, alpha=2)
    with pytest.raises(ValueError, match=r"`target_rule` must be one of"):
        slpo_tempered_loss(x, x, x, x, target_rule="prose")
    with pytest.raises(ValueError, match=r"`chosen_temperatures` has shape \[3\]"):
        slpo_tempered_loss(x, x, x, x, chosen_temperatures=torch.ones(3))
