"""Batch metrics from the four per-example log-probs, under TRL's names plus SLPO's own."""

import torch
from torch import Tensor

from train.losses.numerics import as_float64, check_alpha, check_target_rule, target_shares


@torch.no_grad()
def loss_metrics(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 1.0,
    target_rule: str = "shift",
) -> dict[str, Tensor]:
    """Batch means as 0-dim float64 tensors on the inputs' device (no host sync).

    Inputs are the same [B] log-probs the loss saw. Keys:

    - `rewards/chosen`, `rewards/rejected`: `beta (s_w - r_w)`, `beta (s_l - r_l)`;
      `rewards/margins` their difference; `rewards/accuracies` the fraction of pairs with
      `rewards/chosen > rewards/rejected`.
    - `logps/chosen`, `logps/rejected`: `s_w`, `s_l`.
    - `slpo/policy_chosen_share`: the policy's share of the pair's mass,
      `exp(s_w) / (exp(s_w) + exp(s_l))`, and `slpo/target_chosen_share`: the target's,
      `t_w / M` (from `alpha` and `target_rule`, as in `slpo_loss`). SLPO moves the first
      towards the second.
    - `slpo/pair_log_mass_ratio`: `log(P / M) = logaddexp(s_w, s_l) - logaddexp(r_w, r_l)`,
      0 when the pair keeps its reference mass, as SLPO asks.
    """
    check_alpha(alpha)
    check_target_rule(target_rule)
    s_w, s_l, r_w, r_l = as_float64(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    chosen_rewards = beta * (s_w - r_w)  # [B]
    rejected_rewards = beta * (s_l - r_l)  # [B]
    target_chosen_share, _ = target_shares(r_w, r_l, alpha, target_rule)
    pair_log_mass_ratio = torch.logaddexp(s_w, s_l) - torch.logaddexp(r_w, r_l)
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).to(torch.float64).mean(),
        "logps/chosen": s_w.mean(),
        "logps/rejected": s_l.mean(),
        "slpo/policy_chosen_share": torch.sigmoid(s_w - s_l).mean(),
        "slpo/target_chosen_share": target_chosen_share.mean(),
        "slpo/pair_log_mass_ratio": pair_log_mass_ratio.mean(),
    }
