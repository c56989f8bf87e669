"""Supervised fine-tuning of a toy model on the task, just far enough to be right sometimes.

A plain torch loop in this process: AdamW in float32, cross-entropy on the completion tokens
(the answer and EOS) only, a short linear warm-up then a constant rate. Every ``eval_every``
steps the greedy judged accuracy on the dev problems is measured, and fine-tuning stops as
soon as it reaches ``target_accuracy`` (or at ``max_steps``): preference training then starts
from a model that is right part of the time, with room to improve and to get worse.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from toy.evaluate import greedy_accuracy, load_model, prompt_ids
from toy.task import Problem

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTConfig:
    """How to fine-tune."""

    max_steps: int = 800
    """Upper bound on optimizer steps, whatever the accuracy."""
    batch_size: int = 128
    """Examples per step."""
    lr: float = 3e-3
    """AdamW learning rate after warm-up."""
    warmup_steps: int = 20
    """Linear warm-up from 0."""
    eval_every: int = 25
    """Steps between two judgements of the dev problems."""
    target_accuracy: float = 0.4
    """Stop once greedy dev accuracy reaches this (in (0, 1]; 1 runs to ``max_steps``)."""
    seed: int = 0
    """Seed of the data order and of torch."""

    def validate(self) -> SFTConfig:
        for name in ("max_steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"SFT {name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"SFT lr must be > 0, got {self.lr}")
        if not 0 < self.target_accuracy <= 1:
            raise ValueError(f"SFT target_accuracy must be in (0, 1], got {self.target_accuracy}")
        return self


@dataclass
class SFTReport:
    """What fine-tuning did."""

    steps: int = 0
    dev_accuracy: float = 0.0
    seconds: float = 0.0
    reached_target: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    """``{"step", "loss", "dev_accuracy"}`` at each judgement."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def encode(tokenizer, problem: Problem) -> tuple[list[int], list[int]]:
    """(prompt ids with BOS, answer ids with EOS), tokenized apart as the scorer does."""
    answer = tokenizer(problem.answer, add_special_tokens=False)["input_ids"]
    return prompt_ids(tokenizer, problem.prompt), [*answer, tokenizer.eos_token_id]


def _batch(examples: Sequence[tuple[list[int], list[int]]], pad_id: int):
    """input_ids, attention_mask, labels [B, S]; labels are -100 off the completion."""
    width = max(len(p) + len(c) for p, c in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for i, (p, c) in enumerate(examples):
        n = len(p) + len(c)
        input_ids[i, :n] = torch.tensor(p + c)
        attention[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(c)
    return input_ids, attention, labels


def _examples(encoded: list, batch_size: int, rng: random.Random):
    """Endless batches: a fresh shuffle of the examples every epoch."""
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            fresh = list(range(len(encoded)))
            rng.shuffle(fresh)
            order.extend(fresh)
        yield [encoded[i] for i in order[:batch_size]]
        del order[:batch_size]


def run_sft(
    base_dir: str | Path,
    out_dir: str | Path,
    train: Sequence[Problem],
    dev: Sequence[Problem],
    config: SFTConfig,
) -> SFTReport:
    """Fine-tune the model in ``base_dir`` on ``train``; save it (and tokenizer) to ``out_dir``."""
    config.validate()
    torch.manual_seed(config.seed)
    model, tokenizer = load_model(base_dir)
    encoded = [encode(tokenizer, p) for p in train]
    batches = _examples(encoded, config.batch_size, random.Random(config.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.98))
    warmup = max(1, config.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))

    report, started = SFTReport(), time.perf_counter()
    for step in range(1, config.max_steps + 1):
        model.train()
        input_ids, attention, labels = _batch(next(batches), tokenizer.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)

        if step % config.eval_every and step != config.max_steps:
            continue
        model.eval()
        accuracy = greedy_accuracy(model, tokenizer, dev)
        report.history.append({"step": step, "loss": loss.item(), "dev_accuracy": accuracy})
        report.steps, report.dev_accuracy = step, accuracy
        logger.info("SFT step %d: loss %.4f, dev accuracy %.3f", step, loss.item(), accuracy)
        if accuracy >= config.target_accuracy:
            report.reached_target = True
            break

    report.seconds = time.perf_counter() - started
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return report
