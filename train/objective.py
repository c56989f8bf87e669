"""From one forward's logits to the per-example losses, through the loss registry only.

The trainer does not know which loss it runs: it reads the loss's `LossSpec` flags to decide
what to pass (sums or per-token means, complements, token counts) and calls `spec.fn`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from train.collate import Batch
from train.logps import per_token_logps
from train.losses import LOSSES, LossSpec, loss_metrics, sequence_complement_logps


@dataclass
class LossOutput:
    """One micro-batch's losses and what they were computed from."""

    losses: Tensor  # [B] float64, per-example losses
    inputs: tuple[Tensor, Tensor, Tensor, Tensor]  # the four [B] log-probs the loss saw
    num_tokens: int  # non-padding tokens in the forward
    valid: Tensor | None = None  # [B] bool, False on evaluation filler pairs


class Objective:
    """A named loss with its options, applied to `[chosen; rejected]` logits."""

    def __init__(self, name: str, options: dict[str, Any], *, chunk_size: int = 128):
        self.spec: LossSpec = LOSSES[name]
        self.name = name
        self.options = self.spec.select_options(options)
        self.metric_options = {k: options[k] for k in ("beta", "alpha", "target_rule")}
        self.chunk_size = chunk_size

    def __call__(self, logits: Tensor, batch: Batch) -> LossOutput:
        """`logits` [2B, S, V] from the forward of `batch.input_ids`."""
        b = batch.num_pairs
        policy_per_token = per_token_logps(logits, batch.labels, chunk_size=self.chunk_size)
        policy_logps = policy_per_token.to(torch.float64).sum(-1)  # [2B]
        ref_logps = batch.ref_logps  # [2B] float64
        if self.spec.wants_means:
            lengths = batch.completion_lengths.to(torch.float64)
            policy_logps = policy_logps / lengths
            ref_logps = ref_logps / lengths

        extra: dict[str, Tensor] = {}
        if self.spec.wants_complements:
            complements = sequence_complement_logps(
                logits, batch.labels, batch.loss_mask, chunk_size=self.chunk_size
            )  # [2B]
            extra["policy_chosen_complement_logps"] = complements[:b]
            extra["policy_rejected_complement_logps"] = complements[b:]
        if self.spec.wants_token_counts:
            lengths = batch.completion_lengths.to(torch.float64)
            extra["chosen_temperatures"] = lengths[:b]
            extra["rejected_temperatures"] = lengths[b:]

        inputs = (policy_logps[:b], policy_logps[b:], ref_logps[:b], ref_logps[b:])
        losses = self.spec.fn(*inputs, **extra, **self.options)  # [B]
        return LossOutput(losses, inputs, int(batch.attention_mask.sum()), batch.valid)

    def metrics(self, output: LossOutput, valid: Tensor | None = None) -> dict[str, Tensor]:
        """0-dim float64 tensors: `loss` and the loss metrics, over the valid pairs."""
        losses, inputs = output.losses, output.inputs
        if valid is not None:
            losses = losses[valid]
            inputs = tuple(t[valid] for t in inputs)
        detached = tuple(t.detach() for t in inputs)
        return {
            "loss": losses.detach().mean(),
            **loss_metrics(*detached, **self.metric_options),
        }
