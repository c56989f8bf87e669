"""On-policy preference pairs: sample the fine-tuned model with vLLM, judge, pair.

For each prompt, ``n`` completions are drawn at temperature 1 from the model the engine runs
(the reference of the preference run). A prompt gives one pair when its samples are not all
judged alike: the chosen completion is drawn among the best-scored samples, the rejected one
among the worse-scored ones, each in proportion to how often the model wrote it. A correct
answer is thus paired with a wrong one the model actually makes; when no sample is right, the
judge's graded score still ranks a better wrong answer above a worse one.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from toy.evaluate import MAX_NEW_TOKENS, completion_text, prompt_ids
from toy.task import Problem, judge_score

logger = logging.getLogger(__name__)


def sample_completions(
    llm,
    tokenizer,
    prompts: Sequence[str],
    *,
    num_samples: int,
    seed: int,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> list[list[str]]:
    """``num_samples`` completion texts per prompt from a started ``vllm.LLM``.

    Plain sampling at temperature 1; each request is seeded (``seed`` + its index), so the
    samples do not depend on how the engine batches requests.
    """
    import vllm
    from vllm.inputs import TokensPrompt

    requests = [TokensPrompt(prompt_token_ids=prompt_ids(tokenizer, p)) for p in prompts]
    params = [
        vllm.SamplingParams(
            n=num_samples,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_tokens=max_new_tokens,
            seed=seed + i,
        )
        for i in range(len(prompts))
    ]
    outputs = llm.generate(requests, params, use_tqdm=False)
    return [
        [completion_text(tokenizer, sample.token_ids) for sample in output.outputs]
        for output in outputs
    ]


@dataclass
class PairStats:
    """What pairing made of the samples."""

    prompts: int = 0
    samples: int = 0
    correct_samples: int = 0
    pairs: int = 0
    correct_vs_wrong: int = 0
    """Pairs whose chosen completion is exactly right."""
    graded: int = 0
    """Pairs of two wrong answers, ranked by the judge's graded score."""
    all_correct: int = 0
    """Prompts with every sample right (no pair)."""
    all_tied: int = 0
    """Prompts with every sample wrong and scored alike (no pair)."""

    @property
    def sample_accuracy(self) -> float:
        return self.correct_samples / self.samples if self.samples else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sample_accuracy": self.sample_accuracy}


def make_pairs(
    problems: Sequence[Problem], samples: Sequence[Sequence[str]], *, seed: int
) -> tuple[list[dict[str, str]], PairStats]:
    """At most one pair per problem from its samples; rows ``id, prompt, chosen, rejected``.

    Empty completions are left out (a completion must have at least one token before EOS).
    """
    rng = random.Random(seed)
    rows, stats = [], PairStats()
    for problem, texts in zip(problems, samples, strict=True):
        stats.prompts += 1
        stats.samples += len(texts)
        stats.correct_samples += sum(t == problem.answer for t in texts)
        counts = Counter(t for t in texts if t)
        scored = {text: judge_score(text, problem.answer) for text in counts}
        if len(set(scored.values())) < 2:
            if scored and min(scored.values()) == 1.0:
                stats.all_correct += 1
            else:
                stats.all_tied += 1
            continue

        best = max(scored.values())
        top = [t for t in counts if scored[t] == best]
        worse = [t for t in counts if scored[t] < best]
        chosen = rng.choices(top, weights=[counts[t] for t in top])[0]
        rejected = rng.choices(worse, weights=[counts[t] for t in worse])[0]
        rows.append(
            {"id": problem.id, "prompt": problem.prompt, "chosen": chosen, "rejected": rejected}
        )
        stats.pairs += 1
        if best == 1.0:
            stats.correct_vs_wrong += 1
        else:
            stats.graded += 1
    logger.info("pairs: %s", stats.to_dict())
    return rows, stats
