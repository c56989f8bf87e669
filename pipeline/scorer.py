"""The reference scorer: a vLLM engine that returns the log-prob of every completion token.

Each completion is one request: the prompt and completion ids concatenated as a token-id prompt,
`prompt_logprobs=0` (the log-prob of each prompt token itself) and `max_tokens=1` (vLLM must
generate something; the token is thrown away). Log-probs are raw: `logprobs_mode="raw_logprobs"`
is the log-softmax of the model's logits, before any temperature or logits processor.

vLLM is imported only when a scorer is built, so `import pipeline` stays light.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.encode import EncodedPair

logger = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
# Thread-count variables that override the OpenMP binding vLLM's CPU build gives its worker
# (one thread per bound core). MKL_NUM_THREADS=2 on a 2-core machine put two MKL threads on
# the worker's one core: scoring ran 6.8x slower.
ENGINE_UNSET_ENV = ("MKL_NUM_THREADS",)
# vLLM's CPU build binds its worker to every core but one by default, keeping one for the
# engine-core process. On 2 cores, binding the worker to both scored 1.5x (1.4M-parameter
# model) and 1.9x (32M) faster: the scheduler's share of a core costs less than a lost core.
THREADS_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
DEFAULT_CPU_KV_CACHE_GIB = 2.0
"""KV cache on CPU when neither `kv_cache_gib` nor `VLLM_CPU_KVCACHE_SPACE` says otherwise
(vLLM's own default asks for 92% of the machine's memory)."""


def resolve_dtype(model: str | Path, dtype: str, *, trust_remote_code: bool = False) -> str:
    """The dtype to score in: `auto` is float32 without CUDA (bfloat16 on CPU is slow and off by
    up to 0.2 nats per token), else the checkpoint's own dtype."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    import torch

    if not torch.cuda.is_available():
        return "float32"
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    found = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(found).removeprefix("torch.") if found is not None else "float32"
    return name if name in DTYPES else "float32"


