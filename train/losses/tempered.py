"""The tempered SLPO variant: two binary problems, each tempered by a per-example temperature."""

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from train.losses.numerics import (
    MAX_LOG_MASS,
    as_float64,
    check_alpha,
    check_target_rule,
    log1mexp,
    target_logps,
)


def _binary_kl(target_logit: Tensor, policy_logit: Tensor) -> Tensor:
    """`KL(Bern(sigmoid(target_logit)) || Bern(sigmoid(policy_logit)))`, elementwise; 0 log 0 = 0."""
    a, a_bar = torch.sigmoid(target_logit), torch.sigmoid(-target_logit)
    return (
        torch.xlogy(a, a)
        - a * logsigmoid(policy_logit)
        + torch.xlogy(a_bar, a_bar)
        - a_bar * logsigmoid(-policy_logit)
    )


def slpo_tempered_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    policy_chosen_complement_logps: Tensor | None = None,
    policy_rejected_complement_logps: Tensor | None = None,
    chosen_temperatures: Tensor | None = None,
    rejected_temperatures: Tensor | None = None,
    alpha: float = 1.0,
    target_rule: str = "shift",
) -> Tensor:
    """Per-example tempered SLPO loss, shape [B], float64.

    Inputs, each [B]: sequence log-probs `s_w`, `s_l`, `r_w`, `r_l` as for `slpo_loss`; the
    policy's complements `c_w = log(1 - pi(y_w|x))`, `c_l` (from `sequence_complement_logps`);
    temperatures `T_w`, `T_l` > 0, by default each completion's token count (the caller passes
    them; `None` means 1, no tempering). The targets `t_w`, `t_l` follow `target_rule` and
    `alpha` exactly as in `slpo_loss`.

    SLPO's three-outcome problem is split into two binary ones, {y_w, not y_w} with target
    `(t_w, 1 - t_w)` and {y_l, not y_l} with target `(t_l, 1 - t_l)`. Each binary distribution,
    target and policy alike, is tempered: its log-probs are divided by `T` and renormalised
    over the two outcomes, so it becomes a Bernoulli with logit (log-odds) divided by `T`:

        target:  a_k = sigmoid((log t_k - log(1 - t_k)) / T_k)
        policy:  b_k = sigmoid((s_k - c_k) / T_k)                      k in {w, l}

    The loss averages the pointwise KL terms of the four outcomes:

        L = 1/4 sum_k [ a_k log(a_k / b_k) + (1 - a_k) log((1 - a_k) / (1 - b_k)) ]

    It is not divided by `M`: tempering by the token count keeps the logits of order one.

    When a complement is `None` it is computed as `log1mexp(s)` in float64. That is exact for
    the given `s`, but `s` itself (a float32 sum) carries rounding: when `s` is within that
    rounding of 0 (a completion the policy is nearly sure of) the fallback is inexact, and the
    logits-based complement is needed. `log(1 - t_k)` of the constant target uses `log1mexp`.
    """
    check_alpha(alpha)
    check_target_rule(target_rule)
    s_w, s_l, r_w, r_l = as_float64(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    optional = {
        "policy_chosen_complement_logps": policy_chosen_complement_logps,
        "policy_rejected_complement_logps": policy_rejected_complement_logps,
        "chosen_temperatures": chosen_temperatures,
        "rejected_temperatures": rejected_temperatures,
    }
    given = {name: t for name, t in optional.items() if t is not None}
    checked = dict(zip(given, as_float64(policy_chosen_logps=s_w, **given)[1:], strict=True))
    c_w = checked.get("policy_chosen_complement_logps")
    c_l = checked.get("policy_rejected_complement_logps")
    if c_w is None:
        c_w = log1mexp(s_w.clamp(max=MAX_LOG_MASS))
    if c_l is None:
        c_l = log1mexp(s_l.clamp(max=MAX_LOG_MASS))
    t_w_temp = checked.get("chosen_temperatures", torch.ones_like(s_w))
    t_l_temp = checked.get("rejected_temperatures", torch.ones_like(s_l))

    log_t_w, log_t_l = target_logps(r_w, r_l, alpha, target_rule)
    target_logit_w = (log_t_w - log1mexp(log_t_w.clamp(max=MAX_LOG_MASS))) / t_w_temp
    target_logit_l = (log_t_l - log1mexp(log_t_l.clamp(max=MAX_LOG_MASS))) / t_l_temp
    chosen = _binary_kl(target_logit_w, (s_w - c_w) / t_w_temp)
    rejected = _binary_kl(target_logit_l, (s_l - c_l) / t_l_temp)
    return (chosen + rejected) / 4.0
