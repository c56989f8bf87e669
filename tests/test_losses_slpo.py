"""SLPO loss: SPEC reference values, a high-precision oracle, gradients, optimum, robustness.

The oracle evaluates `KL(t || p) / M` straight from its definition on the three outcomes
{chosen, rejected, other} with mpmath, at 80+ significant digits, using `log1p` so that
`log(1 - M)` keeps its digits when `M` is as small as exp(-10000).
"""

import itertools
import math
import random

import pytest
import torch
from mpmath import mp, mpf

from train.losses import slpo_loss

F64 = torch.float64
EPS = torch.finfo(F64).eps

# (s_w, s_l, r_w, r_l), alpha, value: SPEC section 2, `shift` rule.
SPEC_VALUES = [
    ((-12.5, -14.0, -12.5, -14.0), 1.0, 0.201413277982752),
    ((-12.5, -14.0, -12.5, -14.0), 0.5, 0.0328976525332165),
    ((-40.0, -38.0, -41.0, -37.5), 1.0, 2.198181215533),
    ((-0.3, -2.0, -0.4, -1.9), 0.0, 0.0187615397203128),
    ((-900.0, -950.0, -905.0, -940.0), 0.8, 142.413159102577),
]
SETTINGS = [("shift", 1.0), ("shift", 0.3), ("shift", 0.0), ("split", 0.0), ("split", 0.7)]


def oracle(s_w, s_l, r_w, r_l, alpha, target_rule):
    """`KL(t || p) / M` from the definitions, at the caller's mpmath precision."""
    s_w, s_l, r_w, r_l, alpha = (mpf(v) for v in (s_w, s_l, r_w, r_l, alpha))
    q_w, q_l = mp.exp(r_w), mp.exp(r_l)
    mass = q_w + q_l
    if target_rule == "shift":
        t_w, t_l = q_w + alpha * q_l, (1 - alpha) * q_l
    else:
        t_w, t_l = (1 - alpha) * mass, alpha * mass
    p_w, p_l = mp.exp(s_w), mp.exp(s_l)
    kl = sum(t * mp.log(t / p) for t, p in ((t_w, p_w), (t_l, p_l)) if t != 0)
    kl += (1 - mass) * (mp.log1p(-mass) - mp.log1p(-(p_w + p_l)))
    return kl / mass


def is_valid(s_w, s_l, r_w, r_l):
    """Both pairs hold less than all the mass, and the loss is inside float64 range."""
    return (
        math.exp(s_w) + math.exp(s_l) < 1 - 1e-12
        and math.exp(r_w) + math.exp(r_l) < 1 - 1e-12
        and max(s_w, s_l) - max(r_w, r_l) < 690
    )


def columns(rows):
    return torch.tensor(rows, dtype=F64).T.unbind(0)


@pytest.mark.parametrize(("inputs", "alpha", "expected"), SPEC_VALUES)
def test_spec_reference_values(inputs, alpha, expected):
    loss = slpo_loss(*columns([inputs]), alpha=alpha)
    assert loss.dtype == F64
    assert loss.item() == pytest.approx(expected, rel=1e-9, abs=0)


@pytest.mark.parametrize(("target_rule", "alpha"), SETTINGS)
def test_matches_high_precision_oracle_on_grid(target_rule, alpha):
    logps = [-0.005, -0.1, -1.0, -4.0, -25.0, -120.0, -600.0, -1500.0]
    rows = [row for row in itertools.product(logps, repeat=4) if is_valid(*row)]
    loss = slpo_loss(*columns(rows), alpha=alpha, target_rule=target_rule)
    with mp.workdps(80):
        expected = torch.tensor(
            [float(oracle(*row, alpha, target_rule)) for row in rows], dtype=F64
        )
    # Inputs are known to one ulp, so near the optimum (loss ~ 0) the error floor is eps * |logp|.
    floor = 8 * EPS * (1 + torch.tensor(rows, dtype=F64).abs().amax(dim=1))
    bad = (loss - expected).abs() > 1e-9 * expected.abs() + floor
    assert not bad.any(), [(rows[i], loss[i].item(), expected[i].item()) for i in bad.nonzero()]


