"""Command line of the toy package.

python -m toy build OUT_DIR [--size tiny|small] [--seed N]
python -m toy demo --out DIR [--seed N] [sizes...]
python -m toy study --out DIR [--seeds 0 1 2] [--reuse] [sizes...]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

from toy.factory import PRESETS

# The demo's sizes as flags: flag, DemoConfig field, type. Defaults come from DemoConfig.
DEMO_FLAGS: tuple[tuple[str, str, type], ...] = (
    ("--size", "size", str),
    ("--n-pref", "n_pref", int),
    ("--n-eval", "n_eval", int),
    ("--n-dev", "n_dev", int),
    ("--samples", "samples", int),
    ("--eval-samples", "eval_samples", int),
    ("--train-steps", "train_steps", int),
    ("--micro-batch-size", "micro_batch_size", int),
    ("--lr", "lr", float),
    ("--warmup-steps", "warmup_steps", int),
    ("--curve-points", "curve_points", int),
    ("--train-jobs", "train_jobs", int),
    ("--kv-cache-gib", "kv_cache_gib", float),
)
# Fine-tuning flags: flag, SFTConfig field, type.
SFT_FLAGS: tuple[tuple[str, str, type], ...] = (
    ("--sft-max-steps", "max_steps", int),
    ("--sft-batch-size", "batch_size", int),
    ("--sft-lr", "lr", float),
    ("--sft-target-accuracy", "target_accuracy", float),
)


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _add_demo_flags(parser: argparse.ArgumentParser) -> None:
    from toy.demo import DemoConfig
    from toy.sft import SFTConfig

    demo, sft = DemoConfig(out=Path(".")), SFTConfig()
    for flags, defaults in ((DEMO_FLAGS, demo), (SFT_FLAGS, sft)):
        for flag, field, kind in flags:
            value = getattr(defaults, field)
            parser.add_argument(flag, type=kind, default=value, help=f"default {value}")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep trainer checkpoints")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m toy", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build a toy model folder (tokenizer + weights)")
    build.add_argument("out_dir", type=Path, help="folder to write the model into")
    build.add_argument("--size", choices=sorted(PRESETS), default="tiny", help="preset size")
    build.add_argument("--seed", type=int, default=0, help="seed of the random weights")

    demo = commands.add_parser("demo", help="SFT, on-policy pairs, SLPO vs DPO, results table")
    demo.add_argument("--out", type=Path, required=True, help="run folder")
    demo.add_argument("--seed", type=int, default=0, help="seed of every stage (default 0)")
    _add_demo_flags(demo)

    study = commands.add_parser("study", help="the demo over several seeds, mean and spread")
    study.add_argument("--out", type=Path, required=True, help="study folder (seed-N/ inside)")
    study.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default 0 1 2")
    study.add_argument("--reuse", action="store_true", help="reuse finished seed folders")
    _add_demo_flags(study)
    return parser.parse_args(argv)


def _demo_config(args: argparse.Namespace, *, seed: int):
    from toy.demo import DemoConfig
    from toy.sft import SFTConfig

    sft = SFTConfig(**{field: getattr(args, _dest(flag)) for flag, field, _ in SFT_FLAGS})
    values = {field: getattr(args, _dest(flag)) for flag, field, _ in DEMO_FLAGS}
    return DemoConfig(
        out=args.out, seed=seed, sft=sft, keep_checkpoints=args.keep_checkpoints, **values
    )


def _demo_argv(args: argparse.Namespace) -> list[str]:
    """The demo flags of ``args`` that differ from their defaults, to pass on to each seed."""
    defaults = _parse_args(["demo", "--out", "."])
    argv = []
    for flag, _, _ in DEMO_FLAGS + SFT_FLAGS:
        value = getattr(args, _dest(flag))
        if value != getattr(defaults, _dest(flag)):
            argv += [flag, str(value)]
    return argv + (["--keep-checkpoints"] if args.keep_checkpoints else [])


def _build(args: argparse.Namespace) -> None:
    # Imported here so that --help does not pay for torch and transformers.
    from safetensors import safe_open

    from toy.factory import build_model

    out_dir = build_model(args.out_dir, size=args.size, seed=args.seed)
    with safe_open(out_dir / "model.safetensors", framework="pt") as weights:
        names = weights.keys()
        n_params = sum(math.prod(weights.get_slice(name).get_shape()) for name in names)
    spec = PRESETS[args.size]
    print(
        f"built toy model size={args.size} seed={args.seed} parameters={n_params:,} "
        f"hidden={spec.hidden_size} layers={spec.num_hidden_layers} "
        f"heads={spec.num_attention_heads}/{spec.num_key_value_heads} in {out_dir}"
    )
    for path in sorted(out_dir.iterdir()):
        print(f"  {path.name:<24} {path.stat().st_size:>12,} bytes")


def _quiet_libraries() -> None:
    """Keep the demo's output to its stage lines: libraries log errors only, no load bars.

    Each setting is a default; the environment overrides it.
    """
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # vLLM's engine processes inherit these: no deprecation notes, no C++ NUMA notices.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    import torch

    if not torch.cuda.is_available():
        # DeepSpeed warns at import that it falls back to the CPU; say so up front instead.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _demo(args: argparse.Namespace) -> int:
    from toy.demo import run_demo

    _quiet_libraries()

    config = _demo_config(args, seed=args.seed)
    try:
        results = run_demo(config, progress=lambda line: print(line, flush=True))
    except (ValueError, RuntimeError) as e:
        print(f"python -m toy demo: error: {e}", file=sys.stderr)
        return 1
    print(f"\nResults (seed {args.seed}; details in {args.out / 'results.md'}):\n")
    print(results["table"])
    return 0


def _study(args: argparse.Namespace) -> int:
    from toy.study import run_seeds, write_study

    _demo_config(args, seed=args.seeds[0]).validate()  # refuse bad sizes before any run
    try:
        seeds = run_seeds(
            args.out,
            args.seeds,
            _demo_argv(args),
            reuse=args.reuse,
            progress=lambda line: print(line, flush=True),
        )
    except RuntimeError as e:
        print(f"python -m toy study: error: {e}", file=sys.stderr)
        return 1
    study = write_study(seeds, args.out)
    print(
        f"\nStudy over seeds {study['seeds']} (mean ± std; details in {args.out / 'study.md'}):\n"
    )
    print(study["table"])
    print(study["comparison_table"])
    print(study["paired_table"])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    if args.command == "build":
        _build(args)
        return 0
    return _demo(args) if args.command == "demo" else _study(args)


if __name__ == "__main__":
    sys.exit(main())