@contextlib.contextmanager
def cpu_engine_env(is_cpu: bool, *, bind_all_cores: bool = True) -> Iterator[None]:
    """The environment the engine's processes start with on CPU; restored afterwards.

    `ENGINE_UNSET_ENV` is unset (with a warning), so that the worker keeps vLLM's thread
    binding. With `bind_all_cores` (one worker: no tensor or pipeline parallelism) and no
    `VLLM_CPU_OMP_THREADS_BIND` of the user's, the worker is bound to every core this process
    may run on.
    """
    saved: dict[str, str | None] = {}
    if is_cpu:
        for name in ENGINE_UNSET_ENV:
            if name in os.environ:
                logger.warning(
                    "%s=%s is unset for the vLLM engine's processes: it overrides the thread "
                    "binding of vLLM's CPU worker and slowed scoring several fold",
                    name,
                    os.environ[name],
                )
                saved[name] = os.environ.pop(name)
        if bind_all_cores and THREADS_BIND_ENV not in os.environ:
            cores = sorted(os.sched_getaffinity(0))
            saved[THREADS_BIND_ENV] = None
            os.environ[THREADS_BIND_ENV] = ",".join(map(str, cores))
            logger.info("binding the vLLM worker to cores %s", os.environ[THREADS_BIND_ENV])
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class VllmScorer:
    """A started vLLM engine on `model`, scoring `EncodedPair`s.

    `max_model_len` bounds prompt + completion + 1 (vLLM needs room for the one generated
    token); by default it is the model's context length. Extra keyword arguments go to
    `vllm.LLM` (e.g. `tensor_parallel_size` for a large reference model).
    """

    name = "vllm"

    def __init__(
        self,
        model: str | Path,
        *,
        dtype: str = "auto",
        max_model_len: int | None = None,
        kv_cache_gib: float | None = None,
        seed: int = 0,
        trust_remote_code: bool = False,
        **engine_kwargs: Any,
    ):
        import vllm
        from vllm.inputs import TokensPrompt
        from vllm.platforms import current_platform

        self.model = str(model)
        self.dtype = resolve_dtype(model, dtype, trust_remote_code=trust_remote_code)
        kwargs: dict[str, Any] = dict(
            model=self.model,
            dtype=self.dtype,
            seed=seed,
            max_model_len=max_model_len,
            # Code shipped in a model folder runs only when the user asks for it.
            trust_remote_code=trust_remote_code,
            # Eager mode: compiling the model graph costs minutes and changes nothing here.
            enforce_eager=True,
            logprobs_mode="raw_logprobs",
            # Prefix caching stays off. vLLM 0.32 does not read the cache for requests that ask
            # for prompt log-probs (`skip_reading_prefix_cache` defaults to True for them), so
            # it saves nothing; forcing the read returned uninitialised memory (off by up to
            # 9 nats, even "log-probs" above 0) for every position the cache covered, and a
            # block-aligned cache hit reaches into a completion whenever chosen and rejected
            # (or two pairs) share a long enough prefix. Where the hit stayed inside the prompt,
            # results were bit-identical and 30% faster; that speed-up needs vLLM to return
            # prompt log-probs for cached positions.
            enable_prefix_caching=False,
            **engine_kwargs,
        )
        if current_platform.is_cpu() and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            gib = DEFAULT_CPU_KV_CACHE_GIB if kv_cache_gib is None else kv_cache_gib
            kwargs["kv_cache_memory_bytes"] = int(gib * (1 << 30))
        elif kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))

        logger.info("Starting vLLM %s on %s (%s)", vllm.__version__, self.model, self.dtype)
        single_worker = all(
            int(engine_kwargs.get(k, 1)) == 1
            for k in ("tensor_parallel_size", "pipeline_parallel_size")
        )
        with cpu_engine_env(current_platform.is_cpu(), bind_all_cores=single_worker):
            self.llm = vllm.LLM(**kwargs)
        self.version = vllm.__version__
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self._params = vllm.SamplingParams(
            max_tokens=1,
            prompt_logprobs=0,
            temperature=1.0,
            detokenize=False,
            flat_logprobs=True,
            skip_reading_prefix_cache=True,
        )
        self._tokens_prompt = TokensPrompt

    def score(self, pairs: Sequence[EncodedPair]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per-token reference log-probs `(chosen [C], rejected [R])` (float32) of each pair.

        All completions of `pairs` go to the engine at once; it batches them as it sees fit
        (results do not depend on the batching).
        """
        sequences, starts = [], []
        for pair in pairs:
            for completion in (pair.chosen_ids, pair.rejected_ids):
                sequences.append(np.concatenate([pair.prompt_ids, completion]).tolist())
                starts.append(len(pair.prompt_ids))
        longest = max(map(len, sequences), default=0)
        if longest >= self.max_model_len:
            raise ValueError(
                f"a sequence of {longest} tokens does not fit the engine's max_model_len "
                f"{self.max_model_len} (it needs one more for the generated token); lower "
                "max_length or start the engine with a larger max_model_len"
            )
        prompts = [self._tokens_prompt(prompt_token_ids=s) for s in sequences]
        outputs = self.llm.generate(prompts, self._params, use_tqdm=False)

        per_token = []
        for sequence, start, output in zip(sequences, starts, outputs, strict=True):
            flat = output.prompt_logprobs
            # One entry per position after the first: the log-prob of the token itself.
            if flat is None or flat.token_ids != sequence[1:]:
                raise RuntimeError(
                    f"vLLM returned prompt log-probs for other tokens than requested "
                    f"(request {output.request_id}); check the vLLM version"
                )
            per_token.append(np.asarray(flat.logprobs[start - 1 :], dtype=np.float32))
        return list(zip(per_token[0::2], per_token[1::2], strict=True))

    def close(self) -> None:
        """Stop the engine's processes."""
        engine = getattr(self, "llm", None)
        if engine is not None:
            engine.llm_engine.engine_core.shutdown()
            self.llm = None

    def __enter__(self) -> VllmScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
