"""`inspect`: what a scored dataset (or shard) holds, whether it validates, and its statistics."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pipeline.stats import format_table, shard_stats
from schemas import ContractError, read_shard_metadata, validate_files


def inspect(path: str | Path, *, validate: bool = True) -> dict:
    """Summarise a dataset folder, a split folder or one shard.

    Returns provenance (the first shard's metadata), per split the shard and row counts, dropped
    and rejected counts (from the manifest, when finalized), the validation result (`"ok"` or
    the first error) and `shard_stats`. Statistics come from lazy polars scans.
    """
    path = Path(path)
    manifest = None
    if path.is_file():
        splits = {path.parent.name: [path]}
    elif (path / "manifest.json").is_file():
        manifest = json.loads((path / "manifest.json").read_text())
        splits = {
            name: [_listed_path(path, s["path"]) for s in info["shards"]]
            for name, info in manifest["splits"].items()
        }
    elif any(path.glob("part-*.parquet")):
        splits = {path.name: sorted(path.glob("part-*.parquet"))}
    else:
        splits = {}
        for shard in sorted(path.glob("*/part-*.parquet")):
            splits.setdefault(shard.parent.name, []).append(shard)
    if not any(splits.values()):
        raise FileNotFoundError(f"{path}: no scored shards (part-*.parquet) found")

    provenance = _provenance([f for files in splits.values() for f in files])
    result = {
        "path": str(path),
        "finalized": manifest is not None,
        "created": manifest["created"] if manifest else None,
        "provenance": provenance,
        "splits": {},
    }
    for name, files in splits.items():
        info = manifest["splits"][name] if manifest else {}
        validation = _validate(files, info) if validate else "not checked"
        # A shard that does not validate may not even read: no statistics then.
        usable = validation in ("ok", "not checked")
        stats = shard_stats(files) if usable else {"rows": None, "columns": {}}
        result["splits"][name] = {
            "shards": len(files),
            "rows": stats["rows"],
            "dropped": info.get("dropped"),
            "rejected": info.get("rejected"),
            "validation": validation,
            "stats": stats,
        }
    return result


def _listed_path(root: Path, listed: str) -> Path:
    """A shard the manifest lists: its path must be relative and stay inside the dataset."""
    target = root / listed
    if Path(listed).is_absolute() or not target.resolve().is_relative_to(root.resolve()):
        raise ContractError(
            root / "manifest.json",
            f"shard path {listed!r} leads outside the dataset folder",
            fix="A manifest lists shards relative to its folder; run `python -m pipeline "
            "finalize` on the dataset to write it again.",
        )
    return target


def _provenance(files: list[Path]) -> dict | None:
    """The metadata of the first shard whose footer reads (None if none does)."""
    for path in files:
        try:
            meta = dataclasses.asdict(read_shard_metadata(path))
        except ContractError:
            continue
        meta["source_files"] = list(meta["source_files"])
        return meta
    return None


def _validate(files: list[Path], manifest_split: dict) -> str:
    try:
        reports = validate_files(files)
    except ContractError as e:
        return str(e)
    rows = sum(r.num_rows for r in reports)
    if manifest_split and rows != manifest_split["rows"]:
        return f"the shards hold {rows} rows, the manifest says {manifest_split['rows']}"
    return "ok"


def format_report(report: dict) -> str:
    """`inspect`'s result as text for a terminal."""
    prov = report["provenance"]
    lines = [
        f"dataset: {report['path']}"
        + (f" (finalized {report['created']})" if report["finalized"] else " (not finalized)")
    ]
    if prov is None:
        lines.append("provenance: no shard has a readable footer")
    else:
        lines += _provenance_lines(prov)
    for name, split in report["splits"].items():
        rows = "?" if split["rows"] is None else split["rows"]
        counts = f"{rows} pairs in {split['shards']} shards"
        if split["dropped"] is not None:
            counts += f"; dropped {split['dropped'] or 0}; rejected {split['rejected'] or 0}"
        positive = split["stats"].get("margin_positive")
        lines += [
            "",
            f"split {name}: {counts}",
            f"validation: {split['validation']}",
        ]
        if positive is not None:
            lines.append(f"margin > 0 for {positive:.1%} of pairs")
            lines += ["", format_table(split["stats"])]
    return "\n".join(lines)


def _provenance_lines(prov: dict) -> list[str]:
    return [
        f"reference model: {prov['reference_model']} ({prov['reference_fingerprint']})",
        f"tokenizer: {prov['tokenizer_fingerprint']}  eos ids: {list(prov['eos_token_ids'])}",
        f"scored with: {prov['scorer']} {prov['scorer_version']} in {prov['dtype']}; "
        f"schema {prov['schema_version']}, slpo {prov['package_version']}; "
        f"max_length {prov['max_length']}, overlong {prov['overlong']}",
    ]
