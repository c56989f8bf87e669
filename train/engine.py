"""The policy under DeepSpeed: loading it, its optimizer and schedule, and exporting it.

No other model is ever built: the reference log-probs come from the shards.
"""

from __future__ import annotations

import inspect
import logging
import math
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from train.config import Resolved, TrainConfig
from train.distributed import DistInfo, barrier

logger = logging.getLogger(__name__)

FINAL_DIR = "final"


def lr_lambda(kind: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak LR at step `s`: linear warm-up, then `kind` decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return factor


@contextmanager
def count_models() -> Iterator[list[str]]:
    """Record every top-level `transformers.PreTrainedModel` constructed inside the block.

    A model built inside another model's `__init__` (a Llama body inside its causal-LM head)
    is part of that model and is not counted. Yields the list of recorded class names.
    """
    from transformers import PreTrainedModel

    created: list[str] = []
    original = PreTrainedModel.__init__

    def counting_init(self, *args, **kwargs):
        frame = inspect.currentframe().f_back
        nested = False
        while frame is not None:
            owner = frame.f_locals.get("self")
            if owner is not self and isinstance(owner, PreTrainedModel):
                nested = True
                break
            frame = frame.f_back
        if not nested:
            created.append(type(self).__name__)
        original(self, *args, **kwargs)

    PreTrainedModel.__init__ = counting_init
    try:
        yield created
    finally:
        PreTrainedModel.__init__ = original


def load_policy(config: TrainConfig, resolved: Resolved, ds_config: dict[str, Any]):
    """The policy model, partitioned at load time under ZeRO-3 (returns model, keep-alive)."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    # Under ZeRO-3 this object, kept alive, makes `from_pretrained` partition while loading.
    zero3 = HfDeepSpeedConfig(ds_config) if resolved.zero_stage == 3 else None
    dtype = torch.bfloat16 if resolved.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        config.model, dtype=dtype, trust_remote_code=config.trust_remote_code
    )
    model.config.use_cache = False
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, zero3


def initialize(model, config: TrainConfig, resolved: Resolved, ds_config: dict, total_steps: int):
    """`deepspeed.initialize` with torch's AdamW and the warm-up/decay schedule by default.

    An optimizer or scheduler named in the DeepSpeed config is built by DeepSpeed instead.
    """
    import deepspeed

    optimizer = None
    if not resolved.optimizer_in_config:
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=resolved.lr,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=config.weight_decay,
        )
    scheduler = None
    if not resolved.scheduler_in_config:
        factor = lr_lambda(config.lr_schedule, config.warmup_steps, total_steps)

        def scheduler(opt):
            return torch.optim.lr_scheduler.LambdaLR(opt, factor)

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=None if optimizer is not None else model.parameters(),
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_config,
    )
    return engine


def _full_state_dict(engine, zero_stage: int, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on rank 0 (None elsewhere); every rank must call it."""
    module = engine.module
    if zero_stage < 3:
        return (
            {k: v.detach().cpu() for k, v in module.state_dict().items()} if info.is_main else None
        )
    import deepspeed

    state: dict[str, torch.Tensor] = {}
    # One parameter gathered at a time: memory stays one full tensor above the partitions.
    for name, param in module.named_parameters():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            if info.is_main:
                state[name] = param.detach().cpu().clone()
    persistent = module.state_dict().keys()
    for name, buffer in module.named_buffers():
        if name in persistent and info.is_main:
            state[name] = buffer.detach().cpu().clone()
    return state if info.is_main else None


def export_final(engine, tokenizer, out: Path, zero_stage: int, info: DistInfo) -> Path:
    """Write the trained policy to `out/final/` in Hugging Face format, with the tokenizer.

    Written to a temporary folder first and renamed, so `final/` is never half-written.
    """
    final, tmp = Path(out) / FINAL_DIR, Path(out) / f".{FINAL_DIR}.tmp"
    state = _full_state_dict(engine, zero_stage, info)
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        engine.module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        logger.info("saved the final model to %s", final)
    barrier()
    return final
