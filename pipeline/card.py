"""The dataset card (`README.md`) a person reads before using a scored dataset."""

from __future__ import annotations

from pathlib import Path

from pipeline.stats import format_table


def dataset_card(out: Path, manifest: dict) -> str:
    """Markdown: what scored the data, how many pairs, statistics, how to load it."""
    name = out.resolve().name
    return "\n".join(
        [
            *_provenance(name, manifest),
            *_splits(manifest["splits"]),
            *_columns_and_loading(name, next(iter(manifest["splits"]))),
        ]
    )


def _provenance(name: str, manifest: dict) -> list[str]:
    return [
        f"# {name}: reference log-probs of preference pairs",
        "",
        "Each row is a preference pair (a prompt, a chosen and a rejected completion) as token "
        "ids, with the reference model's log-prob of every completion token (EOS included) and "
        "their sums. A trainer reads these instead of running the reference model.",
        "",
        "## How it was scored",
        "",
        f"- Reference model: `{manifest['reference_model']}`",
        f"  (weights `{manifest['reference_fingerprint']}`)",
        f"- Tokenizer: `{manifest['tokenizer_fingerprint']}`; EOS ids "
        f"{manifest['eos_token_ids']}; chat template "
        f"{'recorded in the manifest' if manifest['chat_template'] else 'none'}",
        f"- Scorer: {manifest['scorer']} {manifest['scorer_version']}, dtype "
        f"{manifest['dtype']}, raw log-probs (no temperature, no logits processing)",
        f"- Pipeline: slpo {manifest['package_version']}, shard schema version "
        f"{manifest['schema_version']}",
        f"- Finalized: {manifest['created']}",
    ]


def _splits(splits: dict) -> list[str]:
    lines = [
        "",
        "## Splits",
        "",
        "| split | pairs | input rows | dropped | rejected | shards | prompt tokens | "
        "completion tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split, info in splits.items():
        tokens = info["tokens"]
        lines.append(
            f"| {split} | {info['rows']} | {info['input_rows']} | {_counts(info['dropped'])} | "
            f"{_counts(info['rejected'])} | {len(info['shards'])} | {tokens['prompt']} | "
            f"{tokens['chosen'] + tokens['rejected']} |"
        )
    for split, info in splits.items():
        stats = info["stats"]
        positive = stats["margin_positive"]
        lines += [
            "",
            f"### {split}: lengths (tokens) and reference log-probs (nats)",
            "",
            "`margin` is `ref_chosen_logp - ref_rejected_logp`; "
            + (
                f"{positive:.1%} of pairs have a positive margin."
                if positive is not None
                else "the split is empty."
            ),
            "",
            format_table(stats),
        ]
        command = info["workers"][0]["command"] if info["workers"] else []
        if command:
            lines += ["", f"Command (worker 0): `{' '.join(command)}`"]
    return lines


def _columns_and_loading(name: str, first: str) -> list[str]:
    return [
        "",
        "## Columns",
        "",
        "| column | type | meaning |",
        "|---|---|---|",
        "| id | string | the input row's id, or a hash of its content |",
        "| prompt_ids | list<int32> | prompt tokens (chat template applied, BOS included) |",
        "| chosen_ids, rejected_ids | list<int32> | completion tokens, EOS last |",
        "| ref_chosen_logps, ref_rejected_logps | list<float32> | log-prob of each completion "
        "token |",
        "| ref_chosen_logp, ref_rejected_logp | float64 | their sums |",
        "",
        "Provenance (model, tokenizer, dtype, scorer, source files) is also in each shard's "
        "Parquet key-value metadata under `slpo.*`; `manifest.json` lists every shard with its "
        "row count and sha256, and the counts of dropped and rejected rows by reason.",
        "",
        "## Loading",
        "",
        "```python",
        "import polars as pl",
        f'pairs = pl.scan_parquet("{name}/{first}/*.parquet")  # lazy',
        "",
        "import glob, pyarrow.dataset as ds",
        f'table = ds.dataset(sorted(glob.glob("{name}/{first}/*.parquet"))).to_table()',
        "",
        "from datasets import load_dataset",
        f'dataset = load_dataset("parquet", data_files={{"{first}": "{name}/{first}/*.parquet"}})',
        "```",
        "",
        "Check it with `python -m pipeline inspect " + name + "`.",
        "",
    ]


def _counts(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return "0"
    return f"{total} (" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")"
