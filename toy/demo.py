"""The end-to-end demo: SLPO against DPO on a task with a programmatic judge.

    python -m toy demo --out runs/demo [--seed 0]

1. build a tiny model and fine-tune it on the addition task until it is right part of the time;
2. sample it on-policy with vLLM and pair right answers with wrong ones;
3. score the pairs with the pipeline, the fine-tuned model being the reference (the engine that
   sampled scores too);
4. train four runs from the fine-tuned model, same data, steps and seed, differing only in the
   loss: SLPO alpha 1, SLPO alpha 0.5, DPO beta 0.1, tempered SLPO;
5. evaluate each on held-out prompts (judged accuracy, KL from the reference) and on the pairs
   (how far the chosen and rejected log-probs moved); write the table and the plots.

Every stage is seeded by ``seed``: base weights, data order, sampling, training shuffles.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from toy.sft import SFTConfig, SFTReport, run_sft
from toy.task import TaskSplits, split_problems

logger = logging.getLogger(__name__)

MARKER = ".slpo-demo"
"""File that marks a folder as a demo run, which a new run may replace."""
BETA = 0.1
"""DPO's beta, and the scale of every run's reward metrics (the trainer's default)."""


@dataclass(frozen=True)
class TrainRun:
    """One preference run: its folder name, table label and loss flags."""

    name: str
    label: str
    loss_args: tuple[str, ...]


RUNS = (
    TrainRun("slpo_a1", "SLPO α=1", ("--loss", "slpo", "--alpha", "1.0")),
    TrainRun("slpo_a0.5", "SLPO α=0.5", ("--loss", "slpo", "--alpha", "0.5")),
    TrainRun("dpo_b0.1", "DPO β=0.1", ("--loss", "dpo", "--beta", str(BETA))),
    TrainRun("slpo_tempered", "SLPO tempered α=1", ("--loss", "slpo_tempered", "--alpha", "1.0")),
)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of one demo run. The defaults fit in a few minutes on 2 CPU cores."""

    out: Path
    """Run folder (replaced when it holds an earlier demo run)."""
    seed: int = 0
    """Seeds the base weights, fine-tuning, sampling and the four training runs."""
    size: str = "tiny"
    """Factory preset of the base model."""
    n_pref: int = 600
    """Prompts sampled for the training pairs."""
    n_eval: int = 300
    """Held-out prompts: judged accuracy, KL, and the held-out pairs."""
    n_dev: int = 200
    """Prompts judged during fine-tuning to decide when to stop."""
    samples: int = 8
    """Completions sampled per prompt to make pairs."""
    eval_samples: int = 4
    """Completions sampled per held-out prompt for sampled accuracy and the KL estimate."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Fine-tuning settings (its seed is replaced by ``seed``)."""
    train_steps: int = 60
    """Optimizer steps of every preference run."""
    micro_batch_size: int = 16
    """Pairs per step."""
    lr: float = 1e-4
    """Peak learning rate of every preference run."""
    warmup_steps: int = 5
    """Linear warm-up steps of every preference run."""
    curve_points: int = 6
    """Checkpoints per run judged for the accuracy curve (the last is the final model)."""
    train_jobs: int = 1
    """Preference runs trained at the same time (each with cores / jobs threads)."""
    kv_cache_gib: float = 0.5
    """vLLM's KV cache on CPU."""
    keep_checkpoints: bool = False
    """Keep the trainer's checkpoints once judged (they are deleted by default)."""
    runs: tuple[TrainRun, ...] = RUNS
    """The preference runs to compare."""

    def validate(self) -> DemoConfig:
        for name in ("n_pref", "n_eval", "n_dev", "samples", "eval_samples", "train_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("micro_batch_size", "curve_points", "train_jobs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.samples < 2:
            raise ValueError(f"samples must be >= 2 to make a pair, got {self.samples}")
        if not self.runs:
            raise ValueError("runs is empty: give at least one preference run")
        self.sft.validate()
        return self

    @property
    def save_every(self) -> int:
        return max(1, self.train_steps // self.curve_points)


Progress = Callable[[str], None]


class Stages:
    """Numbered progress lines with each stage's wall time, also kept for the results."""

    def __init__(self, total: int, progress: Progress):
        self.total, self.progress, self.index = total, progress, 0
        self.timings: dict[str, float] = {}

    def run(self, title: str, fn: Callable[[], Any], done: Callable[[Any], str]) -> Any:
        self.index += 1
        self.progress(f"[{self.index}/{self.total}] {title} ...")
        started = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - started
        self.timings[title] = seconds
        self.progress(f"[{self.index}/{self.total}] {title}: {done(value)} ({seconds:.1f} s)")
        return value


def prepare_out(out: Path) -> Path:
    """An empty run folder: a previous demo run there is replaced, anything else refused."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ValueError(
                f"--out {out} is not empty and holds no demo run (no {MARKER} file); choose a "
                "new or empty folder"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("a toy demo run; `python -m toy demo` may replace this folder\n")
    return out


def run_demo(config: DemoConfig, progress: Progress = logger.info, *, scorer=None) -> dict:
    """Run every stage into ``config.out``; return the results (also in ``results.json``).

    ``scorer``, a started ``pipeline.scorer.VllmScorer`` on an already fine-tuned model, skips
    building and fine-tuning: that model becomes the reference. Without one, the demo starts
    (and stops) its own engine.
    """
    from toy.evaluate import read_pairs
    from toy.results import results_table, write_results

    config = replace(config, sft=replace(config.sft, seed=config.seed)).validate()
    out = prepare_out(config.out)
    torch.manual_seed(config.seed)
    splits = split_problems(
        n_eval=config.n_eval, n_dev=config.n_dev, n_pref=config.n_pref, seed=config.seed
    )
    stages = Stages(6 if scorer is None else 4, progress)
    commands = [f"python -m toy demo --out {out} --seed {config.seed}"]

    if scorer is None:
        reference, sft = _build_and_finetune(config, out, splits, stages)
    else:
        reference, sft = Path(scorer.model), SFTReport()
    pairs = stages.run(
        f"sampling {config.samples} completions for {len(splits.pref) + len(splits.eval)} "
        "prompts with vLLM and pairing them",
        lambda: _sample_and_score(config, out, splits, reference, scorer, commands),
        lambda p: (
            f"{p['train']['pairs']} training pairs, {p['eval']['pairs']} held-out pairs, "
            f"scored into {out / 'scored'}"
        ),
    )
    runs = stages.run(
        f"training {len(config.runs)} runs x {config.train_steps} steps",
        lambda: _train_all(config, out, reference, commands),
        lambda r: ", ".join(f"{name} {seconds:.0f} s" for name, seconds in r.items()),
    )
    evaluated = stages.run(
        f"evaluating {len(config.runs) + 1} models on {len(splits.eval)} held-out prompts",
        lambda: _evaluate_all(config, out, reference, splits, read_pairs),
        lambda e: f"{len(e)} models",
    )
    results = {
        "seed": config.seed,
        "config": _config_dict(config),
        "commands": commands,
        "sft": sft.to_dict(),
        "pairs": pairs,
        "train_seconds": runs,
        "timings": stages.timings,
        "runs": evaluated,
    }
    written = stages.run(
        "writing results.md, results.json and plots",
        lambda: write_results(results, out),
        lambda paths: f"{len(paths)} files in {out}",
    )
    del written
    results["table"] = results_table(results)
    return results


def _build_and_finetune(config: DemoConfig, out: Path, splits: TaskSplits, stages: Stages):
    from toy.factory import build_model

    base = stages.run(
        f"building the {config.size} base model (seed {config.seed})",
        lambda: build_model(out / "base", size=config.size, seed=config.seed),
        lambda path: str(path),
    )
    report = stages.run(
        f"fine-tuning on {len(splits.sft)} problems until dev accuracy reaches "
        f"{config.sft.target_accuracy:.0%}",
        lambda: run_sft(base, out / "sft", splits.sft, splits.dev, config.sft),
        lambda r: f"{r.steps} steps, dev accuracy {r.dev_accuracy:.1%}",
    )
    return out / "sft", report


def _sample_and_score(config, out: Path, splits: TaskSplits, reference: Path, scorer, commands):
    """Sample both prompt sets, make pairs, score them; one engine serves both jobs."""
    from pipeline import score
    from pipeline.scorer import VllmScorer
    from toy.pairs import write_jsonl
    from toy.sample import make_pairs, sample_completions

    owned = scorer is None
    if owned:
        scorer = VllmScorer(reference, dtype="float32", kv_cache_gib=config.kv_cache_gib)
    stats = {}
    try:
        tokenizer = scorer.llm.get_tokenizer()
        for split, problems, seed in (
            ("train", splits.pref, config.seed),
            ("eval", splits.eval, config.seed + 10**6),
        ):
            samples = sample_completions(
                scorer.llm,
                tokenizer,
                [p.prompt for p in problems],
                num_samples=config.samples,
                seed=seed,
            )
            rows, pair_stats = make_pairs(problems, samples, seed=seed)
            if len(rows) < config.micro_batch_size:
                raise RuntimeError(
                    f"only {len(rows)} {split} pairs from {len(problems)} prompts (fewer than "
                    f"micro_batch_size {config.micro_batch_size}): the reference is almost "
                    "always right or always wrong; change sft.target_accuracy or n_pref"
                )
            path = write_jsonl(rows, out / "data" / f"{split}.jsonl")
            score(
                path,
                model=reference,
                out=out / "scored",
                split=split,
                scorer=scorer,
                progress=False,
            )
            commands.append(
                f"python -m pipeline score {path} --model {reference} --out {out / 'scored'} "
                f"--split {split}  # in-process: pipeline.score(..., scorer=<the sampling engine>)"
            )
            stats[split] = pair_stats.to_dict()
    finally:
        if owned:
            scorer.close()
    return stats


def train_command(config: DemoConfig, out: Path, reference: Path, run: TrainRun) -> list[str]:
    """The trainer's command line for one run: same data, steps and seed for every loss."""
    every = str(config.save_every)
    return [
        sys.executable, "-m", "train",
        "--data", str(out / "scored"),
        "--model", str(reference),
        "--out", str(out / "train" / run.name),
        *run.loss_args,
        "--micro-batch-size", str(config.micro_batch_size),
        "--grad-accum", "1",
        "--lr", f"{config.lr:g}",
        "--warmup-steps", str(config.warmup_steps),
        "--max-steps", str(config.train_steps),
        "--eval-split", "eval",
        "--eval-every", every,
        "--save-every", every,
        "--seed", str(config.seed),
    ]  # fmt: skip


def _train_all(config: DemoConfig, out: Path, reference: Path, commands: list[str]):
    """Run the trainer CLI once per run, ``train_jobs`` at a time; seconds per run."""
    env = dict(os.environ)
    if config.train_jobs > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // config.train_jobs))
    pending, running, seconds = list(config.runs), [], {}
    while pending or running:
        while pending and len(running) < config.train_jobs:
            run = pending.pop(0)
            argv = train_command(config, out, reference, run)
            commands.append(shlex.join(["python", *argv[1:]]))
            log = out / "train" / f"{run.name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "w") as sink:
                process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env)
            running.append((run, process, log, time.perf_counter()))
        run, process, log, started = running.pop(0)
        if process.wait() != 0:
            for _, other, _, _ in running:
                other.kill()
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            raise RuntimeError(f"training {run.name} failed (exit {process.returncode}):\n{tail}")
        seconds[run.name] = time.perf_counter() - started
    return seconds


def _evaluate_all(config: DemoConfig, out: Path, reference: Path, splits, read_pairs):
    """Metrics, accuracy curve and training curves of the reference and of every run."""
    from toy.evaluate import evaluate_model, greedy_accuracy, load_checkpoint, load_model
    from toy.results import read_training_curves

    torch.set_num_threads(os.cpu_count() or 1)
    ref_model, tokenizer = load_model(reference)
    pair_sets = {split: read_pairs(out / "scored" / split) for split in ("train", "eval")}
    options = {"num_samples": config.eval_samples, "seed": config.seed}
    ref_metrics = evaluate_model(ref_model, None, tokenizer, splits.eval, pair_sets, **options)
    runs: dict[str, Any] = {"reference": {"label": "SFT (reference)", "metrics": ref_metrics}}

    for run in config.runs:
        run_dir = out / "train" / run.name
        model, _ = load_model(run_dir / "final")
        metrics = evaluate_model(model, ref_model, tokenizer, splits.eval, pair_sets, **options)
        steps, accuracy = [0], [ref_metrics["greedy_accuracy"]]
        for folder in sorted((run_dir / "checkpoints").glob("step-*")):
            step = int(folder.name.removeprefix("step-"))
            if step < config.train_steps:
                steps.append(step)
                accuracy.append(
                    greedy_accuracy(load_checkpoint(ref_model, folder), tokenizer, splits.eval)
                )
        steps.append(config.train_steps)
        accuracy.append(metrics["greedy_accuracy"])
        train_curve, eval_curve = read_training_curves(run_dir / "metrics.jsonl", beta=BETA)
        runs[run.name] = {
            "label": run.label,
            "loss_args": list(run.loss_args),
            "metrics": metrics,
            "accuracy_curve": {"step": steps, "greedy_accuracy": accuracy},
            "train_curve": train_curve,
            "eval_curve": eval_curve,
        }
        if not config.keep_checkpoints:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return runs


def _config_dict(config: DemoConfig) -> dict[str, Any]:
    values = asdict(config)
    values["out"] = str(config.out)
    values["runs"] = [asdict(r) for r in config.runs]
    return json.loads(json.dumps(values))
