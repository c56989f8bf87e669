"""Every benchmark in one run, side by side, then the ratios against their targets.

    python -m bench [--quick] [--only scoring,training,reader] [--wait-quiet 1.0]

Each benchmark prints its own tables and appends its record under `bench/results/`; the reader
is compared with the trainer's consumption measured by the training benchmark of this run.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench import common, reader, scoring, training

BENCHES = ("scoring", "training", "reader")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measure")
    p.add_argument("--only", default=",".join(BENCHES), help="benchmarks to run, in this order")
    p.add_argument(
        "--wait-quiet",
        type=float,
        metavar="LOAD",
        help="before each benchmark, wait (up to --wait-timeout s) for a 1-minute load below LOAD",
    )
    p.add_argument("--wait-timeout", type=float, default=1800.0)
    return p.parse_args(argv)


def summary(records: dict[str, dict]) -> str:
    rows = []
    if "scoring" in records:
        for r in records["scoring"]["results"]:
            rows.append(
                [
                    f"scoring, {r['size']} model",
                    "vLLM pipeline / transformers forward, completion tokens/s",
                    r["speedup"],
                    common.verdict(r["speedup"], scoring.TARGET, at_least=True),
                ]
            )
    if "training" in records:
        for r in records["training"]["results"]:
            for key, what, target in (
                ("step_ratio", "seconds per step, ours / TRL resident reference", 0.75),
                ("rss_ratio", "peak RSS, ours / TRL resident reference", 0.8),
            ):
                rows.append(
                    [
                        f"training, {r['size']} model",
                        what,
                        r[key],
                        common.verdict(r[key], target, at_least=False),
                    ]
                )
    if "reader" in records:
        r = records["reader"]
        rows.append(
            [
                "reader",
                "slowest read rows/s / trainer's pairs/s",
                r["rate_ratio"],
                common.verdict(r["rate_ratio"], reader.TARGET_RATE, at_least=True),
            ]
        )
        rows.append(
            [
                "reader",
                "peak RSS growth, smallest to largest dataset",
                r["rss_growth"],
                common.verdict(abs(r["rss_growth"]), reader.TARGET_FLAT, at_least=False),
            ]
        )
    return common.markdown_table(["benchmark", "ratio", "value", "target"], rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    quick = ["--quick"] if args.quick else []
    started = time.perf_counter()
    records: dict[str, dict] = {}
    for name in args.only.split(","):
        if name not in BENCHES:
            print(f"error: --only: unknown benchmark {name!r}; choose from {BENCHES}")
            return 2
        if args.wait_quiet is not None:
            common.wait_until_quiet(args.wait_quiet, args.wait_timeout)
        print(f"\n=== bench.{name} (load average {common.load_average()}) ===", flush=True)
        extra = []
        if name == "reader" and "training" in records:
            rate = max(r["rows_per_second"] or 0 for r in records["training"]["results"])
            extra = ["--trainer-rows-per-second", str(rate)] if rate else []
        module = {"scoring": scoring, "training": training, "reader": reader}[name]
        code = module.main([*quick, *extra])
        if code:
            return code
        records[name] = common.latest_record(name)
    print(f"\n=== ratios (all benchmarks in {(time.perf_counter() - started) / 60:.1f} min) ===")
    print(summary(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
