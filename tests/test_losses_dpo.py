"""DPO, cDPO and IPO against hand-derived values.

With `h = (s_w - r_w) - (s_l - r_l)` and beta = 0.1, the three DPO cases below are
    1. policy (-0.5, -0.1), reference (-0.5, -0.1):  h = 0,                    L = ln 2
    2. policy (-10, -30),   reference (-10.1, -20.1): h = 0.1 - (-9.9) = 10,   L = ln(1 + e^-1)
    3. policy (-1, -21),    reference (-0.1, -0.1):   h = -0.9 - (-20.9) = 20, L = ln(1 + e^-2)
that is 0.693147, 0.313262, 0.126928. cDPO with eps: `-(1 - eps) log sig(bh) - eps log sig(-bh)`
and `log sig(x) - log sig(-x) = x`, so `L = softplus(-bh) + eps bh`: with eps = 0.1 the cases
give ln 2, 0.313262 + 0.1 = 0.413262, 0.126928 + 0.2 = 0.326928.
"""

import math

import pytest
import torch

from train.losses import cdpo_loss, dpo_loss, ipo_loss

F64 = torch.float64
POLICY = ([-0.5, -10.0, -1.0], [-0.1, -30.0, -21.0])
REFERENCE = ([-0.5, -10.1, -0.1], [-0.1, -20.1, -0.1])


def tensors(chosen, rejected, dtype=F64):
    return torch.tensor(chosen, dtype=dtype), torch.tensor(rejected, dtype=dtype)


def test_dpo_hand_values():
    loss = dpo_loss(*tensors(*POLICY), *tensors(*REFERENCE), beta=0.1)
    assert loss.tolist() == pytest.approx([0.693147, 0.313262, 0.126928], abs=5e-7)
    exact = [math.log(2), math.log1p(math.exp(-1)), math.log1p(math.exp(-2))]
    assert loss.tolist() == pytest.approx(exact, rel=1e-14)


def test_cdpo_hand_values():
    loss = cdpo_loss(*tensors(*POLICY), *tensors(*REFERENCE), beta=0.1, label_smoothing=0.1)
    assert loss.tolist() == pytest.approx([0.693147, 0.413262, 0.326928], abs=5e-7)
    same = dpo_loss(*tensors(*POLICY), *tensors(*REFERENCE), beta=0.1, label_smoothing=0.1)
    torch.testing.assert_close(loss, same, rtol=0, atol=0)


def test_ipo_hand_values():
    """IPO takes per-token means. beta = 0.1: target margin 1 / (2 beta) = 5. Policy means
    (-1, -2), reference means (-1.5, -1.5): h = 0.5 + 0.5 = 1, L = (1 - 5)^2 = 16; at the
    reference h = 0, L = 25. beta = 0.5: target 1; policy (-0.5, -1), reference
    (-0.75, -0.75): h = 0.5, L = 0.25."""
    loss = ipo_loss(*tensors([-1.0, -1.5], [-2.0, -1.5]), *tensors([-1.5, -1.5], [-1.5, -1.5]))
    assert loss.tolist() == pytest.approx([16.0, 25.0], rel=1e-15)
    loss = ipo_loss(*tensors([-0.5], [-1.0]), *tensors([-0.75], [-0.75]), beta=0.5)
    assert loss.item() == pytest.approx(0.25, rel=1e-15)


def test_dpo_is_ln2_at_the_reference_whatever_the_inputs():
    gen = torch.Generator().manual_seed(0)
    ref_w, ref_l = (-3000 * torch.rand(64, generator=gen) for _ in range(2))
    for label_smoothing in (0.0, 0.3):
        loss = dpo_loss(ref_w, ref_l, ref_w, ref_l, beta=0.7, label_smoothing=label_smoothing)
        torch.testing.assert_close(loss, torch.full_like(loss, math.log(2)), rtol=1e-15, atol=0)


def test_gradients_match_the_derivative_in_the_margin():
    """dL/dh = beta (eps - sigmoid(-beta h)) for (c)DPO and 2 (h - 1/(2 beta)) for IPO; s_w
    enters h with +1 and s_l with -1. Margins up to 1e4 stay finite."""
    gen = torch.Generator().manual_seed(1)
    s_w, s_l = (-10000 * torch.rand(32, generator=gen, dtype=F64) for _ in range(2))
    r_w, r_l = (-10000 * torch.rand(32, generator=gen, dtype=F64) for _ in range(2))
    h = (s_w - r_w) - (s_l - r_l)
    beta, eps = 0.2, 0.15
    cases = [
        (
            lambda *x: dpo_loss(*x, beta=beta, label_smoothing=eps),
            beta * (eps - torch.sigmoid(-beta * h)),
        ),
        (lambda *x: ipo_loss(*x, beta=beta), 2 * (h - 1 / (2 * beta))),
    ]
    for loss_fn, d_loss_d_margin in cases:
        policy = [s_w.clone().requires_grad_(True), s_l.clone().requires_grad_(True)]
        loss = loss_fn(*policy, r_w, r_l)
        loss.sum().backward()
        assert torch.isfinite(loss).all()
        torch.testing.assert_close(policy[0].grad, d_loss_d_margin, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(policy[1].grad, -d_loss_d_margin, rtol=1e-12, atol=1e-15)


def test_float32_inputs_are_computed_in_float64_and_examples_are_independent():
    inputs32 = [*tensors(*POLICY, dtype=torch.float32), *tensors(*REFERENCE, dtype=torch.float32)]
    for loss_fn in (dpo_loss, ipo_loss):
        loss32 = loss_fn(*inputs32)
        assert loss32.dtype == F64
        torch.testing.assert_close(loss32, loss_fn(*(x.to(F64) for x in inputs32)), rtol=0, atol=0)
        perm = torch.tensor([2, 0, 1])
        torch.testing.assert_close(
            loss_fn(*(x[perm] for x in inputs32)), loss32[perm], rtol=0, atol=0
        )


def test_bad_options_raise():
    x = torch.full((2,), -5.0)
    with pytest.raises(ValueError, match=r"`beta` must be a finite number > 0, got 0"):
        dpo_loss(x, x, x, x, beta=0)
    with pytest.raises(ValueError, match=r"`beta` must be a finite number > 0, got -1"):
        ipo_loss(x, x, x, x, beta=-1)
    with pytest.raises(ValueError, match=r"`label_smoothing` must be in \[0, 0.5\), got 0.5"):
        dpo_loss(x, x, x, x, label_smoothing=0.5)
    with pytest.raises(ValueError, match=r"must be in \(0, 0.5\), got 0.0 \(cDPO needs label"):
        cdpo_loss(x, x, x, x)
    with pytest.raises(ValueError, match=r"`ref_chosen_logps` has shape \[1\]"):
        dpo_loss(x, x, x[:1], x)
