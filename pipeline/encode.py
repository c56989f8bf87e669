"""Turn checked rows into token ids, as the contract lays them out.

Standard rows: the prompt is tokenized with the tokenizer's special tokens (BOS), each
completion separately without them; the ids are concatenated and EOS is appended to a
completion that does not already end with one.

Conversational rows go through the chat template: the prompt is rendered with the generation
prompt, and a completion is what rendering prompt + completion adds after it. The template must
render the prompt as a token prefix of the whole conversation; text the template puts after a
completion's last EOS (a newline, say) is not part of the completion.

Over-long pairs (prompt + the longer completion over `max_length` tokens) are dropped, cut
(`keep-end`: the end of the prompt is kept, with its BOS) or refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.inputs import BadRow, Row

OVERLONG_MODES = ("drop", "keep-end", "error")
FATAL_REASONS = ("template_prefix",)
"""Reasons that stop the run whatever `on_bad_row` says: they concern the tokenizer, not a row."""


@dataclass(frozen=True, slots=True)
class EncodedPair:
    """Token ids of one pair (each `np.int32`); the completions end with EOS."""

    id: str
    prompt_ids: np.ndarray  # [P]
    chosen_ids: np.ndarray  # [C]
    rejected_ids: np.ndarray  # [R]

    @property
    def num_scored_tokens(self) -> int:
        """Tokens the scorer processes: the prompt once per completion, and both completions."""
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


class PairEncoder:
    """Encode rows with `tokenizer`; `eos_token_ids` are the ids a completion may end with
    (the first is appended when a completion ends with none of them)."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        eos_token_ids: Sequence[int],
        max_length: int,
        overlong: str = "drop",
    ):
        if overlong not in OVERLONG_MODES:
            raise ValueError(f"overlong must be one of {OVERLONG_MODES}, got {overlong!r}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        if not eos_token_ids:
            raise ValueError("the tokenizer has no EOS token; set `eos_token` in its config")
        self.tokenizer = tokenizer
        self.eos_token_ids = tuple(int(i) for i in eos_token_ids)
        self.max_length = max_length
        self.overlong = overlong
        self.bos_token_id = getattr(tokenizer, "bos_token_id", None)

    def encode(self, rows: Sequence[Row]) -> list[EncodedPair | BadRow]:
        """Encode a batch; a row that cannot be a pair comes back as its `BadRow`."""
        standard = iter(self._encode_standard([r for r in rows if not r.conversational]))
        out = []
        for row in rows:
            ids = self._encode_chat(row) if row.conversational else next(standard)
            out.append(ids if isinstance(ids, BadRow) else self._fit(row, *ids))
        return out

    def _encode_standard(self, rows: Sequence[Row]) -> list[tuple[list[int], ...]]:
        if not rows:
            return []
        tok = self.tokenizer
        prompts = tok([r.prompt for r in rows], add_special_tokens=True)["input_ids"]
        chosen = tok([r.chosen for r in rows], add_special_tokens=False)["input_ids"]
        rejected = tok([r.rejected for r in rows], add_special_tokens=False)["input_ids"]
        return list(zip(prompts, chosen, rejected, strict=True))

    def _encode_chat(self, row: Row) -> tuple[list[int], ...] | BadRow:
        prompt_ids = self._render(row.prompt, add_generation_prompt=True)
        completions = []
        for name in ("chosen", "rejected"):
            full_ids = self._render(row.prompt + getattr(row, name), add_generation_prompt=False)
            if full_ids[: len(prompt_ids)] != prompt_ids:
                return BadRow(
                    "template_prefix",
                    name,
                    "the chat template's rendering of the prompt with the generation prompt is "
                    f"not a token prefix of its rendering of the prompt and {name!r}",
                )
            completions.append(self._cut_after_eos(full_ids[len(prompt_ids) :]))
        return (prompt_ids, *completions)

    def _render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _cut_after_eos(self, ids: list[int]) -> list[int]:
        """Drop what a template renders after the completion's last EOS (e.g. a newline)."""
        for i in range(len(ids) - 1, -1, -1):
            if ids[i] in self.eos_token_ids:
                return ids[: i + 1]
        return ids

    def _fit(
        self, row: Row, prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int]
    ) -> EncodedPair | BadRow:
        """Append EOS, then apply the length limit."""
        if not prompt_ids:
            return BadRow("empty_prompt", "prompt", "the prompt encodes to no tokens")
        completions = []
        for name, ids in (("chosen", chosen_ids), ("rejected", rejected_ids)):
            if not ids:
                return BadRow("empty_completion", name, f"{name!r} encodes to no tokens")
            if ids[-1] not in self.eos_token_ids:
                ids = [*ids, self.eos_token_ids[0]]
            completions.append(ids)

        longest = max(map(len, completions))
        if len(prompt_ids) + longest > self.max_length:
            budget = self.max_length - longest
            keep_bos = prompt_ids[0] == self.bos_token_id
            if self.overlong != "keep-end" or budget < 1 + keep_bos:
                return BadRow(
                    "overlong",
                    None,
                    f"prompt ({len(prompt_ids)} tokens) + longest completion ({longest}) is over "
                    f"max_length {self.max_length}",
                )
            tail = prompt_ids[len(prompt_ids) - (budget - keep_bos) :]
            prompt_ids = [prompt_ids[0], *tail] if keep_bos else tail
        return EncodedPair(
            row.id,
            np.asarray(prompt_ids, dtype=np.int32),
            np.asarray(completions[0], dtype=np.int32),
            np.asarray(completions[1], dtype=np.int32),
        )
