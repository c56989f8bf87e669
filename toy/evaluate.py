"""Judging a model on the task, its KL from the reference, and its log-prob shift on pairs.

Everything here runs transformers forwards on CPU in float32: the demo's models are tiny and
its completions a few tokens long, so one process evaluates every trained model without a
vLLM engine per model. A completion's log-prob is the sum over its tokens, EOS included, as
the scorer and the trainer count it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch

from toy.task import Problem, is_correct

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 6
"""Longest completion generated: three digits and EOS fit with room to spare."""


def load_model(model_dir: str | Path):
    """A float32 causal LM in eval mode, and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model.eval(), tokenizer


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt's ids as the scorer makes them: BOS, then the text's tokens."""
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def completion_text(tokenizer, ids: Sequence[int]) -> str:
    """The text of generated ids, special tokens (EOS) left out."""
    return tokenizer.decode(list(ids), skip_special_tokens=True)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    num_samples: int = 1,
    greedy: bool = True,
    seed: int = 0,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 512,
) -> list[list[list[int]]]:
    """Completion ids per prompt (``num_samples`` each), up to and including the first EOS.

    Sampling is plain ancestral sampling at temperature 1 (no top-k, no top-p), so that the
    samples come from the model's own distribution, as a KL estimate needs. Prompts are grouped
    by token count, so no batch needs padding.
    """
    if greedy and num_samples != 1:
        raise ValueError(f"greedy decoding gives one completion per prompt, got {num_samples=}")
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    by_length: dict[int, list[int]] = defaultdict(list)
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    for i, ids in enumerate(encoded):
        by_length[len(ids)].append(i)

    # top_k=0 switches off transformers' default top-k of 50.
    decoding = {"do_sample": False} if greedy else {"do_sample": True, "top_k": 0, "top_p": 1.0}
    out: list[list[list[int]]] = [[] for _ in prompts]
    per_batch = max(1, batch_size // num_samples)
    for length, indices in sorted(by_length.items()):
        for start in range(0, len(indices), per_batch):
            chunk = indices[start : start + per_batch]
            input_ids = torch.tensor([encoded[i] for i in chunk])  # [b, length]
            sequences = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                num_return_sequences=num_samples,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
                **decoding,
            )  # [b * num_samples, length + new]
            for row, ids in enumerate(sequences[:, length:].tolist()):
                out[chunk[row // num_samples]].append(_until_eos(ids, eos))
    return out


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


@torch.no_grad()
def completion_logps(
    model,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    batch_size: int = 512,
) -> torch.Tensor:
    """``log pi(completion | prompt)`` per pair of id lists, summed over completion tokens.

    Returns [N] float64. Batches are right-padded; padding sits after every real token, so
    it changes no real token's log-prob under a causal model.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    totals = []
    for start in range(0, len(prompts), batch_size):
        rows = [
            (list(p), list(c))
            for p, c in zip(
                prompts[start : start + batch_size],
                completions[start : start + batch_size],
                strict=True,
            )
        ]
        width = max(len(p) + len(c) for p, c in rows)
        input_ids = torch.zeros(len(rows), width, dtype=torch.long)  # [b, S]
        attention = torch.zeros_like(input_ids)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)  # completion tokens
        for i, (p, c) in enumerate(rows):
            input_ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            attention[i, : len(p) + len(c)] = 1
            mask[i, len(p) : len(p) + len(c)] = True
        logits = model(input_ids=input_ids, attention_mask=attention).logits  # [b, S, V]
        per_token_logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        per_token_logps = per_token_logps.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        per_token_logps = per_token_logps.masked_fill(~mask[:, 1:], 0.0)  # [b, S-1]
        totals.append(per_token_logps.to(torch.float64).sum(-1))
    return torch.cat(totals) if totals else torch.zeros(0, dtype=torch.float64)


def judged_accuracy(tokenizer, problems: Sequence[Problem], completions) -> float:
    """Share of completions (any number per problem) that are exactly the answer."""
    right = total = 0
    for problem, samples in zip(problems, completions, strict=True):
        for ids in samples:
            right += is_correct(completion_text(tokenizer, ids), problem.answer)
            total += 1
    return right / total if total else float("nan")


def greedy_accuracy(model, tokenizer, problems: Sequence[Problem]) -> float:
    """Judged accuracy of greedy decoding on ``problems``."""
    completions = generate(model, tokenizer, [p.prompt for p in problems], greedy=True)
    return judged_accuracy(tokenizer, problems, completions)


@dataclass(frozen=True)
class PairSet:
    """Scored pairs read back from shards: ids and the stored reference sums."""

    prompt_ids: list[list[int]]
    chosen_ids: list[list[int]]
    rejected_ids: list[list[int]]
    ref_chosen_logps: torch.Tensor  # [N] float64
    ref_rejected_logps: torch.Tensor  # [N] float64

    def __len__(self) -> int:
        return len(self.prompt_ids)


