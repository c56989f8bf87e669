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
    """`KL(Bern(sigmoid(target_logit)) || Bern(sigmoid(policy_logit)))`, elementwise.

    `0 log 0 = 0`, so an infinite target logit (a completion the target gives no mass) is fine.
    """
    a, a_bar = torch.sigmoid(target_logit), torch.sigmoid(-target_logit)
    return (
        torch.xlogy(a, a)
        - a * logsigmoid(policy_logit)
        + torch.xlogy(a_bar, a_bar)
        - a_bar * logsigmoid(-policy_logit)
    )


def _tempered_log_odds(
    logps: Tensor, complement_logps: Tensor | None, temperatures: Tensor | None
) -> Tensor:
    """`(log p - log(1 - p)) / T`, [B] float64: the log-odds of a binary distribution
    `(p, 1 - p)` tempered by `T`. `log(1 - p)` defaults to `log1mexp(log p)`, `T` to 1."""
    if complement_logps is None:
        complement_logps = log1mexp(logps.clamp(max=MAX_LOG_MASS))
    log_odds = logps - complement_logps.to(torch.float64)
    if temperatures is None:
        return log_odds
    return log_odds / temperatures.to(torch.float64)


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
    # Only to check that the optional inputs have the same [B] shape.
    as_float64(
        policy_chosen_logps=s_w, **{name: t for name, t in optional.items() if t is not None}
    )

    log_t_w, log_t_l = target_logps(r_w, r_l, alpha, target_rule)
    chosen = _binary_kl(
        _tempered_log_odds(log_t_w, None, chosen_temperatures),
        _tempered_log_odds(s_w, policy_chosen_complement_logps, chosen_temperatures),
    )
    rejected = _binary_kl(
        _tempered_log_odds(log_t_l, None, rejected_temperatures),
        _tempered_log_odds(s_l, policy_rejected_complement_logps, rejected_temperatures),
    )
    return (chosen + rejected) / 4.0
