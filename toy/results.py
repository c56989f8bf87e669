"""A demo run's results: the table, ``results.md``, ``results.json`` and the PNG plots.

Everything here is a pure function of the results dictionary the demo builds, so a run folder
can be re-rendered from its ``results.json``. Its shape:

    {"seed": 0, "commands": [...], "timings": {stage: seconds}, "sft": {...},
     "pairs": {"train": {...}, "eval": {...}}, "config": {...},
     "runs": {name: {"label": str, "metrics": {key: float},
                     "accuracy_curve": {"step": [...], "greedy_accuracy": [...]},
                     "train_curve": {"step": [...], "loss": [...], "chosen_shift": [...],
                                     "rejected_shift": [...]},
                     "eval_curve": {"step": [...], "chosen_shift": [...],
                                    "rejected_shift": [...]}}}}

The first run is the reference (the fine-tuned model before preference training); curves of
the others start from it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from schemas import write_text_atomic

COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("greedy_accuracy", "greedy acc", "pct"),
    ("sampled_accuracy", "sampled acc", "pct"),
    ("kl", "KL(π‖ref) nats", "float"),
    ("train/chosen_shift", "Δ chosen, train", "signed"),
    ("train/rejected_shift", "Δ rejected, train", "signed"),
    ("eval/chosen_shift", "Δ chosen, held-out", "signed"),
    ("eval/rejected_shift", "Δ rejected, held-out", "signed"),
)
"""Table columns: metric key, header, format. Shifts are mean ``log pi - log pi_ref`` (nats)."""

PLOTS = ("loss", "margins", "logp_shift", "accuracy")


def format_value(value: float | None, kind: str) -> str:
    """One cell: percentages with one decimal, nats with two or three."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "signed":
        return f"{value:+.2f}"
    return f"{value:.3f}"


def markdown_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A GitHub markdown table; the first column left-aligned, the others right-aligned."""
    align = [":---"] + ["---:"] * (len(header) - 1)
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(map(str, line)) + " |" for line in lines) + "\n"


def results_table(results: Mapping[str, Any]) -> str:
    """The run's table: one row per model, one column per ``COLUMNS`` entry."""
    rows = []
    for run in results["runs"].values():
        metrics = run["metrics"]
        rows.append([run["label"], *(format_value(metrics.get(k), f) for k, _, f in COLUMNS)])
    return markdown_table(rows, ["model", *(h for _, h, _ in COLUMNS)])


def results_markdown(results: Mapping[str, Any], plots: Sequence[str]) -> str:
    """The run's ``results.md``: table, data, timings, the commands, the plots."""
    sft, pairs = results["sft"], results["pairs"]
    lines = [
        f"# Preference training on the addition task (seed {results['seed']})",
        "",
        "Held-out prompts are judged by exact match; accuracy is greedy and sampled "
        "(temperature 1). KL from the reference is estimated on samples of each model "
        "(mean of `log pi - log pi_ref`). Δ columns: mean `log pi - log pi_ref` (nats) of the "
        "chosen and rejected completions of the training pairs and of held-out pairs.",
        "",
        results_table(results),
        f"Reference: the base model fine-tuned for {sft['steps']} steps (dev accuracy "
        f"{format_value(sft['dev_accuracy'], 'pct')}). Training pairs: "
        f"{_pairs_line(pairs['train'])}. Held-out pairs: {_pairs_line(pairs['eval'])}.",
        "",
        "## Stages",
        "",
        markdown_table(
            [[name, f"{seconds:.1f}"] for name, seconds in results["timings"].items()],
            ["stage", "seconds"],
        ),
        "## Commands",
        "",
        "```bash",
        *results["commands"],
        "```",
        "",
        "## Plots",
        "",
        *(f"![{name}]({name})\n" for name in plots),
    ]
    return "\n".join(lines)


def _pairs_line(stats: Mapping[str, Any]) -> str:
    return (
        f"{stats['pairs']} from {stats['prompts']} prompts x "
        f"{stats['samples'] // max(1, stats['prompts'])} samples "
        f"({stats['correct_vs_wrong']} right vs wrong, {stats['graded']} graded; "
        f"sample accuracy {format_value(stats['sample_accuracy'], 'pct')})"
    )


