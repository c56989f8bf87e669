"""The step-0 check: the policy, when it is the scoring model, must reproduce the shards.

Before the first update, the policy's per-token log-probs on the first batch are compared with
the stored reference log-probs. Both come from the same weights and the same token ids, so any
difference beyond the scoring parity tolerance means the two sides disagree on something else:
tokenizer, chat template, dtype, or how the sequences were laid out.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch

from train.collate import Batch
from train.distributed import all_gather_objects, all_reduce
from train.logps import per_token_logps

logger = logging.getLogger(__name__)


class ReferenceMismatchError(RuntimeError):
    """The policy does not reproduce the stored reference log-probs it should equal."""


@dataclass(frozen=True)
class RefCheckResult:
    """Absolute per-token differences (nats) between policy and stored reference log-probs."""

    max_abs_diff: float
    mean_abs_diff: float
    num_tokens: int
    worst_pair_id: str
    atol: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol

    def to_row(self) -> dict[str, float | int | str | bool]:
        return {f"ref_check/{k}": v for k, v in {**asdict(self), "passed": self.passed}.items()}


@torch.no_grad()
def reference_check(model, batch: Batch, *, atol: float, chunk_size: int = 128) -> RefCheckResult:
    """Compare the policy's per-token log-probs on `batch` with the stored ones, on all ranks.

    `model` is the DeepSpeed engine or a plain module; it runs in eval mode for this forward.
    The maximum and the mean are reduced over every rank's first batch.
    """
    was_training = model.training
    model.eval()
    try:
        logits = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).logits  # [2B, S, V]
    finally:
        model.train(was_training)
    policy = per_token_logps(logits, batch.labels, chunk_size=chunk_size)  # [2B, S]
    mask = batch.loss_mask
    diff = (policy - batch.ref_per_token_logps).abs().masked_fill(~mask, 0.0)  # [2B, S]

    local_max = diff.max()
    worst_row = int(diff.amax(dim=1).argmax()) % batch.num_pairs
    stats = torch.tensor([diff.sum().item(), float(mask.sum())], dtype=torch.float64)
    all_reduce(stats, "sum")
    max_diff = all_reduce(local_max.clone().to(torch.float64), "max")
    worst = all_gather_objects((float(local_max), batch.ids[worst_row]))
    worst_id = max(worst)[1]
    return RefCheckResult(
        max_abs_diff=float(max_diff),
        mean_abs_diff=float(stats[0] / stats[1]),
        num_tokens=int(stats[1]),
        worst_pair_id=worst_id,
        atol=atol,
    )


def raise_on_mismatch(result: RefCheckResult, *, model_dir: str, fingerprint: str) -> None:
    """Fail with the numbers and the likely causes when the check did not pass."""
    if result.passed:
        logger.info(
            "step-0 reference check passed: max |diff| %.3g, mean %.3g nats over %d tokens "
            "(tolerance %.3g)",
            result.max_abs_diff,
            result.mean_abs_diff,
            result.num_tokens,
            result.atol,
        )
        return
    raise ReferenceMismatchError(
        f"step-0 reference check failed: the policy {model_dir} has the scoring model's weights "
        f"({fingerprint}), yet its per-token log-probs on the first batch differ from the stored "
        f"reference log-probs by up to {result.max_abs_diff:.4g} nats (mean "
        f"{result.mean_abs_diff:.4g} over {result.num_tokens} completion tokens; worst pair "
        f"{result.worst_pair_id!r}; tolerance {result.atol:g}). Likely a tokenizer, chat "
        "template or dtype difference between scoring and training: train in the dtype the "
        "shards were scored in, or re-score; --skip-ref-check trains anyway"
    )
