"""Command line: ``python -m toy build OUT_DIR [--size tiny|small] [--seed N]``."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from toy.factory import PRESETS


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m toy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build a toy model folder (tokenizer + weights)")
    build.add_argument("out_dir", type=Path, help="folder to write the model into")
    build.add_argument("--size", choices=sorted(PRESETS), default="tiny", help="preset size")
    build.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)

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


if __name__ == "__main__":
    main()
