"""The policy's per-token log-probs, gathered from the logits a chunk of positions at a time."""

from __future__ import annotations

import torch
from torch import Tensor

from train.collate import IGNORE


def per_token_logps(logits: Tensor, labels: Tensor, *, chunk_size: int = 128) -> Tensor:
    """`log softmax(logits)[label]` at every labelled position, 0 elsewhere: [N, S] float32.

    `logits` [N, S, V] (any float dtype) and `labels` [N, S] are aligned (`logits[:, t]` scores
    `labels[:, t]`; `IGNORE` marks unlabelled positions). Each chunk of `chunk_size` positions
    computes `logit[label] - logsumexp(logits)` in float32; no full log-softmax is formed.
    For float32 logits the only tensors autograd keeps are the logits themselves and the
    [N, chunk] results; lower-precision logits add one float32 copy per chunk (at most one
    [N, S, V] float32 buffer over the sequence).
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(
            f"logits {list(logits.shape)} and labels {list(labels.shape)} must agree on [N, S]"
        )
    mask = labels != IGNORE  # [N, S]
    safe_labels = torch.where(mask, labels, 0)
    chunks = []
    for start in range(0, logits.shape[1], chunk_size):
        chunk = logits[:, start : start + chunk_size].float()  # [N, c, V]; a view if float32
        index = safe_labels[:, start : start + chunk_size].unsqueeze(-1)  # [N, c, 1]
        label_logits = chunk.gather(-1, index).squeeze(-1)  # [N, c]
        chunks.append(label_logits - torch.logsumexp(chunk, dim=-1))
    logps = torch.cat(chunks, dim=1)  # [N, S]
    return logps.masked_fill(~mask, 0.0)
