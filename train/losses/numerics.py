"""Shared numerics for the preference losses: input checks, `log1mexp`, `phi`, SLPO targets.

Every loss takes four per-example sequence log-probs of shape [B] (policy chosen, policy
rejected, reference chosen, reference rejected) and computes in float64.
"""

import math

import torch
from torch import Tensor

TARGET_RULES = ("shift", "split")

# Largest log-mass we evaluate `log(1 - exp(x))` at. Two distinct sequences cannot hold more
# than all of the mass, but sums rounded near 0 can say they do (`exp(s_w) + exp(s_l) > 1`);
# clamping keeps every log finite there (the gradient through the clamp is 0).
MAX_LOG_MASS = -(2.0**-52)

# Below this `x`, `phi(x) = -log1p(-x) / x` is evaluated by its series: the closed form is 0/0
# at x = 0 and its autograd derivative cancels catastrophically for tiny x.
_PHI_SERIES_BELOW = 1e-4
_LOG_PHI_SERIES_BELOW = math.log(_PHI_SERIES_BELOW)


def check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(
            f"`alpha` must be in [0, 1], got {alpha}: it is the share of the pair's reference "
            "mass moved by the target rule."
        )


def check_target_rule(target_rule: str) -> None:
    if target_rule not in TARGET_RULES:
        raise ValueError(f"`target_rule` must be one of {TARGET_RULES}, got {target_rule!r}.")


def check_beta(beta: float) -> None:
    if not (beta > 0.0 and math.isfinite(beta)):
        raise ValueError(f"`beta` must be a finite number > 0, got {beta}.")


def as_float64(**named: Tensor) -> list[Tensor]:
    """Check that the named tensors share one [B] shape and return them upcast to float64."""
    shapes = {name: tuple(t.shape) for name, t in named.items()}
    first_name, first_shape = next(iter(shapes.items()))
    if len(first_shape) != 1:
        raise ValueError(
            f"`{first_name}` must have shape [B] (one sequence log-prob per example), "
            f"got shape {list(first_shape)}."
        )
    for name, shape in shapes.items():
        if shape != first_shape:
            raise ValueError(
                f"`{name}` has shape {list(shape)} but `{first_name}` has shape "
                f"{list(first_shape)}: pass one value per example for every input."
            )
    return [t.to(torch.float64) for t in named.values()]


def log1mexp(x: Tensor) -> Tensor:
    """`log(1 - exp(x))` for x < 0, accurate over the whole range (Maechler's switch at -ln 2).

    Both branches see only inputs where they are accurate, so their gradients stay finite.
    """
    near_zero = x > -math.log(2.0)
    x_near = torch.where(near_zero, x, -1.0)
    x_far = torch.where(near_zero, -1.0, x)
    return torch.where(near_zero, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


def phi_of_log(a: Tensor) -> Tensor:
    """`phi(exp(a))` with `phi(x) = -log1p(-x) / x` for a < 0; `phi -> 1` as `x -> 0`.

    For x below 1e-4 the series `1 + x/2 + x^2/3 + x^3/4 + x^4/5` (truncation error < 2e-21);
    above it `-log1mexp(a) * exp(-a)`, which never forms `1 - x` by cancellation.
    """
    small = a < _LOG_PHI_SERIES_BELOW
    x = torch.exp(torch.where(small, a, -math.inf))
    series = 1.0 + x * (1.0 / 2 + x * (1.0 / 3 + x * (1.0 / 4 + x / 5)))
    a_large = torch.where(small, -1.0, a)
    closed = -log1mexp(a_large) * torch.exp(-a_large)
    return torch.where(small, series, closed)


def target_shares(
    ref_chosen_logps: Tensor, ref_rejected_logps: Tensor, alpha: float, target_rule: str
) -> tuple[Tensor, Tensor]:
    """The target's shares of the pair's mass, `pi_w = t_w / M` and `pi_l = t_l / M`, each [B].

    With the reference shares `sigma_w = q_w / M`, `sigma_l = q_l / M`:
    `shift`: `pi_w = sigma_w + alpha * sigma_l`, `pi_l = (1 - alpha) * sigma_l`;
    `split`: `pi_w = 1 - alpha`, `pi_l = alpha`.
    """
    if target_rule == "split":
        return (
            torch.full_like(ref_chosen_logps, 1.0 - alpha),
            torch.full_like(ref_chosen_logps, alpha),
        )
    sigma_w = torch.sigmoid(ref_chosen_logps - ref_rejected_logps)
    sigma_l = torch.sigmoid(ref_rejected_logps - ref_chosen_logps)
    return sigma_w + alpha * sigma_l, (1.0 - alpha) * sigma_l


def target_logps(
    ref_chosen_logps: Tensor, ref_rejected_logps: Tensor, alpha: float, target_rule: str
) -> tuple[Tensor, Tensor]:
    """`log t_w` and `log t_l`, each [B]; `-inf` where a rule gives a completion no mass."""
    log_alpha = math.log(alpha) if alpha > 0.0 else -math.inf
    log_keep = math.log1p(-alpha) if alpha < 1.0 else -math.inf
    if target_rule == "split":
        pair_logps = torch.logaddexp(ref_chosen_logps, ref_rejected_logps)
        return pair_logps + log_keep, pair_logps + log_alpha
    chosen = torch.logaddexp(ref_chosen_logps, ref_rejected_logps + log_alpha)
    return chosen, ref_rejected_logps + log_keep