def write_results(results: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``results.json``, the PNG plots and ``results.md`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    plots = write_plots([results], out_dir)
    write_text_atomic(out_dir / "results.md", results_markdown(results, [p.name for p in plots]))
    return [out_dir / "results.json", out_dir / "results.md", *plots]


def write_plots(seeds: Sequence[Mapping[str, Any]], out_dir: Path, *, dpi: int = 90) -> list[Path]:
    """The four plots; with several seeds, each curve is the mean with a band of one std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(seeds[0]["runs"])
    trained = runs[1:]
    paths = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name in trained:
        _band(ax, seeds, name, "train_curve", "loss", smooth=True)
    _finish(ax, "training loss (smoothed; scales differ by loss)", "loss")
    save(fig, "loss")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for name in trained:
        _band(axes[0], seeds, name, "train_curve", "margin_shift", smooth=True)
        _band(axes[1], seeds, name, "eval_curve", "margin_shift")
    _finish(axes[0], "reward margin, training pairs (smoothed)", "Δ chosen - Δ rejected (nats)")
    _finish(axes[1], "reward margin, held-out pairs", None)
    save(fig, "margins")

    fig, axes = plt.subplots(2, 2, figsize=(9, 6.4), sharex=True)
    for name in trained:
        for col, side in enumerate(("chosen", "rejected")):
            _band(axes[0, col], seeds, name, "train_curve", f"{side}_shift", smooth=True)
            _band(axes[1, col], seeds, name, "eval_curve", f"{side}_shift")
    for col, side in enumerate(("chosen", "rejected")):
        _finish(axes[0, col], f"{side}, training pairs (smoothed)", "log π - log π_ref (nats)")
        _finish(axes[1, col], f"{side}, held-out pairs", "log π - log π_ref (nats)")
    save(fig, "logp_shift")

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name in trained:
        _band(ax, seeds, name, "accuracy_curve", "greedy_accuracy")
    reference = [s["runs"][runs[0]]["metrics"]["greedy_accuracy"] for s in seeds]
    ax.axhline(sum(reference) / len(reference), color="gray", ls=":", label=_label(seeds, runs[0]))
    _finish(ax, "greedy judged accuracy, held-out prompts", "accuracy")
    save(fig, "accuracy")
    return paths


def _label(seeds: Sequence[Mapping[str, Any]], name: str) -> str:
    return seeds[0]["runs"][name]["label"]


def _band(ax, seeds, name: str, curve: str, key: str, *, smooth: bool = False) -> None:
    """Mean over seeds of one curve, with a +-1 std band when there are several seeds."""
    import numpy as np

    series = [s["runs"][name].get(curve, {}) for s in seeds]
    series = [c for c in series if c.get(key)]
    if not series:
        return
    length = min(len(c[key]) for c in series)
    steps = np.asarray(series[0]["step"][:length], dtype=float)
    values = np.asarray([c[key][:length] for c in series], dtype=float)  # [seeds, T]
    if smooth:
        values = np.stack([_moving_average(v, max(1, length // 10)) for v in values])
    mean = values.mean(0)
    (line,) = ax.plot(steps, mean, label=_label(seeds, name), marker="" if smooth else ".")
    if len(values) > 1:
        std = values.std(0, ddof=1)
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)


def _moving_average(values, window: int):
    """Trailing mean over ``window`` points (shorter at the start)."""
    import numpy as np

    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(len(values)):
        lo = max(0, i + 1 - window)
        out[i] = (cumulative[i + 1] - cumulative[lo]) / (i + 1 - lo)
    return out


def _finish(ax, title: str, ylabel: str | None) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def read_training_curves(metrics_path: str | Path, *, beta: float) -> tuple[dict, dict]:
    """Training and evaluation curves from a trainer's ``metrics.jsonl``.

    Shifts are the reward metrics divided by ``beta``: ``s - r`` in nats. The evaluation
    curve starts at step 0 with zero shifts (the policy starts as the reference).
    """
    train = {k: [] for k in ("step", "loss", "chosen_shift", "rejected_shift", "margin_shift")}
    evaluation = {k: [0] if k == "step" else [0.0] for k in train if k != "loss"}
    for line in Path(metrics_path).read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if "loss" in row and "lr" in row:
            prefix, curve = "", train
            curve["loss"].append(row["loss"])
        elif "eval/loss" in row:
            prefix, curve = "eval/", evaluation
        else:
            continue
        curve["step"].append(row["step"])
        curve["chosen_shift"].append(row[f"{prefix}rewards/chosen"] / beta)
        curve["rejected_shift"].append(row[f"{prefix}rewards/rejected"] / beta)
        curve["margin_shift"].append(row[f"{prefix}rewards/margins"] / beta)
    return train, evaluation
