"""`log(1 - pi(y|x))` of a whole completion, from the logits, without cancellation."""

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_inputs(logits: Tensor, labels: Tensor, mask: Tensor, chunk_size: int) -> None:
    if logits.dim() != 3:
        raise ValueError(f"`logits` must have shape [B, S, V], got {list(logits.shape)}.")
    for name, t in (("labels", labels), ("mask", mask)):
        if tuple(t.shape) != tuple(logits.shape[:2]):
            raise ValueError(
                f"`{name}` must have shape [B, S] = {list(logits.shape[:2])} to match `logits`, "
                f"got {list(t.shape)}."
            )
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size}.")


def sequence_complement_logps(
    logits: Tensor, labels: Tensor, mask: Tensor, *, chunk_size: int = 64
) -> Tensor:
    """`log(1 - pi(y|x))` per sequence, shape [B], float64, differentiable in `logits`.

    `logits` [B, S, V] and `labels` [B, S] are aligned (`logits[:, t]` predicts `labels[:, t]`);
    `mask` [B, S] is 1 on completion tokens (EOS included), 0 elsewhere (labels there are
    ignored and may be -100). With `p_t` the policy's probability of `y_t` at completion
    position `t`, `1 - prod_t p_t = sum_t (prod_{u<t} p_u) (1 - p_t)`, so

        log(1 - pi(y|x)) = logsumexp_t [ sum_{u<t} log p_u + log(1 - p_t) ]
        log(1 - p_t)     = logsumexp_{v != y_t} z_tv - logsumexp_v z_tv      (z = logits)

    The second line sums the other tokens' probabilities directly, so `1 - p` is never formed
    by subtraction: the result is accurate (to the logits' precision, float32 or float64)
    even when `pi(y|x)` is within rounding of 1, where `log1mexp` of a summed log-prob is not.
    Sums over positions are in float64.

    Memory: positions are processed `chunk_size` at a time. Each chunk makes one copy of its
    logits with the label entries set to -inf ([B, chunk, V], float32, or float64 for float64
    logits); autograd keeps these copies for the backward pass, so over the whole sequence
    they add up to one extra [B, S, V] buffer, plus the transient work space of one chunk's
    logsumexp. The label logits are gathered, never copied whole, and the all-token
    normaliser is `logaddexp(others, label)`, so no second [B, S, V] copy is made even for
    bfloat16 logits.
    """
    _check_inputs(logits, labels, mask, chunk_size)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    completion = mask.to(torch.bool)  # [B, S]
    safe_labels = torch.where(completion, labels, 0).long()

    token_logps, other_logps = [], []
    for start in range(0, logits.shape[1], chunk_size):
        chunk = logits[:, start : start + chunk_size]  # [B, c, V], a view
        index = safe_labels[:, start : start + chunk_size].unsqueeze(-1)  # [B, c, 1]
        label_logits = chunk.gather(-1, index).squeeze(-1).to(dtype)  # [B, c]
        others = chunk.to(dtype, copy=True).scatter_(-1, index, -torch.inf)  # [B, c, V]
        others_lse = torch.logsumexp(others, dim=-1)  # [B, c]
        all_lse = torch.logaddexp(others_lse, label_logits)
        token_logps.append(label_logits - all_lse)
        other_logps.append(others_lse - all_lse)
    token_logps = torch.cat(token_logps, dim=1).to(torch.float64)  # [B, S]
    other_logps = torch.cat(other_logps, dim=1).to(torch.float64)  # [B, S]

    token_logps = token_logps.masked_fill(~completion, 0.0)
    # Log-prob of the completion tokens before t (exclusive prefix sum).
    prefix_logps = F.pad(torch.cumsum(token_logps, dim=1)[:, :-1], (1, 0))
    terms = (prefix_logps + other_logps).masked_fill(~completion, -torch.inf)
    return torch.logsumexp(terms, dim=1)
