"""SLPO: soft-target cross-entropy of the policy against a reallocated reference distribution."""

import torch
from torch import Tensor

from train.losses.numerics import (
    MAX_LOG_MASS,
    as_float64,
    check_alpha,
    check_target_rule,
    phi_of_log,
    target_shares,
)


def slpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    alpha: float = 1.0,
    target_rule: str = "shift",
) -> Tensor:
    """Per-example SLPO loss `KL(t || p) / M`, shape [B], float64.

    Inputs are sequence log-probs (sums over the completion tokens, EOS included), each [B],
    float32 or float64: `s_w`, `s_l` (policy) and `r_w`, `r_l` (reference). With
    `q = exp(r)` and the pair's reference mass `M = q_w + q_l`, SLPO compares two
    distributions over the outcomes {chosen, rejected, any other sequence}:

        target:  t_w,       t_l,       1 - M       (t_w + t_l = M)
        policy:  exp(s_w),  exp(s_l),  1 - P       (P = exp(s_w) + exp(s_l))

    `target_rule` moves mass inside the pair and leaves the rest where the reference had it:

        shift (default):  t_w = q_w + alpha * q_l,   t_l = (1 - alpha) * q_l
        split:            t_w = (1 - alpha) * M,     t_l = alpha * M

    `alpha = 1` with `shift` gives the whole pair's mass to the chosen completion.

    Reading of the draft paper. It writes `log(w_w * pi(y_w|x))`; taken literally the weights
    are constants with no gradient, so the weight multiplies the log instead: the soft-target
    cross-entropy `-[t_w s_w + t_l s_l + (1 - M) log(1 - P)]`. Its `split` formula puts
    `alpha` on the other side of its own prose; the prose is followed. The cross-entropy is
    divided by `M` (a per-example constant: the optimum is unchanged and every pair weighs the
    same) and the target's entropy is subtracted (no gradient), giving `KL(t || p) / M`: zero
    exactly at the target `exp(s_w) = t_w`, `exp(s_l) = t_l`, never negative.

    Evaluated without underflow or cancellation, with the shares `pi_w = t_w / M`,
    `pi_l = t_l / M`, `m = logaddexp(r_w, r_l)`, `s = logaddexp(s_w, s_l)` and
    `phi(x) = -log1p(-x) / x`:

        L = pi_w (log pi_w + m - s_w) + pi_l (log pi_l + m - s_l)
            + (1 - M) (exp(s - m) phi(P) - phi(M))

    This is exact (rounding aside: about eps * |m| absolute, so it can read -1e-13 at the
    target). `0 log 0 = 0`; `s` and `m` are clamped just below 0, since a pair cannot hold more
    than all the mass (sums rounded near 0 can claim it). The gradient of the last term has
    size `exp(s - m) / (1 - P)`: past e^709 (the policy gives the pair about e^709 times the
    reference's mass) the exact loss or its gradient is beyond float64 range and overflows;
    a float32 gradient flowing back into float32 sums overflows past e^88.
    """
    check_alpha(alpha)
    check_target_rule(target_rule)
    s_w, s_l, r_w, r_l = as_float64(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    pi_w, pi_l = target_shares(r_w, r_l, alpha, target_rule)
    m = torch.logaddexp(r_w, r_l).clamp(max=MAX_LOG_MASS)
    s = torch.logaddexp(s_w, s_l).clamp(max=MAX_LOG_MASS)

    pair = torch.xlogy(pi_w, pi_w) + pi_w * (m - s_w) + torch.xlogy(pi_l, pi_l) + pi_l * (m - s_l)
    # (1 - M) / M * log((1 - M) / (1 - P)), written so that nothing underflows when M is tiny.
    other = -torch.expm1(m) * (torch.exp(s - m) * phi_of_log(s) - phi_of_log(m))
    return pair + other
