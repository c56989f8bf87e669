"""The demo's task and its judge: add two numbers of one or two digits.

A prompt is ``"57+68="`` and its answer ``"125"``, plain text; the completion ends with EOS
(the scorer appends it). The toy tokenizer splits numbers into single digits, so a model writes
the answer digit by digit, most significant first: the carry must be foreseen, which a tiny
model learns only partly in a short fine-tune. That leaves room for preference training to
help or to hurt.

The judge is exact string match (no whitespace forgiven); its graded score, the share of
digit positions right (aligned on the units digit), ranks two wrong answers for pairs when no
sample is right.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MAX_OPERAND = 99
"""Operands are drawn from 0..MAX_OPERAND: 10,000 problems in all."""


@dataclass(frozen=True)
class Problem:
    """One addition problem, ``a + b``."""

    a: int
    b: int

    @property
    def id(self) -> str:
        return f"add-{self.a:02d}-{self.b:02d}"

    @property
    def prompt(self) -> str:
        return f"{self.a}+{self.b}="

    @property
    def answer(self) -> str:
        return str(self.a + self.b)


@dataclass(frozen=True)
class TaskSplits:
    """Disjoint sets of problems, each with its own job."""

    sft: tuple[Problem, ...]
    """Supervised fine-tuning examples (every problem not in another split)."""
    dev: tuple[Problem, ...]
    """Judged during fine-tuning to stop it once accuracy reaches its target."""
    pref: tuple[Problem, ...]
    """Prompts sampled on-policy to make the training preference pairs."""
    eval: tuple[Problem, ...]
    """Held-out prompts: judged accuracy, KL, and the held-out preference pairs."""


def all_problems(max_operand: int = MAX_OPERAND) -> list[Problem]:
    """Every ``a + b`` with ``0 <= a, b <= max_operand``, in order."""
    if max_operand < 1:
        raise ValueError(f"max_operand must be >= 1, got {max_operand}")
    return [Problem(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]


def split_problems(
    *, n_eval: int, n_dev: int, n_pref: int, seed: int = 0, max_operand: int = MAX_OPERAND
) -> TaskSplits:
    """Shuffle every problem with ``seed`` and cut it into eval, dev, pref and sft, disjoint."""
    problems = all_problems(max_operand)
    counts = {"n_eval": n_eval, "n_dev": n_dev, "n_pref": n_pref}
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    held = n_eval + n_dev + n_pref
    if held >= len(problems):
        raise ValueError(
            f"n_eval + n_dev + n_pref = {held} leaves no fine-tuning problems out of "
            f"{len(problems)}; lower them or raise max_operand"
        )
    random.Random(seed).shuffle(problems)
    eval_, dev = problems[:n_eval], problems[n_eval : n_eval + n_dev]
    pref = problems[n_eval + n_dev : held]
    return TaskSplits(
        sft=tuple(problems[held:]), dev=tuple(dev), pref=tuple(pref), eval=tuple(eval_)
    )


def judge_score(completion: str, answer: str) -> float:
    """Graded score in [0, 1]: 1 exactly when ``completion == answer``.

    Otherwise the share of digit positions that agree, aligned on the units digit, over the
    longer of the two; 0 for anything that is not a plain string of digits.
    """
    if completion == answer:
        return 1.0
    if not completion.isascii() or not completion.isdigit():
        return 0.0
    matches = sum(c == a for c, a in zip(reversed(completion), reversed(answer), strict=False))
    # A wrong answer never scores 1, even with every aligned digit right ("019" for "19").
    return min(matches, max(len(completion), len(answer)) - 1) / max(len(completion), len(answer))


def is_correct(completion: str, answer: str) -> bool:
    """Exact match: the completion is the answer, nothing more or less."""
    return completion == answer