@pytest.mark.parametrize(("target_rule", "alpha"), SETTINGS)
def test_policy_at_reference_gives_kl_of_pair_shares(target_rule, alpha):
    """At step 0 the `other` term vanishes: `L = sum_k pi_k log(pi_k / sigma_k)`, sigma = q / M."""
    refs = [(-12.5, -14.0), (-0.4, -1.9), (-905.0, -940.0), (-1e-9, -30.0), (-10000.0, -9990.0)]
    r_w, r_l = columns(refs)
    loss = slpo_loss(r_w, r_l, r_w, r_l, alpha=alpha, target_rule=target_rule)
    for (ref_w, ref_l), value in zip(refs, loss.tolist(), strict=True):
        sigma_w = 1.0 / (1.0 + math.exp(ref_l - ref_w))
        sigma_l = 1.0 / (1.0 + math.exp(ref_w - ref_l))
        if target_rule == "shift":
            pi_w, pi_l = sigma_w + alpha * sigma_l, (1 - alpha) * sigma_l
        else:
            pi_w, pi_l = 1 - alpha, alpha
        expected = sum(p * math.log(p / s) for p, s in ((pi_w, sigma_w), (pi_l, sigma_l)) if p)
        assert value == pytest.approx(expected, rel=1e-9, abs=1e-12)


def oracle_gradient(row, alpha, target_rule):
    """Central differences of the oracle, step 1e-30, with digits to spare for losses ~e^690."""
    excess = max(0.0, max(row[0], row[1]) - max(row[2], row[3]))
    with mp.workdps(80 + int(excess / 2.3)):
        h = mpf("1e-30")
        s_w, s_l = mpf(row[0]), mpf(row[1])

        def f(a, b):
            return oracle(a, b, row[2], row[3], alpha, target_rule)

        d_w = (f(s_w + h, s_l) - f(s_w - h, s_l)) / (2 * h)
        d_l = (f(s_w, s_l + h) - f(s_w, s_l - h)) / (2 * h)
        return float(d_w), float(d_l)


@pytest.mark.parametrize(("target_rule", "alpha"), [("shift", 1.0), ("shift", 0.0), ("split", 0.3)])
def test_gradients_match_high_precision_finite_differences(target_rule, alpha):
    logps = [-1e-9, -1e-4, -0.05, -0.7, -6.0, -60.0, -700.0, -10000.0]
    rows = [row for row in itertools.product(logps, repeat=4) if is_valid(*row)]
    rows = random.Random(0).sample(rows, 400)
    s_w, s_l, r_w, r_l = columns(rows)
    s_w.requires_grad_(True)
    s_l.requires_grad_(True)
    slpo_loss(s_w, s_l, r_w, r_l, alpha=alpha, target_rule=target_rule).sum().backward()

    expected = torch.tensor([oracle_gradient(row, alpha, target_rule) for row in rows], dtype=F64)
    got = torch.stack([s_w.grad, s_l.grad], dim=1)
    bad = ((got - expected).abs() > 1e-9 * expected.abs() + 1e-13).any(dim=1)
    assert not bad.any(), [(rows[i], got[i].tolist(), expected[i].tolist()) for i in bad.nonzero()]


@pytest.mark.parametrize(
    ("target_rule", "alpha", "refs"),
    [
        ("shift", 0.6, (-3.0, -4.0)),
        ("shift", 0.0, (-300.0, -302.0)),
        ("shift", 0.9, (-1200.0, -1190.0)),
        ("split", 0.25, (-40.0, -38.0)),
        ("split", 0.5, (-2.0, -9.0)),
    ],
)
def test_minimiser_is_the_target(target_rule, alpha, refs):
    r_w, r_l = (torch.tensor([r], dtype=F64) for r in refs)
    gen = torch.Generator().manual_seed(0)
    start = torch.tensor(refs, dtype=F64) + 4 * torch.rand(2, generator=gen, dtype=F64) - 2
    s = start.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [s],
        max_iter=500,
        tolerance_grad=1e-14,
        tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = slpo_loss(s[:1], s[1:], r_w, r_l, alpha=alpha, target_rule=target_rule).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with mp.workdps(40):
        q_w, q_l = mp.exp(refs[0]), mp.exp(refs[1])
        if target_rule == "shift":
            t_w, t_l = q_w + alpha * q_l, (1 - alpha) * q_l
        else:
            t_w, t_l = (1 - alpha) * (q_w + q_l), alpha * (q_w + q_l)
        log_targets = [float(mp.log(t_w)), float(mp.log(t_l))]
    assert s.detach().tolist() == pytest.approx(log_targets, abs=1e-6)
    assert closure().item() == pytest.approx(0.0, abs=1e-12)


