"""`train(config)`: one training run, on one rank among `WORLD_SIZE`."""

from __future__ import annotations

import json
import logging
import random
import resource
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from schemas import (
    REFERENCE_PARITY_ATOL,
    check_model_dir,
    tokenizer_fingerprint,
    weights_fingerprint,
    write_text_atomic,
)
from train import checkpoint, distributed
from train.config import TrainConfig, build_deepspeed_config, load_user_deepspeed, resolve
from train.data import Split, load_split, policy_is_reference, validate_rows
from train.engine import count_models, export_final, initialize, load_policy
from train.loop import Loop
from train.metrics import METRICS_FILE, MetricsLogger
from train.objective import Objective
from train.stream import EpochPlan

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class Preflight:
    """What rank 0 learned from the shard footers and the policy folder."""

    train_split: Split
    eval_split: Split | None
    policy_fingerprint: str
    policy_is_reference: bool
    resume_from: Path | None


def _preflight(config: TrainConfig, tokenizer) -> Preflight:
    """Provenance checks and the resume decision (rank 0 runs this; see `on_main_then_share`)."""
    fingerprint = tokenizer_fingerprint(tokenizer)
    train_split = load_split(config.data, config.train_split, tokenizer_fingerprint=fingerprint)
    eval_split = None
    if config.eval_split is not None:
        eval_split = load_split(config.data, config.eval_split, tokenizer_fingerprint=fingerprint)
    policy_fp = weights_fingerprint(config.model)
    resume_from = checkpoint.resolve_resume(config.resume, config.out)
    if config.resume is None and (
        (config.out / METRICS_FILE).exists() or (config.out / checkpoint.CHECKPOINTS).exists()
    ):
        raise ValueError(
            f"--out {config.out} already holds a run; pass --resume auto to continue it, or "
            "choose a new --out"
        )
    return Preflight(
        train_split,
        eval_split,
        policy_fp,
        policy_is_reference(train_split, policy_fp),
        resume_from,
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(config: TrainConfig) -> dict[str, Any]:
    """Run training as configured; return the run summary (also in `OUT/summary.json`)."""
    config.validate()
    check_model_dir(config.model, tokenizer=config.tokenizer is None)
    if config.tokenizer is not None:
        check_model_dir(config.tokenizer, flag="--tokenizer", weights=False)
    config.out = Path(config.out)
    info = distributed.launch_info()
    backend = distributed.init(info, config.dist_backend)
    with count_models() as models_created:
        summary = _run(config, info, backend)
    summary["models_loaded"] = len(models_created)
    summary["model_classes"] = models_created
    _write_summary(config.out, summary, info)
    return summary


def _run(config: TrainConfig, info: distributed.DistInfo, backend: str) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        config.tokenizer or config.model, trust_remote_code=config.trust_remote_code
    )
    pre = distributed.on_main_then_share(lambda: _preflight(config, tokenizer), info)
    if not config.skip_row_checks:
        problem = validate_rows(pre.train_split, rank=info.rank, world_size=info.world_size)
        distributed.raise_if_any(problem, "shard validation")

    user = load_user_deepspeed(config)
    resolved = resolve(config, user)
    plan = EpochPlan(
        pre.train_split.num_rows, resolved.micro_batch_size, resolved.grad_accum, info.world_size
    ).check(config.train_split)
    total_steps = config.max_steps or (config.epochs or 1) * plan.steps_per_epoch
    logger.info(
        "%d steps: %d per epoch of %d pairs (%d per step over %d ranks; the last %d pairs of "
        "each epoch's order are not used in that epoch)",
        total_steps,
        plan.steps_per_epoch,
        plan.num_rows,
        plan.rows_per_step,
        info.world_size,
        plan.dropped_rows,
    )
    ds_config = build_deepspeed_config(
        config, user, resolved, world_size=info.world_size, total_steps=total_steps
    )

    _seed_everything(config.seed)
    model, _zero3_keepalive = load_policy(config, resolved, ds_config)
    engine = initialize(model, config, resolved, ds_config, total_steps)
    run_shape = {
        "world_size": info.world_size,
        "micro_batch_size": resolved.micro_batch_size,
        "grad_accum": resolved.grad_accum,
        "seed": config.seed,
        "train_data": pre.train_split.signature(),
    }
    start_step = 0
    if pre.resume_from is not None:
        state = checkpoint.load(engine, pre.resume_from, info)
        checkpoint.check_run_shape(state, run_shape, pre.resume_from)
        start_step = state["step"]
    else:
        _seed_everything(config.seed + info.rank)

    metrics = MetricsLogger(
        config.out, enabled=info.is_main, total_steps=total_steps, start_step=start_step
    )
    check = start_step == 0 and not config.skip_ref_check and pre.policy_is_reference
    if start_step == 0 and not config.skip_ref_check and not pre.policy_is_reference:
        logger.info("step-0 reference check skipped: the policy is not the scoring model")
    loop = Loop(
        config=config,
        info=info,
        engine=engine,
        objective=Objective(config.loss, config.loss_options(), chunk_size=config.logps_chunk_size),
        train_split=pre.train_split,
        eval_split=pre.eval_split,
        plan=plan,
        total_steps=total_steps,
        pad_id=_pad_id(tokenizer),
        metrics=metrics,
        run_shape=run_shape,
        ref_check_atol=_ref_check_atol(config, resolved.bf16) if check else None,
        policy_fp=pre.policy_fingerprint,
    )
    try:
        end_step = loop.run(start_step)
    finally:
        metrics.close()
    if not loop.halted:
        export_final(engine, tokenizer, config.out, resolved.zero_stage, info)
    return _summary(config, info, backend, loop, resolved, start_step, end_step, ds_config)


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _ref_check_atol(config: TrainConfig, bf16: bool) -> float:
    if config.ref_check_atol is not None:
        return config.ref_check_atol
    if bf16:
        logger.warning(
            "bf16 policy: the step-0 check uses the float32 tolerance %g and will likely fail; "
            "pass --ref-check-atol or --skip-ref-check",
            REFERENCE_PARITY_ATOL,
        )
    return REFERENCE_PARITY_ATOL


def _summary(config, info, backend, loop: Loop, resolved, start_step, end_step, ds_config):
    times = loop.step_seconds
    steady = times[1:] or times
    return {
        "config": config.to_dict(),
        "deepspeed_config": ds_config,
        "backend": backend,
        "world_size": info.world_size,
        "zero_stage": resolved.zero_stage,
        "start_step": start_step,
        "end_step": end_step,
        "total_steps": loop.total_steps,
        "halted": loop.halted,
        "steps_per_epoch": loop.plan.steps_per_epoch,
        "dropped_rows_per_epoch": loop.plan.dropped_rows,
        "ref_check": loop.ref_check.to_row() if loop.ref_check else None,
        "seconds_per_step_mean": statistics.fmean(steady) if steady else None,
        "seconds_per_step_median": statistics.median(steady) if steady else None,
        "steps_timed": len(times),
    }


def _write_summary(out: Path, summary: dict[str, Any], info: distributed.DistInfo) -> None:
    """Gather per-rank facts (step count, peak RSS) and write the summary on rank 0."""
    local = {
        "rank": info.rank,
        "steps": summary["end_step"] - summary["start_step"],
        "models_loaded": summary["models_loaded"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds_per_step_mean": summary["seconds_per_step_mean"],
    }
    summary["ranks"] = distributed.all_gather_objects(local)
    if info.is_main:
        write_text_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=2, default=str) + "\n")
