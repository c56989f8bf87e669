"""Small deterministic preference pairs for tests and the demo.

Each pair asks a little question with one right answer (`chosen`) and one wrong answer
(`rejected`): sums and products, comparisons, spelling a word backwards, counting letters.
Rows are a pure function of (index, seed), so any prefix of `make_pairs(n)` equals
`make_pairs(m)` for `m < n`.

Standard rows hold strings; conversational rows hold message lists, the prompt as a user turn
(sometimes after a system turn) and each completion as one assistant turn.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from schemas import write_text_atomic

_WORD_TEXT = (
    "cat dog bird fish horse tree river mountain city house garden road train ship book "
    "letter water fire stone light shadow morning evening summer winter spring autumn "
    "teacher student doctor farmer king queen number answer question story idea"
)
_WORDS = _WORD_TEXT.split()
_SYSTEM = "You are a careful assistant. Answer in one short sentence."


def _arithmetic(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice("+*-")
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    wrong = value + rng.choice((-10, -2, -1, 1, 2, 10))
    question = f"What is {a} {op} {b}?"
    return question, f"{a} {op} {b} = {value}.", f"{a} {op} {b} = {wrong}."


def _compare(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.sample(range(1, 1000), 2)
    big, small = max(a, b), min(a, b)
    question = f"Which number is larger, {a} or {b}?"
    return question, f"The larger number is {big}.", f"The larger number is {small}."


def _reverse(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(_WORDS)
    # The word itself, forwards, is the wrong answer (no word in the list is a palindrome).
    question = f"Spell the word {word} backwards."
    return question, word[::-1], word


def _count(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(_WORDS)
    n = len(word)
    question = f"How many letters are in the word {word}?"
    return question, f"The word {word} has {n} letters.", f"The word {word} has {n + 1} letters."


_TASKS = (_arithmetic, _arithmetic, _compare, _reverse, _count)


def make_pair(index: int, *, seed: int = 0, conversational: bool = False) -> dict[str, Any]:
    """Pair number `index` of the set drawn with `seed`."""
    rng = random.Random(f"{seed}-{index}")
    question, chosen, rejected = rng.choice(_TASKS)(rng)
    row_id = f"toy-{'chat-' if conversational else ''}{seed}-{index:07d}"
    if not conversational:
        return {"id": row_id, "prompt": question, "chosen": chosen, "rejected": rejected}
    prompt = [{"role": "user", "content": question}]
    if rng.random() < 0.5:
        prompt.insert(0, {"role": "system", "content": _SYSTEM})
    return {
        "id": row_id,
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def make_pairs(n: int, *, seed: int = 0, conversational: bool = False) -> list[dict[str, Any]]:
    """`n` pairs with `id`, `prompt`, `chosen`, `rejected`; strings, or message lists."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [make_pair(i, seed=seed, conversational=conversational) for i in range(n)]


def write_jsonl(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as JSON Lines (UTF-8, one object per line), atomically."""
    path = Path(path)
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path