def test_float32_inputs_are_computed_in_float64():
    gen = torch.Generator().manual_seed(1)
    refs = [-200 * torch.rand(16, generator=gen) for _ in range(2)]
    inputs32 = [(r + torch.randn(16, generator=gen)).requires_grad_(True) for r in refs] + refs
    loss32 = slpo_loss(*inputs32, alpha=0.7)
    loss64 = slpo_loss(*(x.detach().to(F64) for x in inputs32), alpha=0.7)
    assert loss32.dtype == F64
    torch.testing.assert_close(loss32, loss64, rtol=0, atol=0)
    loss32.sum().backward()
    assert inputs32[0].grad.dtype == torch.float32
    assert torch.isfinite(inputs32[0].grad).all()


def test_each_example_is_independent_of_the_batch():
    gen = torch.Generator().manual_seed(2)
    inputs = [-50 * torch.rand(12, generator=gen, dtype=F64) for _ in range(4)]
    loss = slpo_loss(*inputs, alpha=0.4, target_rule="split")
    perm = torch.randperm(12, generator=gen)
    torch.testing.assert_close(
        slpo_loss(*(x[perm] for x in inputs), alpha=0.4, target_rule="split"),
        loss[perm],
        rtol=0,
        atol=0,
    )
    torch.testing.assert_close(
        slpo_loss(*(x[3:5] for x in inputs), alpha=0.4, target_rule="split"),
        loss[3:5],
        rtol=0,
        atol=0,
    )


def log_gradient_scale(s_w, s_l, r_w, r_l):
    """log of `exp(s - m) / (1 - P)`, the size of the gradient of the `other` term."""
    s = min(max(s_w, s_l) + math.log1p(math.exp(-abs(s_w - s_l))), -(2.0**-52))
    m = max(r_w, r_l) + math.log1p(math.exp(-abs(r_w - r_l)))
    return s - m - math.log(-math.expm1(s))


@pytest.mark.parametrize(("target_rule", "alpha"), [*SETTINGS, ("shift", 0.5), ("split", 1.0)])
def test_finite_loss_and_gradients_over_the_whole_range(target_rule, alpha):
    """Every combination of log-probs in [-10000, -1e-9], s_w == s_l included, and pairs that
    round to more than all the mass (clamped). Left out: where the gradient, of size
    `exp(s - m) / (1 - P)`, is beyond float64 range (over e^700), and so is the exact loss or
    its gradient: the policy gives the pair e^700 times the reference's mass."""
    logps = [-1e-9, -1e-6, -0.01, -0.69, -1.0, -9.0, -80.0, -700.0, -3000.0, -10000.0]
    rows = [row for row in itertools.product(logps, repeat=4) if log_gradient_scale(*row) < 700]
    assert len(rows) > 9000
    s_w, s_l, r_w, r_l = columns(rows)
    s_w.requires_grad_(True)
    s_l.requires_grad_(True)
    loss = slpo_loss(s_w, s_l, r_w, r_l, alpha=alpha, target_rule=target_rule)
    loss.sum().backward()
    assert torch.isfinite(loss).all()
    assert torch.isfinite(s_w.grad).all() and torch.isfinite(s_l.grad).all()


def test_bad_options_raise():
    x = torch.full((2,), -5.0, dtype=F64)
    with pytest.raises(ValueError, match=r"`alpha` must be in \[0, 1\], got 1.5"):
        slpo_loss(x, x, x, x, alpha=1.5)
    with pytest.raises(ValueError, match=r"`alpha` must be in \[0, 1\], got -0.1"):
        slpo_loss(x, x, x, x, alpha=-0.1)
    with pytest.raises(
        ValueError, match=r"`target_rule` must be one of \('shift', 'split'\), got 'swap'"
    ):
        slpo_loss(x, x, x, x, target_rule="swap")
    with pytest.raises(ValueError, match=r"`ref_rejected_logps` has shape \[3\]"):
        slpo_loss(x, x, x, torch.zeros(3))
    with pytest.raises(ValueError, match=r"must have shape \[B\]"):
        slpo_loss(x[None], x[None], x[None], x[None])
