"""Command line: `python -m train --data DIR --model DIR --out DIR [options]`.

Runs as one process, under `torchrun --nproc_per_node N -m train ...`, or under the `deepspeed`
launcher (`deepspeed [--hostfile H] --module train ...`). Flag names are chosen not to be
prefixes of the launchers' own options, which those launchers would otherwise take.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from train.config import LOSS_NAMES, LR_SCHEDULES, TARGET_RULES, TrainConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="Train a policy on scored shards with SLPO or a DPO-family loss, under "
        "DeepSpeed ZeRO. No reference model is loaded: its log-probs come from the shards.",
        allow_abbrev=False,
    )
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--data", type=Path, required=True, help="dataset folder (split subfolders)")
    io.add_argument("--model", type=Path, required=True, help="policy model folder (HF format)")
    io.add_argument("--out", type=Path, required=True, help="run folder")
    io.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: --model)")
    io.add_argument("--train-split", default="train", help="training split (default: train)")
    io.add_argument("--eval-split", help="evaluation split, e.g. eval (default: none)")

    loss = p.add_argument_group("loss")
    loss.add_argument("--loss", choices=LOSS_NAMES, default="slpo", help="default: slpo")
    loss.add_argument("--alpha", type=float, default=1.0, help="SLPO mass shift (default 1)")
    loss.add_argument("--target-rule", choices=TARGET_RULES, default="shift")
    loss.add_argument("--beta", type=float, default=0.1, help="DPO-family beta (default 0.1)")
    loss.add_argument("--label-smoothing", type=float, default=0.0, help="cDPO smoothing")

    opt = p.add_argument_group('optimization (flags fill a DeepSpeed JSON\'s "auto" values)')
    opt.add_argument("--deepspeed", type=Path, help="DeepSpeed JSON config")
    opt.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), help="default 2")
    opt.add_argument("--micro-batch-size", type=int, help="pairs per rank per forward (4)")
    opt.add_argument("--grad-accum", type=int, help="micro-batches per step (default 1)")
    opt.add_argument("--lr", type=float, help="peak learning rate (default 1e-6)")
    opt.add_argument("--weight-decay", type=float, default=0.0)
    opt.add_argument("--grad-clip", type=float, default=1.0, help="0 disables clipping")
    opt.add_argument("--warmup-steps", type=int, default=0)
    opt.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="linear")
    length = opt.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=int, help="optimizer steps (cycles epochs)")
    length.add_argument("--epochs", type=int, help="passes over the data (default 1)")
    opt.add_argument("--bf16", action="store_true", help="bfloat16 (GPUs; slow on CPU)")
    opt.add_argument("--gradient-checkpointing", action="store_true")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run Python code shipped in the model folder (off by default)",
    )

    run = p.add_argument_group("evaluation, checkpoints, checks")
    run.add_argument("--eval-every", type=int, default=0, help="steps; 0: at the end only")
    run.add_argument("--save-every", type=int, default=0, help="steps; 0: at the end only")
    run.add_argument("--keep-checkpoints", type=int, default=0, help="newest N; 0: all")
    run.add_argument("--resume", help="auto (newest complete checkpoint) or a checkpoint folder")
    run.add_argument("--halt-after-step", type=int, help="stop as if preempted after step N")
    run.add_argument("--skip-ref-check", action="store_true", help="skip the step-0 check")
    run.add_argument("--ref-check-atol", type=float, help="step-0 check tolerance (nats)")
    run.add_argument("--skip-row-checks", action="store_true", help="footer checks only")

    tune = p.add_argument_group("data streaming")
    tune.add_argument("--shuffle-buffer", type=int, default=1024, help="rows (default 1024)")
    tune.add_argument("--read-batch-rows", type=int, default=256)
    tune.add_argument("--logps-chunk-size", type=int, default=128)
    tune.add_argument("--dist-backend", help="default: gloo on CPU, else the accelerator's")
    # The deepspeed launcher passes --local_rank unless run with --no_local_rank.
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    return p


def config_from_args(args: argparse.Namespace, argv: list[str]) -> TrainConfig:
    values = {k: v for k, v in vars(args).items() if k != "local_rank"}
    return TrainConfig(**values, extra={"argv": argv})


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(name)s %(levelname)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # DeepSpeed's own calls of deprecated torch.distributed names; nothing to act on here.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    _setup_logging()
    config = config_from_args(args, argv)

    from train.api import train
    from train.distributed import RankError
    from train.refcheck import ReferenceMismatchError

    try:
        summary = train(config)
    except (ValueError, OSError, RankError, ReferenceMismatchError) as e:
        print(f"python -m train: error: {e}", file=sys.stderr)
        _shutdown(together=False)
        return 1
    _shutdown(together=True)
    if int(os.environ.get("RANK", "0")) == 0:
        steps = summary["end_step"]
        where = "halted" if summary["halted"] else f"final model in {config.out / 'final'}"
        print(f"trained {steps} steps; {where}; summary in {config.out / 'summary.json'}")
    return 0


def _shutdown(*, together: bool) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        if together:
            # Leave together: a rank tearing down gloo while a peer still talks to it can abort.
            dist.barrier()
        dist.destroy_process_group()
