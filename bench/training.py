"""Training: our trainer (SLPO, reference log-probs from shards) against TRL's `DPOTrainer`.

    python -m bench.training [--sizes small] [--steps 20] [--micro-batch-size 8] [--quick]

Three sides, each one process with the same thread count, on the same model, the same scored
pairs (the very token ids of the shards: TRL is handed them instead of re-tokenizing the text),
the same micro-batch, steps, optimizer (torch AdamW, lr 1e-6, linear decay, no warm-up, grad
clip 1.0) and float32:

- `slpo`: `python -m train --loss slpo` (DeepSpeed, its default ZeRO stage, one process).
- `trl`: `DPOTrainer` with its default resident reference model (a second copy of the model,
  one extra forward per step).
- `trl-precompute`: `DPOTrainer(precompute_ref_log_probs=True)`: one reference pass over the
  dataset at start-up, then no reference model.

Seconds per step are the steady state: the median wall time between consecutive step ends,
skipping the first `--skip-steps` steps (warm-up, our step-0 reference check). Total wall time
(imports, model loading, TRL's precompute, our final save) is reported beside it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import common, workload

TARGET_STEP = 0.75
TARGET_RSS = 0.8
SIDE_NAMES = ("slpo", "trl", "trl-precompute")


# --- the TRL sides (run in their own process) -----------------------------------------------


def side_trl(args: argparse.Namespace) -> dict[str, Any]:
    """TRL's DPOTrainer on the shards' token ids; step end times from a callback."""
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    started = time.perf_counter()
    step_ends: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, *_args, **_kwargs):
            step_ends.append(time.perf_counter())

    class ShardIdsDPOTrainer(DPOTrainer):
        """DPOTrainer fed the shards' token ids, exactly the sequences our trainer sees."""

        def _prepare_dataset(self, dataset, *_args, **_kwargs):
            return dataset

    columns = ["prompt_ids", "chosen_ids", "rejected_ids"]
    shards = sorted(Path(args.data, "train").glob("*.parquet"))
    rows = [r for path in shards for r in pq.read_table(path, columns=columns).to_pylist()]
    config = DPOConfig(
        output_dir=str(args.out),
        per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        learning_rate=1e-6,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        beta=0.1,
        loss_type=["sigmoid"],
        max_length=None,
        precompute_ref_log_probs=args.precompute,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = ShardIdsDPOTrainer(
        model=str(args.model),
        args=config,
        train_dataset=Dataset.from_list(rows),  # in memory: no precompute cache between runs
        processing_class=AutoTokenizer.from_pretrained(args.model),
        callbacks=[StepTimer()],
    )
    constructed = time.perf_counter()
    output = trainer.train()
    finished = time.perf_counter()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "startup_seconds": constructed - started,
        "train_seconds": finished - constructed,
        "step_ends": [t - constructed for t in step_ends],
        "losses": losses,
        "train_loss": output.training_loss,
        "models": 1 if args.precompute else 2,
        "threads": torch.get_num_threads(),
        "pairs": len(rows),
    }


