"""Turning stored pairs into one forward batch, without re-tokenizing.

Batch layout, used everywhere in the trainer: for `B` pairs the batch holds `2B` sequences,
`[chosen; rejected]` — rows `0..B-1` are `prompt + chosen` of pairs `0..B-1`, rows `B..2B-1`
are `prompt + rejected` of the same pairs in the same order. Sequences are the shard's token
ids concatenated, right-padded to the longest with `pad_id`.

`labels[i, t]` is the token that position `t` predicts (`input_ids[i, t + 1]`) where that token
is a completion token, and `IGNORE` elsewhere (prompt, padding, last position), so the logits
`[2B, S, V]` line up with `labels` `[2B, S]` without shifting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from train.stream import Pair

IGNORE = -100
"""Label of positions that predict no completion token."""


@dataclass
class Batch:
    """One micro-batch in the `[chosen; rejected]` layout."""

    input_ids: Tensor  # [2B, S] int64
    attention_mask: Tensor  # [2B, S] int64, 0 on padding
    labels: Tensor  # [2B, S] int64, IGNORE outside completions
    ref_per_token_logps: Tensor  # [2B, S] float32, stored reference values aligned with labels
    ref_logps: Tensor  # [2B] float64, stored reference sums
    completion_lengths: Tensor  # [2B] int64, completion tokens (EOS included)
    valid: Tensor  # [B] bool, False on filler pairs (evaluation only)
    ids: list[str]  # [B] pair ids

    @property
    def num_pairs(self) -> int:
        return len(self.ids)

    @property
    def loss_mask(self) -> Tensor:
        """[2B, S] bool: positions whose label is a completion token."""
        return self.labels != IGNORE

    def to(self, device: torch.device | str) -> Batch:
        moved = {
            name: value.to(device) if isinstance(value, Tensor) else value
            for name, value in vars(self).items()
        }
        return Batch(**moved)


def collate(pairs: Sequence[Pair], *, pad_id: int, valid: Sequence[bool] | None = None) -> Batch:
    """Build the `[chosen; rejected]` batch of `pairs` (see the module docstring)."""
    sequences = []  # (prompt ids, completion ids, stored per-token logps, stored sum)
    for name in ("chosen", "rejected"):
        for pair in pairs:
            if len(pair.prompt_ids) == 0:
                raise ValueError(
                    f"pair {pair.id!r} has an empty prompt: its first completion token has no "
                    "position to be predicted from; re-score it with a BOS token in the prompt"
                )
            sequences.append(
                (
                    pair.prompt_ids,
                    getattr(pair, f"{name}_ids"),
                    getattr(pair, f"ref_{name}_logps"),
                    getattr(pair, f"ref_{name}_logp"),
                )
            )
    length = max(len(p) + len(c) for p, c, _, _ in sequences)
    n = len(sequences)
    input_ids = np.full((n, length), pad_id, dtype=np.int64)
    attention_mask = np.zeros((n, length), dtype=np.int64)
    labels = np.full((n, length), IGNORE, dtype=np.int64)
    ref_per_token = np.zeros((n, length), dtype=np.float32)
    for i, (prompt, completion, ref_logps, _) in enumerate(sequences):
        p, c = len(prompt), len(completion)
        input_ids[i, :p] = prompt
        input_ids[i, p : p + c] = completion
        attention_mask[i, : p + c] = 1
        # Position p - 1 + j predicts completion token j.
        labels[i, p - 1 : p - 1 + c] = completion
        ref_per_token[i, p - 1 : p - 1 + c] = ref_logps
    return Batch(
        input_ids=torch.from_numpy(input_ids),
        attention_mask=torch.from_numpy(attention_mask),
        labels=torch.from_numpy(labels),
        ref_per_token_logps=torch.from_numpy(ref_per_token),
        ref_logps=torch.tensor([s for _, _, _, s in sequences], dtype=torch.float64),
        completion_lengths=torch.tensor([len(c) for _, c, _, _ in sequences]),
        valid=torch.tensor(list(valid) if valid is not None else [True] * len(pairs)),
        ids=[pair.id for pair in pairs],
    )
