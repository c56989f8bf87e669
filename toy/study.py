"""The demo repeated over seeds: mean and spread of every metric, and which differences hold.

    python -m toy study --out runs/study [--seeds 0 1 2] [demo options]

Each seed is a whole demo run in its own process (``OUT/seed-N/``): its own base weights,
fine-tuning, samples, pairs and training shuffles, so the spread covers all of them. A
difference between two runs is called a difference only when it exceeds the spread: when the
intervals mean ± std (over seeds) of the two do not overlap. Runs of one seed share their
reference, pairs and data order, so the study also compares them seed by seed (paired): the
mean ± std of the per-seed differences, and in how many seeds the difference has its sign.
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from schemas import write_text_atomic
from toy.results import COLUMNS, markdown_table, write_plots

logger = logging.getLogger(__name__)

BASELINE = "dpo_b0.1"
"""The run every other trained run is compared with."""


def run_seeds(
    out: Path,
    seeds: Sequence[int],
    demo_args: Sequence[str],
    *,
    reuse: bool,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    """One ``python -m toy demo`` per seed into ``out/seed-N``; their results, in seed order.

    With ``reuse``, a seed folder that already holds ``results.json`` is read, not re-run.
    """
    found = []
    for i, seed in enumerate(seeds, 1):
        run_dir = Path(out) / f"seed-{seed}"
        done = run_dir / "results.json"
        if reuse and done.is_file():
            progress(f"(seed {seed}, {i}/{len(seeds)}) reusing {done}")
        else:
            progress(f"(seed {seed}, {i}/{len(seeds)}) python -m toy demo --out {run_dir}")
            argv = [sys.executable, "-m", "toy", "demo", "--out", str(run_dir), "--seed", str(seed)]
            code = subprocess.run([*argv, *demo_args]).returncode
            if code != 0:
                raise RuntimeError(f"the demo of seed {seed} failed (exit {code}); see above")
        found.append(json.loads(done.read_text()))
    return found


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Mean, std (n - 1; 0 for one value), min, max and the values themselves."""
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def aggregate(seeds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per run and metric, the spread over seeds; and each trained run against ``BASELINE``."""
    names = list(seeds[0]["runs"])
    for result in seeds[1:]:
        if list(result["runs"]) != names:
            raise ValueError(f"seed {result['seed']} ran {list(result['runs'])}, not {names}")
    keys = sorted({k for s in seeds for run in s["runs"].values() for k in run["metrics"]})
    runs = {}
    for name in names:
        metrics = {}
        for key in keys:
            values = [s["runs"][name]["metrics"].get(key) for s in seeds]
            if all(v is not None for v in values):
                metrics[key] = summarize(values)
        runs[name] = {"label": seeds[0]["runs"][name]["label"], "metrics": metrics}

    comparisons = {}
    if BASELINE in runs:
        base = runs[BASELINE]["metrics"]
        for name in names[1:]:
            if name == BASELINE:
                continue
            comparisons[name] = {
                key: compare(runs[name]["metrics"][key], base[key])
                for key, _, _ in COLUMNS
                if key in runs[name]["metrics"] and key in base
            }
    return {
        "seeds": [s["seed"] for s in seeds],
        "baseline": BASELINE,
        "runs": runs,
        "comparisons": comparisons,
        "paired": paired_differences(seeds, names),
    }


def paired_differences(seeds: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict:
    """Seed by seed, each trained run minus the reference and minus ``BASELINE``.

    ``{"<run> - <other>": {key: summarize(per-seed differences) + {"agree": n}}}``, where
    ``agree`` counts the seeds whose difference has the sign of the mean.
    """
    reference, trained = names[0], names[1:]
    pairs = [(name, reference) for name in trained]
    if BASELINE in trained:
        pairs += [(name, BASELINE) for name in trained if name != BASELINE]
    paired = {}
    for name, other in pairs:
        by_key = {}
        for key, _, _ in COLUMNS:
            values = [s["runs"][r]["metrics"].get(key) for s in seeds for r in (name, other)]
            if any(v is None for v in values):
                continue
            summary = summarize([a - b for a, b in zip(values[::2], values[1::2], strict=True)])
            sign = 1 if summary["mean"] >= 0 else -1
            summary["agree"] = sum(1 for v in summary["values"] if v * sign > 0)
            by_key[key] = summary
        paired[f"{name} - {other}"] = {"run": name, "other": other, "metrics": by_key}
    return paired


def compare(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, Any]:
    """``a - b`` in means; ``exceeds_spread`` when mean ± std of the two do not overlap."""
    difference = a["mean"] - b["mean"]
    return {"difference": difference, "exceeds_spread": abs(difference) > a["std"] + b["std"]}


def _cell(summary: Mapping[str, float], kind: str) -> str:
    if kind == "pct":
        return f"{100 * summary['mean']:.1f} ± {100 * summary['std']:.1f}%"
    if kind == "signed":
        return f"{summary['mean']:+.2f} ± {summary['std']:.2f}"
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}"


def study_table(study: Mapping[str, Any]) -> str:
    """Mean ± std over seeds: one row per model, the demo table's columns."""
    rows = []
    for run in study["runs"].values():
        metrics = run["metrics"]
        rows.append(
            [
                run["label"],
                *(_cell(metrics[k], f) if k in metrics else "n/a" for k, _, f in COLUMNS),
            ]
        )
    return markdown_table(rows, ["model", *(h for _, h, _ in COLUMNS)])


def comparison_table(study: Mapping[str, Any]) -> str:
    """Each trained run minus the baseline; bold where the difference exceeds the spread."""
    rows = []
    for name, by_key in study["comparisons"].items():
        cells = []
        for key, _, kind in COLUMNS:
            if key not in by_key:
                cells.append("n/a")
                continue
            difference = by_key[key]["difference"]
            text = f"{100 * difference:+.1f} pp" if kind == "pct" else f"{difference:+.2f}"
            cells.append(f"**{text}**" if by_key[key]["exceeds_spread"] else text)
        rows.append(
            [f"{study['runs'][name]['label']} − {study['runs'][BASELINE]['label']}", *cells]
        )
    return markdown_table(rows, ["difference", *(h for _, h, _ in COLUMNS)])


def paired_table(study: Mapping[str, Any]) -> str:
    """Per-seed differences, mean ± std (agreeing seeds / seeds); bold where every seed agrees."""
    n = len(study["seeds"])
    rows = []
    for entry in study["paired"].values():
        cells = []
        for key, _, kind in COLUMNS:
            summary = entry["metrics"].get(key)
            if summary is None:
                cells.append("n/a")
                continue
            scale, unit = (100, " pp") if kind == "pct" else (1, "")
            digits = 1 if kind == "pct" else (3 if kind == "float" else 2)
            text = (
                f"{scale * summary['mean']:+.{digits}f} ± {scale * summary['std']:.{digits}f}"
                f"{unit} ({summary['agree']}/{n})"
            )
            cells.append(f"**{text}**" if summary["agree"] == n and n > 1 else text)
        labels = [study["runs"][entry[k]]["label"] for k in ("run", "other")]
        rows.append([" − ".join(labels), *cells])
    return markdown_table(rows, ["paired difference", *(h for _, h, _ in COLUMNS)])


def write_study(seeds: Sequence[Mapping[str, Any]], out: Path) -> dict[str, Any]:
    """``study.json``, ``study.md`` and the plots (mean ± std bands) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    study = aggregate(seeds)
    write_text_atomic(out / "study.json", json.dumps(study, indent=2) + "\n")
    plots = write_plots(seeds, out)
    seconds = [sum(s["timings"].values()) for s in seeds]
    lines = [
        f"# Study over seeds {', '.join(map(str, study['seeds']))}",
        "",
        "Mean ± std over seeds (std with n - 1).",
        "",
        study_table(study),
        f"Differences from {study['runs'][BASELINE]['label']} (means over seeds; accuracies in "
        "percentage points); **bold**: the difference exceeds the spread (the mean ± std "
        "intervals do not overlap).",
        "",
        comparison_table(study) if study["comparisons"] else "(no baseline run)\n",
        "Paired differences: per seed, a run minus the reference or minus "
        f"{study['runs'][BASELINE]['label'] if BASELINE in study['runs'] else 'the baseline'}"
        " (both trained from that seed's reference on that seed's pairs), then mean ± std over "
        "seeds, and (k/n): the seeds whose difference has the mean's sign; **bold**: every seed.",
        "",
        paired_table(study),
        f"Seconds per seed: {', '.join(f'{s:.0f}' for s in seconds)}.",
        "",
        *(f"![{p.stem}]({p.name})\n" for p in plots),
    ]
    write_text_atomic(out / "study.md", "\n".join(lines))
    study["table"] = study_table(study)
    study["comparison_table"] = comparison_table(study) if study["comparisons"] else ""
    study["paired_table"] = paired_table(study)
    return study
