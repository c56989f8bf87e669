"""The training loop: micro-batches in, optimizer steps, logs, evaluations and checkpoints out."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from schemas.faults import fault_point
from train import checkpoint
from train.collate import collate
from train.config import TrainConfig
from train.data import Split
from train.distributed import DistInfo, all_reduce
from train.metrics import MetricsLogger
from train.objective import LossOutput, Objective
from train.refcheck import RefCheckResult, raise_on_mismatch, reference_check
from train.stream import EpochPlan, Pair, eval_micro_batches, rank_micro_batches

logger = logging.getLogger(__name__)


@dataclass
class Loop:
    """What one run's loop works with."""

    config: TrainConfig
    info: DistInfo
    engine: Any  # deepspeed.DeepSpeedEngine
    objective: Objective
    train_split: Split
    eval_split: Split | None
    plan: EpochPlan
    total_steps: int
    pad_id: int
    metrics: MetricsLogger
    run_shape: dict[str, Any]
    ref_check_atol: float | None = None
    """Run the step-0 check on the first batch with this tolerance; None skips it."""
    policy_fp: str = ""
    """Weights fingerprint of the policy's initial weights."""
    step_seconds: list[float] = field(default_factory=list)
    ref_check: RefCheckResult | None = None
    halted: bool = False

    def steps(self, start_step: int) -> Iterator[tuple[int, list[list[Pair]]]]:
        """(global step index, this rank's micro-batches) from `start_step` to the end."""
        step, ga = start_step, self.plan.grad_accum
        while step < self.total_steps:
            epoch, in_epoch = divmod(step, self.plan.steps_per_epoch)
            micro_batches = rank_micro_batches(
                self.train_split,
                self.plan,
                rank=self.info.rank,
                seed=self.config.seed,
                epoch=epoch,
                start_step=in_epoch,
                buffer_size=self.config.shuffle_buffer,
                read_batch_rows=self.config.read_batch_rows,
            )
            group: list[list[Pair]] = []
            for micro_batch in micro_batches:
                group.append(micro_batch)
                if len(group) == ga:
                    yield step, group
                    group = []
                    step += 1
                    if step >= self.total_steps:
                        return

    def run(self, start_step: int) -> int:
        """Train from `start_step`; return the number of steps completed."""
        started = time.perf_counter()
        step = start_step
        for step_index, micro_batches in self.steps(start_step):
            if self.ref_check_atol is not None and step_index == start_step:
                first = collate(micro_batches[0], pad_id=self.pad_id).to(self.engine.device)
                self.ref_check = reference_check(
                    self.engine,
                    first,
                    atol=self.ref_check_atol,
                    chunk_size=self.config.logps_chunk_size,
                )
                self.metrics.log({"step": 0, **self.ref_check.to_row()})
                raise_on_mismatch(
                    self.ref_check, model_dir=str(self.config.model), fingerprint=self.policy_fp
                )
            row = self.train_step(micro_batches)
            step = step_index + 1
            row = {
                "step": step,
                "epoch": step / self.plan.steps_per_epoch,
                **row,
                "elapsed": time.perf_counter() - started,
            }
            self.metrics.step_done(row)
            self.after_step(step)
            if self.halted:
                break
        return step

    def after_step(self, step: int) -> None:
        """Evaluate, save, or halt after `step`, as configured."""
        config, last = self.config, step == self.total_steps
        if self.eval_split is not None and (
            last or (config.eval_every and step % config.eval_every == 0)
        ):
            self.metrics.log({"step": step, **self.evaluate()})
        halt = config.halt_after_step is not None and step >= config.halt_after_step and not last
        if last or halt or (config.save_every and step % config.save_every == 0):
            epoch, in_epoch = divmod(step, self.plan.steps_per_epoch)
            state = {**self.run_shape, "step": step, "epoch": epoch, "step_in_epoch": in_epoch}
            checkpoint.save(
                self.engine, config.out, step, state, self.info, config.keep_checkpoints
            )
        if halt:
            logger.warning("halting after step %d as asked (--halt-after-step)", step)
            self.halted = True

    def forward(self, pairs: list[Pair], valid: list[bool] | None = None) -> LossOutput:
        batch = collate(pairs, pad_id=self.pad_id, valid=valid).to(self.engine.device)
        logits = self.engine(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).logits  # [2B, S, V]
        return self.objective(logits, batch)

    def train_step(self, micro_batches: list[list[Pair]]) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches; metrics averaged over all ranks."""
        started = time.perf_counter()
        lr = float(self.engine.get_lr()[0])
        sums: torch.Tensor | None = None
        keys: list[str] = []
        tokens = 0
        for pairs in micro_batches:
            output = self.forward(pairs)
            self.engine.backward(output.losses.mean())
            self.engine.step()
            fault_point("train-micro-batch")
            metrics = self.objective.metrics(output)
            keys = list(metrics)
            values = torch.stack([metrics[k] for k in keys])  # [K] float64
            sums = values if sums is None else sums + values
            tokens += output.num_tokens

        pairs_per_rank = sum(len(p) for p in micro_batches)
        counts = torch.tensor([tokens, pairs_per_rank], dtype=torch.float64)
        packed = torch.cat([sums / len(micro_batches), counts])
        packed = all_reduce(packed, "sum").tolist()  # the step's one host sync
        world = self.info.world_size
        seconds = time.perf_counter() - started
        self.step_seconds.append(seconds)
        row = {k: v / world for k, v in zip(keys, packed, strict=False)}
        return {
            "loss": row.pop("loss"),
            "lr": lr,
            "grad_norm": _as_float(self.engine.get_global_grad_norm()),
            **row,
            "tokens_per_second": packed[-2] / seconds,
            "samples_per_second": packed[-1] / seconds,
        }

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss and loss metrics over the whole evaluation split, keys under `eval/`."""
        self.engine.eval()
        outputs = []
        for pairs, valid in eval_micro_batches(
            self.eval_split,
            micro_batch_size=self.plan.micro_batch_size,
            rank=self.info.rank,
            world_size=self.info.world_size,
            read_batch_rows=self.config.read_batch_rows,
        ):
            outputs.append(self.forward(pairs, valid))
        self.engine.train()

        valid = torch.cat([o.valid for o in outputs])
        merged = LossOutput(
            torch.cat([o.losses for o in outputs]),
            tuple(torch.cat([o.inputs[i] for o in outputs]) for i in range(4)),
            sum(o.num_tokens for o in outputs),
        )
        count = int(valid.sum())
        metrics = self.objective.metrics(merged, valid)
        keys = list(metrics)
        # Means times counts, summed over ranks, give the split's means.
        values = torch.stack([metrics[k] for k in keys]) * count  # [K] float64
        if not count:
            values = torch.zeros(len(keys), dtype=torch.float64)
        counts = torch.tensor([float(count)], dtype=torch.float64)
        packed = all_reduce(torch.cat([values, counts]), "sum").tolist()
        total = packed[-1]
        return {f"eval/{k}": v / total for k, v in zip(keys, packed, strict=False)}


def _as_float(value: Any) -> float:
    if value is None:
        return math.nan
    return float(value)
