"""The trainer's configuration: one typed, validated dataclass, and the DeepSpeed config built
from it (or merged into a user's DeepSpeed JSON, whose `"auto"` values it resolves).

Importing this module is cheap: no torch, no DeepSpeed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

LOSS_NAMES = ("slpo", "slpo_tempered", "dpo", "cdpo", "ipo")
TARGET_RULES = ("shift", "split")
LR_SCHEDULES = ("linear", "cosine", "constant")


@dataclass
class TrainConfig:
    """Everything one training run needs. Validated once, by `validate()`."""

    data: Path
    """Dataset folder: one subfolder of scored shards (`*.parquet`) per split."""
    model: Path
    """Hugging Face model folder with the policy's initial weights."""
    out: Path
    """Run folder: metrics, TensorBoard events, checkpoints, `final/`."""
    tokenizer: Path | None = None
    """Tokenizer folder; default: `model`. Its fingerprint must match the shards'."""
    loss: str = "slpo"
    """Loss name, a key of `train.losses.LOSSES`."""
    alpha: float = 1.0
    """SLPO: share of the pair's reference mass moved by the target rule, in [0, 1]."""
    target_rule: str = "shift"
    """SLPO target rule: `shift` or `split`."""
    beta: float = 0.1
    """DPO-family temperature (also scales the reward metrics of every loss)."""
    label_smoothing: float = 0.0
    """DPO label smoothing; cDPO needs it in (0, 0.5)."""
    deepspeed: Path | None = None
    """DeepSpeed JSON config; flags fill its `"auto"` values and must not contradict the rest."""
    zero_stage: int | None = None
    """ZeRO stage 0-3; default 2 unless the DeepSpeed config sets it."""
    micro_batch_size: int | None = None
    """Pairs per forward on each rank (each forward runs 2x this many sequences); default 4."""
    grad_accum: int | None = None
    """Micro-batches per optimizer step on each rank; default 1."""
    lr: float | None = None
    """Peak learning rate; default 1e-6."""
    weight_decay: float = 0.0
    """AdamW weight decay (when the trainer builds the optimizer)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to `lr` over this many optimizer steps."""
    lr_schedule: str = "linear"
    """After warm-up: `linear` or `cosine` decay to 0 at the last step, or `constant`."""
    max_steps: int | None = None
    """Optimizer steps to take (the data is cycled epoch after epoch); excludes `epochs`."""
    epochs: int | None = None
    """Passes over the training split; default 1 when `max_steps` is not given."""
    train_split: str = "train"
    """Name of the training split's subfolder."""
    eval_split: str | None = None
    """Name of the evaluation split's subfolder; no evaluation when None."""
    eval_every: int = 0
    """Evaluate every this many steps (and at the end); 0: at the end only."""
    save_every: int = 0
    """Checkpoint every this many steps (and at the end); 0: at the end only."""
    keep_checkpoints: int = 0
    """Keep only this many newest complete checkpoints; 0 keeps all."""
    resume: str | None = None
    """`auto` (newest complete checkpoint in `out`, or a fresh start) or a checkpoint folder."""
    halt_after_step: int | None = None
    """Stop after this step as a preempted job would: checkpoint, no final model."""
    seed: int = 0
    """Seed of the data order (with the epoch) and of torch's RNG (with the rank)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    bf16: bool = False
    """Train in bfloat16 (on GPUs; on CPU it is much slower than float32)."""
    trust_remote_code: bool = False
    """Let transformers run Python code shipped in the model folder; off by default."""
    skip_ref_check: bool = False
    """Skip the step-0 check of the policy against the stored reference log-probs."""
    ref_check_atol: float | None = None
    """Per-token tolerance of the step-0 check; default `schemas.REFERENCE_PARITY_ATOL`."""
    skip_row_checks: bool = False
    """Skip the row-level shard validation at start (footers are always checked)."""
    shuffle_buffer: int = 1024
    """Rows held by the shuffle buffer (bounds memory with the read batch)."""
    read_batch_rows: int = 256
    """Rows per Arrow record batch read from a shard."""
    logps_chunk_size: int = 128
    """Sequence positions per chunk when gathering log-probs from the logits."""
    dist_backend: str | None = None
    """torch.distributed backend; default gloo on CPU, the accelerator's own otherwise."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form values recorded in the run summary (e.g. the command line)."""

    def validate(self) -> TrainConfig:
        """Check every field; raise ValueError naming the field, its value and the fix."""
        _check(self.loss in LOSS_NAMES, "loss", self.loss, f"choose one of {list(LOSS_NAMES)}")
        _check(
            self.target_rule in TARGET_RULES,
            "target_rule",
            self.target_rule,
            f"choose one of {list(TARGET_RULES)}",
        )
        _check(0.0 <= self.alpha <= 1.0, "alpha", self.alpha, "it must be in [0, 1]")
        _check(self.beta > 0 and math.isfinite(self.beta), "beta", self.beta, "it must be > 0")
        _check(
            0.0 <= self.label_smoothing < 0.5,
            "label_smoothing",
            self.label_smoothing,
            "it must be in [0, 0.5)",
        )
        if self.loss == "cdpo":
            _check(
                self.label_smoothing > 0,
                "label_smoothing",
                self.label_smoothing,
                "cdpo needs --label-smoothing in (0, 0.5)",
            )
        if self.zero_stage is not None:
            _check(self.zero_stage in (0, 1, 2, 3), "zero_stage", self.zero_stage, "use 0-3")
        for name in ("micro_batch_size", "grad_accum", "max_steps", "epochs", "halt_after_step"):
            value = getattr(self, name)
            if value is not None:
                _check(value >= 1, name, value, "it must be >= 1")
        for name in ("warmup_steps", "eval_every", "save_every", "keep_checkpoints"):
            _check(getattr(self, name) >= 0, name, getattr(self, name), "it must be >= 0")
        for name in ("shuffle_buffer", "read_batch_rows", "logps_chunk_size"):
            _check(getattr(self, name) >= 1, name, getattr(self, name), "it must be >= 1")
        if self.lr is not None:
            _check(self.lr > 0, "lr", self.lr, "it must be > 0")
        _check(self.grad_clip >= 0, "grad_clip", self.grad_clip, "it must be >= 0 (0: off)")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "it must be >= 0")
        _check(
            self.lr_schedule in LR_SCHEDULES,
            "lr_schedule",
            self.lr_schedule,
            f"choose one of {list(LR_SCHEDULES)}",
        )
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError(
                f"max_steps ({self.max_steps}) and epochs ({self.epochs}) are exclusive: give one"
            )
        if self.ref_check_atol is not None:
            _check(self.ref_check_atol > 0, "ref_check_atol", self.ref_check_atol, "must be > 0")
        for name in ("data", "model"):
            path = Path(getattr(self, name))
            _check(path.is_dir(), name, str(path), "pass an existing folder")
        if self.deepspeed is not None:
            _check(Path(self.deepspeed).is_file(), "deepspeed", str(self.deepspeed), "no such file")
        return self

    def loss_options(self) -> dict[str, Any]:
        """Every loss option; each loss picks the ones it accepts."""
        return {
            "alpha": self.alpha,
            "target_rule": self.target_rule,
            "beta": self.beta,
            "label_smoothing": self.label_smoothing,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (paths as strings)."""
        out = asdict(self)
        for f in fields(self):
            if isinstance(out[f.name], Path):
                out[f.name] = str(out[f.name])
        return out


def _check(ok: bool, name: str, value: Any, fix: str) -> None:
    if not ok:
        raise ValueError(f"`{name}` got {value!r}: {fix}.")


@dataclass(frozen=True)
class Resolved:
    """Values settled by flags, the DeepSpeed JSON and the defaults together."""

    zero_stage: int
    micro_batch_size: int
    grad_accum: int
    lr: float
    bf16: bool
    optimizer_in_config: bool
    """The DeepSpeed config names an optimizer: DeepSpeed builds it."""
    scheduler_in_config: bool
    """The DeepSpeed config names a scheduler: DeepSpeed builds it."""


DEFAULTS = {"zero_stage": 2, "micro_batch_size": 4, "grad_accum": 1, "lr": 1e-6}


def load_user_deepspeed(config: TrainConfig) -> dict[str, Any]:
    """The user's DeepSpeed JSON, or an empty config."""
    if config.deepspeed is None:
        return {}
    try:
        return json.loads(Path(config.deepspeed).read_text())
    except ValueError as e:
        raise ValueError(f"--deepspeed {config.deepspeed}: not valid JSON ({e})") from e


def resolve(config: TrainConfig, user: dict[str, Any]) -> Resolved:
    """Settle the values that a flag and the DeepSpeed JSON can both give.

    A flag wins over a missing or `"auto"` JSON value; a flag and a JSON value that disagree
    are an error (which one was meant is unknowable); neither gives the default.
    """
    zero = user.get("zero_optimization", {})
    optimizer = user.get("optimizer")
    from_json = {
        "zero_stage": ("zero_optimization.stage", zero.get("stage")),
        "micro_batch_size": (
            "train_micro_batch_size_per_gpu",
            user.get("train_micro_batch_size_per_gpu"),
        ),
        "grad_accum": ("gradient_accumulation_steps", user.get("gradient_accumulation_steps")),
        "lr": ("optimizer.params.lr", (optimizer or {}).get("params", {}).get("lr")),
    }
    values = {}
    for name, (json_key, json_value) in from_json.items():
        flag = getattr(config, name)
        if json_value == "auto":
            json_value = None
        if flag is not None and json_value is not None and flag != json_value:
            raise ValueError(
                f"--{name.replace('_', '-')} {flag} contradicts {json_key} = {json_value} in "
                f'{config.deepspeed}; drop one of them or set the JSON value to "auto"'
            )
        values[name] = next(v for v in (flag, json_value, DEFAULTS[name]) if v is not None)

    bf16_json = user.get("bf16", {}).get("enabled")
    bf16 = bool(config.bf16 or (bf16_json is True))
    if user.get("fp16", {}).get("enabled") is True:
        raise ValueError(
            f"{config.deepspeed}: fp16 is not supported (its loss scaling is untested here); "
            "use bf16 or float32"
        )
    return Resolved(
        **values,
        bf16=bf16,
        optimizer_in_config=optimizer is not None,
        scheduler_in_config=user.get("scheduler") is not None,
    )


def build_deepspeed_config(
    config: TrainConfig,
    user: dict[str, Any],
    resolved: Resolved,
    *,
    world_size: int,
    total_steps: int,
) -> dict[str, Any]:
    """The DeepSpeed config: the user's JSON with every `"auto"` resolved, plus the flags."""
    ds = json.loads(json.dumps(user))  # deep copy
    ds["train_micro_batch_size_per_gpu"] = resolved.micro_batch_size
    ds["gradient_accumulation_steps"] = resolved.grad_accum
    global_batch = resolved.micro_batch_size * resolved.grad_accum * world_size
    given = ds.get("train_batch_size", "auto")
    if given not in ("auto", global_batch):
        raise ValueError(
            f"train_batch_size = {given} in {config.deepspeed} differs from micro batch "
            f"{resolved.micro_batch_size} x grad accum {resolved.grad_accum} x world size "
            f'{world_size} = {global_batch}; set it to "auto"'
        )
    ds["train_batch_size"] = global_batch
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = config.grad_clip
    ds.setdefault("zero_optimization", {})["stage"] = resolved.zero_stage
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": resolved.bf16}
    ds.setdefault("steps_per_print", 10**9)  # the trainer logs every step itself
    ds.setdefault("wall_clock_breakdown", False)

    auto_values = {
        "lr": resolved.lr,
        "warmup_max_lr": resolved.lr,
        "warmup_min_lr": 0.0,
        "warmup_num_steps": config.warmup_steps,
        "total_num_steps": total_steps,
        "weight_decay": config.weight_decay,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
    }
    for section in ("optimizer", "scheduler"):
        params = ds.get(section, {}).get("params", {})
        for key, value in params.items():
            if value == "auto":
                if key not in auto_values:
                    raise ValueError(
                        f'{section}.params.{key} = "auto" in {config.deepspeed} cannot be '
                        f"resolved; give it a value (resolvable: {sorted(auto_values)})"
                    )
                params[key] = auto_values[key]
    _refuse_unresolved(ds, config.deepspeed)
    return ds


def _refuse_unresolved(node: Any, source: Path | None, where: str = "") -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _refuse_unresolved(value, source, f"{where}.{key}" if where else key)
    elif node == "auto":
        raise ValueError(
            f'{where} = "auto" in {source} cannot be resolved by the trainer; give it a value'
        )
