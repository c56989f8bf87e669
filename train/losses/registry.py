"""Which inputs and options each loss takes, so the trainer can run any of them by name."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from train.losses.dpo import cdpo_loss, dpo_loss, ipo_loss
from train.losses.slpo import slpo_loss
from train.losses.tempered import slpo_tempered_loss


@dataclass(frozen=True)
class LossSpec:
    """How to call one loss.

    Every loss is called as `fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
    ref_rejected_logps, **extra, **options)` and returns per-example losses [B].
    """

    fn: Callable[..., Tensor]
    """The loss function."""
    wants_means: bool
    """Pass per-token mean log-probs (sum / token count, policy and reference) instead of sums."""
    wants_complements: bool
    """Pass `policy_chosen_complement_logps` and `policy_rejected_complement_logps`, [B] each,
    the policy's `log(1 - pi(y|x))` from `sequence_complement_logps`."""
    wants_token_counts: bool
    """Pass `chosen_temperatures` and `rejected_temperatures`, [B] each: the completions' token
    counts (EOS included), the tempered loss's default temperatures."""
    options: frozenset[str]
    """Keyword options the loss accepts, e.g. `beta`, `alpha`."""

    def select_options(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of `config` this loss accepts (others belong to other losses)."""
        return {name: value for name, value in config.items() if name in self.options}


_PAIR = {"wants_means": False, "wants_complements": False, "wants_token_counts": False}

LOSSES: dict[str, LossSpec] = {
    "slpo": LossSpec(slpo_loss, **_PAIR, options=frozenset({"alpha", "target_rule"})),
    "slpo_tempered": LossSpec(
        slpo_tempered_loss,
        wants_means=False,
        wants_complements=True,
        wants_token_counts=True,
        options=frozenset({"alpha", "target_rule"}),
    ),
    "dpo": LossSpec(dpo_loss, **_PAIR, options=frozenset({"beta", "label_smoothing"})),
    "cdpo": LossSpec(cdpo_loss, **_PAIR, options=frozenset({"beta", "label_smoothing"})),
    "ipo": LossSpec(
        ipo_loss,
        wants_means=True,
        wants_complements=False,
        wants_token_counts=False,
        options=frozenset({"beta"}),
    ),
}
"""Every loss by name. `cdpo` is `dpo` with `label_smoothing` in (0, 0.5), required."""


def get_loss_spec(name: str) -> LossSpec:
    """The `LossSpec` registered under `name`; a clear error naming the choices otherwise."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}.") from None