def read_pairs(split_dir: str | Path) -> PairSet:
    """Every pair in the ``*.parquet`` shards of one split folder, in file order."""
    columns = ["prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logp", "ref_rejected_logp"]
    paths = sorted(p for p in Path(split_dir).glob("*.parquet") if not p.name.startswith("."))
    if not paths:
        raise FileNotFoundError(f"{split_dir}: no scored shards (*.parquet)")
    data: dict[str, list] = {c: [] for c in columns}
    for path in paths:
        table = pq.read_table(path, columns=columns)
        for c in columns:
            data[c].extend(table.column(c).to_pylist())
    return PairSet(
        data["prompt_ids"],
        data["chosen_ids"],
        data["rejected_ids"],
        torch.tensor(data["ref_chosen_logp"], dtype=torch.float64),
        torch.tensor(data["ref_rejected_logp"], dtype=torch.float64),
    )


def pair_shift(model, pairs: PairSet) -> dict[str, float]:
    """How far the policy moved the chosen and rejected log-probs from the reference's.

    Means over pairs of ``s_w - r_w`` and ``s_l - r_l`` (nats), of the margin's change, and
    the share of pairs whose policy margin ``s_w - s_l`` beats the reference's.
    """
    chosen_logps = completion_logps(model, pairs.prompt_ids, pairs.chosen_ids)  # [N]
    rejected_logps = completion_logps(model, pairs.prompt_ids, pairs.rejected_ids)  # [N]
    chosen_shift = chosen_logps - pairs.ref_chosen_logps
    rejected_shift = rejected_logps - pairs.ref_rejected_logps
    return {
        "chosen_shift": chosen_shift.mean().item(),
        "rejected_shift": rejected_shift.mean().item(),
        "margin_shift": (chosen_shift - rejected_shift).mean().item(),
        "pair_accuracy": (chosen_shift > rejected_shift).double().mean().item(),
        "chosen_logp": chosen_logps.mean().item(),
        "rejected_logp": rejected_logps.mean().item(),
    }


def evaluate_model(
    model,
    reference,
    tokenizer,
    problems: Sequence[Problem],
    pair_sets: dict[str, PairSet],
    *,
    num_samples: int,
    seed: int,
) -> dict[str, float]:
    """Judged accuracy (greedy and sampled), the KL from ``reference``, and the pair shifts.

    The KL is estimated on the samples: ``mean(log pi(y|x) - log pi_ref(y|x))`` over
    ``y ~ pi``, ``num_samples`` per problem. ``reference=None`` means the model is the
    reference (KL 0). Pair shifts go under ``<set name>/`` keys.
    """
    prompts = [p.prompt for p in problems]
    greedy = generate(model, tokenizer, prompts, greedy=True)
    sampled = generate(model, tokenizer, prompts, num_samples=num_samples, greedy=False, seed=seed)
    metrics = {
        "greedy_accuracy": judged_accuracy(tokenizer, problems, greedy),
        "sampled_accuracy": judged_accuracy(tokenizer, problems, sampled),
    }

    flat_prompts = [
        prompt_ids(tokenizer, p) for p, s in zip(prompts, sampled, strict=True) for _ in s
    ]
    flat = [ids for samples in sampled for ids in samples]
    eos = tokenizer.eos_token_id
    metrics["unfinished_samples"] = sum(eos not in ids for ids in flat) / len(flat)
    metrics["sample_tokens"] = sum(map(len, flat)) / len(flat)
    if reference is None:
        metrics["kl"], metrics["kl_stderr"] = 0.0, 0.0
    else:
        log_ratio = completion_logps(model, flat_prompts, flat) - completion_logps(
            reference, flat_prompts, flat
        )  # [N]
        metrics["kl"] = log_ratio.mean().item()
        metrics["kl_stderr"] = (log_ratio.std() / len(flat) ** 0.5).item()

    for name, pairs in pair_sets.items():
        if reference is None:
            shifts = {"chosen_shift": 0.0, "rejected_shift": 0.0, "margin_shift": 0.0}
        else:
            shifts = pair_shift(model, pairs)
        metrics.update({f"{name}/{key}": value for key, value in shifts.items()})
    return metrics


def load_checkpoint(like, folder: str | Path):
    """A copy of model ``like`` with the weights of a trainer checkpoint (a DeepSpeed tag)."""
    import contextlib
    import copy
    import io

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder = Path(folder)
    # The converter prints a line per step of its work and a progress bar; the demo has its own.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        state = get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
    model = copy.deepcopy(like)
    model.load_state_dict(state, strict=True)
    return model.eval()
