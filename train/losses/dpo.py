"""DPO-family baselines on the same four per-example log-probs: DPO, cDPO, IPO."""

from torch import Tensor
from torch.nn.functional import softplus

from train.losses.numerics import as_float64, check_beta


def _check_label_smoothing(label_smoothing: float, *, positive: bool) -> None:
    low = "(0" if positive else "[0"
    ok = 0.0 < label_smoothing < 0.5 if positive else 0.0 <= label_smoothing < 0.5
    if not ok:
        fix = " (cDPO needs label smoothing; use the `dpo` loss for none)" if positive else ""
        raise ValueError(f"`label_smoothing` must be in {low}, 0.5), got {label_smoothing}{fix}.")


def _log_ratio_margin(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
) -> Tensor:
    """`h = (s_w - r_w) - (s_l - r_l)`, [B], float64."""
    s_w, s_l, r_w, r_l = as_float64(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    return (s_w - r_w) - (s_l - r_l)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Per-example DPO loss (Rafailov et al., 2023, Eq. 7), shape [B], float64.

    Inputs are sequence log-probs (sums over the completion tokens), each [B]. With the margin
    `h = (s_w - r_w) - (s_l - r_l)` and label smoothing `eps` (conservative DPO, cDPO: the
    preference label is taken to be flipped with probability `eps`):

        L = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
          = softplus(-beta h) + eps beta h

    At the reference (`h = 0`) the loss is `ln 2` whatever `eps`. `eps` must be in [0, 0.5).
    """
    check_beta(beta)
    _check_label_smoothing(label_smoothing, positive=False)
    logits = beta * _log_ratio_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return (1.0 - label_smoothing) * softplus(-logits) + label_smoothing * softplus(logits)


def cdpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Conservative DPO: `dpo_loss` with label smoothing `eps` in (0, 0.5), required.

    Inputs are sequence log-probs, each [B]; returns [B], float64. See `dpo_loss` for the
    equation. An `eps` of 0 (the default) raises: it would silently be plain DPO.
    """
    _check_label_smoothing(label_smoothing, positive=True)
    return dpo_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta=beta,
        label_smoothing=label_smoothing,
    )


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> Tensor:
    """Per-example IPO loss (Azar et al., 2023, Eq. 17), shape [B], float64.

    Inputs are per-token MEAN log-probs, each [B]: a completion's summed log-prob divided by
    its token count, for policy and reference alike (as TRL does; sums would make the target
    margin depend on completion length). With `h = (s_w - r_w) - (s_l - r_l)` on those means:

        L = (h - 1 / (2 beta))^2

    At the reference (`h = 0`) the loss is `1 / (4 beta^2)`.
    """
    check_beta(beta)
    margin = _log_ratio_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return (margin - 1.0 / (2.0 * beta)) ** 2
