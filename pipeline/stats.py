"""Length and log-prob statistics of scored shards, by lazy polars scans (no full load)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

PERCENTILES = (0, 5, 25, 50, 75, 95, 100)

COLUMNS = {
    "prompt_tokens": pl.col("prompt_ids").list.len(),
    "chosen_tokens": pl.col("chosen_ids").list.len(),
    "rejected_tokens": pl.col("rejected_ids").list.len(),
    "ref_chosen_logp": pl.col("ref_chosen_logp"),
    "ref_rejected_logp": pl.col("ref_rejected_logp"),
    "ref_chosen_logp_per_token": pl.col("ref_chosen_logp") / pl.col("chosen_ids").list.len(),
    "ref_rejected_logp_per_token": pl.col("ref_rejected_logp") / pl.col("rejected_ids").list.len(),
    "margin": pl.col("ref_chosen_logp") - pl.col("ref_rejected_logp"),
}
"""Per-pair quantities summarised; `margin` is `ref_chosen_logp - ref_rejected_logp`."""


def shard_stats(files: Sequence[str | Path]) -> dict:
    """Row count, the `PERCENTILES` and mean of each of `COLUMNS`, and the share of pairs whose
    margin is positive (the reference already prefers the chosen completion)."""
    if not files:
        return {"rows": 0, "columns": {}, "margin_positive": None}
    scan = pl.scan_parquet([str(f) for f in files]).select(
        **{name: expr.cast(pl.Float64) for name, expr in COLUMNS.items()}
    )
    aggregates = [pl.len().alias("rows"), (pl.col("margin") > 0).mean().alias("margin_positive")]
    for name in COLUMNS:
        aggregates.append(pl.col(name).mean().alias(f"{name}|mean"))
        aggregates += [
            pl.col(name).quantile(q / 100, interpolation="linear").alias(f"{name}|p{q}")
            for q in PERCENTILES
        ]
    row = scan.select(aggregates).collect(engine="streaming").row(0, named=True)
    columns: dict[str, dict] = {name: {} for name in COLUMNS}
    for key, value in row.items():
        if "|" in key:
            name, stat = key.split("|")
            columns[name][stat] = value
    return {"rows": row["rows"], "margin_positive": row["margin_positive"], "columns": columns}


def format_table(stats: dict, digits: int = 3) -> str:
    """A Markdown table of `shard_stats` output: one line per quantity."""
    header = ["quantity", "mean", *(f"p{q}" for q in PERCENTILES)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, values in stats["columns"].items():
        cells = [_fmt(values.get(k), digits) for k in header[1:]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.{digits}f}"
