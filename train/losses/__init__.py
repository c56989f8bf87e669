"""Preference losses on per-example sequence log-probs [B], and their metrics.

Every loss takes the policy's and the reference's log-probs of the chosen and the rejected
completion, each of shape [B] (float32 or float64), computes in float64 and returns the
per-example losses [B]. `LOSSES` says which inputs and options each one wants.
"""

from train.losses.complement import sequence_complement_logps
from train.losses.dpo import cdpo_loss, dpo_loss, ipo_loss
from train.losses.metrics import loss_metrics
from train.losses.registry import LOSSES, LossSpec, get_loss_spec
from train.losses.slpo import slpo_loss
from train.losses.tempered import slpo_tempered_loss

__all__ = [
    "LOSSES",
    "LossSpec",
    "cdpo_loss",
    "dpo_loss",
    "get_loss_spec",
    "ipo_loss",
    "loss_metrics",
    "sequence_complement_logps",
    "slpo_loss",
    "slpo_tempered_loss",
]