# --- the comparison -------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="small", help="toy model sizes (default small)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per side (default 20)")
    p.add_argument("--micro-batch-size", type=int, default=8, help="pairs per step (default 8)")
    p.add_argument("--skip-steps", type=int, default=2, help="warm-up steps left out (2)")
    p.add_argument("--zero-stage", type=int, help="our trainer's ZeRO stage (default: its own)")
    p.add_argument("--sides", default=",".join(SIDE_NAMES), help="which sides to run")
    p.add_argument("--quick", action="store_true", help="tiny model, 6 steps: a smoke run")
    p.add_argument("--join", type=int, default=workload.DEFAULT_JOIN, help="toy pairs per pair")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="OMP threads per side")
    # One TRL side, run by the comparison in its own process.
    p.add_argument("--side", choices=("trl",), help=argparse.SUPPRESS)
    p.add_argument("--precompute", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.steps = "tiny", min(args.steps, 6)
    return args


def steady_seconds_per_step(step_ends: list[float], skip: int) -> float | None:
    """Median interval between consecutive step ends after the first `skip` steps."""
    # step_ends[i] ends step i + 1, so intervals[j] is the duration of step j + 2.
    intervals = [b - a for a, b in itertools.pairwise(step_ends)][max(0, skip - 1) :]
    return statistics.median(intervals) if intervals else None


def run_slpo(model: Path, data: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [common.python(), "-m", "train", "--data", data, "--model", model, "--out", out]
    cmd += ["--loss", "slpo", "--micro-batch-size", args.micro_batch_size]
    cmd += ["--max-steps", args.steps, "--seed", 0]
    if args.zero_stage is not None:
        cmd += ["--zero-stage", args.zero_stage]
    run = common.run_side(
        cmd,
        label=f"training-{model.name}-slpo",
        env=common.side_env(args.threads),
        timeout=7200,
        result_file=out / "summary.json",
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r and "step" in r]
    summary = run.result
    return {
        "step_ends": [r["elapsed"] for r in steps],
        "losses": [r["loss"] for r in steps],
        "step0_check": summary.get("ref_check"),
        "zero_stage": summary.get("zero_stage"),
        "models": summary.get("models_loaded"),
        "self_peak_rss_mib": summary["ranks"][0]["peak_rss_mb"],
        "train_step_seconds_mean": summary.get("seconds_per_step_mean"),
        "wall_seconds": run.wall_seconds,
        "peak_rss_mib": run.peak_rss_mib,
        "peak_pss_mib": run.peak_pss_mib,
    }


def run_trl(
    model: Path, data: Path, out: Path, args: argparse.Namespace, *, precompute: bool
) -> dict[str, Any]:
    cmd = [common.python(), "-m", "bench.training", "--side", "trl", "--data", data]
    cmd += ["--model", model, "--out", out, "--steps", args.steps]
    cmd += ["--micro-batch-size", args.micro_batch_size]
    name = "trl-precompute" if precompute else "trl"
    run = common.run_side(
        [*cmd, *(["--precompute"] if precompute else [])],
        label=f"training-{model.name}-{name}",
        env=common.side_env(args.threads),
        timeout=7200,
    )
    return {
        **run.result,
        "wall_seconds": run.wall_seconds,
        "peak_rss_mib": run.peak_rss_mib,
        "peak_pss_mib": run.peak_pss_mib,
    }


def run_size(size: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every side on one model size, on a dataset of exactly `steps x micro-batch` pairs."""
    model = workload.ensure_model(size, threads=args.threads)
    pairs = workload.ensure_pairs(args.steps * args.micro_batch_size, join=args.join)
    data = workload.ensure_scored(model, pairs, threads=args.threads)
    runs_dir = common.WORK_DIR / "training" / f"{size}-{time.strftime('%Y%m%d-%H%M%S')}"
    sides: dict[str, dict[str, Any]] = {}
    for name in args.sides.split(","):
        out = runs_dir / name
        if name == "slpo":
            sides[name] = run_slpo(model, data, out, args)
        else:
            sides[name] = run_trl(model, data, out, args, precompute=name == "trl-precompute")
        side = sides[name]
        side["seconds_per_step"] = steady_seconds_per_step(side["step_ends"], args.skip_steps)
    ours, trl = sides.get("slpo", {}), sides.get("trl", {})
    return {
        "size": size,
        "parameters": workload.count_parameters(model),
        "data": str(data),
        "sides": sides,
        "step_ratio": common.ratio(ours.get("seconds_per_step"), trl.get("seconds_per_step")),
        "rss_ratio": common.ratio(ours.get("peak_rss_mib"), trl.get("peak_rss_mib")),
        "wall_ratio": common.ratio(ours.get("wall_seconds"), trl.get("wall_seconds")),
        "rows_per_second": (
            args.micro_batch_size / ours["seconds_per_step"]
            if ours.get("seconds_per_step")
            else None
        ),
    }


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    labels = {
        "slpo": "ours: SLPO, reference from shards",
        "trl": "TRL DPOTrainer, resident reference",
        "trl-precompute": "TRL DPOTrainer, precompute_ref_log_probs",
    }
    rows, summary = [], []
    for r in results:
        trl = r["sides"].get("trl", {})
        for name, side in r["sides"].items():
            rows.append(
                [
                    f"{r['size']} ({r['parameters']['total'] / 1e6:.1f}M)",
                    labels[name],
                    side["seconds_per_step"],
                    common.ratio(side["seconds_per_step"], trl.get("seconds_per_step")),
                    side["peak_rss_mib"],
                    common.ratio(side["peak_rss_mib"], trl.get("peak_rss_mib")),
                    side["wall_seconds"],
                    side["losses"][0] if side["losses"] else None,
                    side.get("models"),
                ]
            )
        summary.append(
            [
                r["size"],
                r["step_ratio"],
                common.verdict(r["step_ratio"], TARGET_STEP, at_least=False),
                r["rss_ratio"],
                common.verdict(r["rss_ratio"], TARGET_RSS, at_least=False),
                r["wall_ratio"],
                r["rows_per_second"],
            ]
        )
    header = [
        "model",
        "side",
        "s/step (steady)",
        "vs TRL resident",
        "peak RSS MiB",
        "vs TRL resident",
        "process wall s",
        "step-1 loss",
        "models loaded",
    ]
    return "\n\n".join(
        [
            f"{args.steps} steps of {args.micro_batch_size} pairs, {args.threads} threads; "
            f"steady state skips the first {args.skip_steps} steps",
            common.markdown_table(header, rows),
            common.markdown_table(
                [
                    "model",
                    "step time ours / TRL",
                    "target",
                    "peak RSS ours / TRL",
                    "target",
                    "total wall ours / TRL",
                    "our trainer's pairs/s",
                ],
                summary,
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.side:
        common.write_result(args.result, side_trl(args))
        return 0

    load_before = common.load_average()
    results = [run_size(size, args) for size in args.sizes.split(",")]
    record = common.base_record("training", argv, load_before)
    record.update(
        quick=args.quick,
        threads=args.threads,
        steps=args.steps,
        micro_batch_size=args.micro_batch_size,
        skip_steps=args.skip_steps,
        join=args.join,
        results=results,
    )
    path = common.append_record("training", record)
    print("\n" + report(results, args))
    print(f"\nload average before {load_before}, after {record['load_after']}; record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
