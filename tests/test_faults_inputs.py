"""Bad inputs the row-level tests do not reach: empty and unreadable files, Parquet columns of the
wrong type, missing and damaged model folders, an output folder holding another dataset, and
damaged shards handed to the trainer. Each is refused with the file, the field and the fix."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from pipeline import score
from pipeline.job import JobMismatchError
from schemas import InputError, ModelFolderError, read_shard_metadata, tokenizer_fingerprint
from tests.fixtures_training import REPO, split_rows, write_split
from toy.pairs import make_pairs, write_jsonl
from train.api import train
from train.config import TrainConfig
from train.data import ProvenanceError, load_split, validate_rows


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    return write_jsonl(make_pairs(4, seed=2), tmp_path_factory.mktemp("faults-pairs") / "in.jsonl")


def _nothing_written(out: Path) -> bool:
    return not list(out.rglob("*.parquet")) and not (out / "manifest.json").exists()


@pytest.mark.parametrize("on_bad_row", ["error", "skip"])
@pytest.mark.parametrize("text", ["", "\n\n  \n"], ids=["empty", "blank-lines"])
def test_an_empty_input_file_is_refused_in_either_mode(tmp_path, tiny_model_dir, text, on_bad_row):
    path = tmp_path / "in.jsonl"
    path.write_text(text)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=rf"{re.escape(str(path))}: the file holds no rows\. Rem"):
        score(path, model=tiny_model_dir, out=out, on_bad_row=on_bad_row, progress=False)
    assert _nothing_written(out)


def _cli(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipeline", "score", *map(str, args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


CLI_CASES = {
    "empty-folder": "the folder holds no .jsonl or .parquet file. Point at a folder",
    "unknown-extension": "unknown file type '.csv'. Use JSON Lines (.jsonl, .ndjson) or",
    "missing-model": "no such folder (given as --model). Pass a folder written by",
    "model-without-weights": "no weight files (.safetensors, .bin, .pt, .pth, .gguf",
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_the_score_command_reports_bad_paths_without_a_traceback(
    tmp_path, tiny_model_dir, pairs_file, case
):
    inputs, model = pairs_file, tiny_model_dir
    if case == "empty-folder":
        inputs = tmp_path / "empty"
        inputs.mkdir()
    elif case == "unknown-extension":
        inputs = tmp_path / "pairs.csv"
        inputs.write_text("prompt,chosen,rejected\n")
    elif case == "missing-model":
        model = tmp_path / "no-model"
    else:
        model = shutil.copytree(tiny_model_dir, tmp_path / "model")
        (model / "model.safetensors").unlink()
    done = _cli(inputs, "--model", model, "--out", tmp_path / "out")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error: ")]
    assert CLI_CASES[case] in line
    assert str(inputs if case in ("empty-folder", "unknown-extension") else model) in line
    assert _nothing_written(tmp_path / "out")


PARQUET_COLUMNS = {
    "prompt": pa.array([1, 2], pa.int64()),
    "chosen": pa.array([["a"], ["b"]], pa.list_(pa.string())),
    "id": pa.array([0.5, 1.5], pa.float64()),
}


@pytest.mark.parametrize("on_bad_row", ["error", "skip"])
@pytest.mark.parametrize("column", sorted(PARQUET_COLUMNS))
def test_a_parquet_column_of_the_wrong_type_is_refused_as_a_whole(
    tmp_path, tiny_model_dir, column, on_bad_row
):
    """One error for the file, whatever `on_bad_row` says: skipping would reject every row."""
    good = {"id": ["a", "b"], "prompt": ["p", "q"], "chosen": ["x", "y"], "rejected": ["u", "v"]}
    table = pa.table({**good, column: PARQUET_COLUMNS[column]})
    path = tmp_path / "in.parquet"
    pq.write_table(table, path)
    out = tmp_path / "out"
    kind = pq.read_schema(path).field(column).type  # as the file stores it
    expected = f"{path}, column '{column}': the column's type is {kind}. Write `prompt`"
    with pytest.raises(InputError, match=re.escape(expected)):
        score(path, model=tiny_model_dir, out=out, on_bad_row=on_bad_row, progress=False)
    assert _nothing_written(out)


def test_a_truncated_parquet_input_is_refused(tmp_path, tiny_model_dir):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(make_pairs(20)), path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match=rf"{re.escape(str(path))}: not a readable Parquet file"):
        score(path, model=tiny_model_dir, out=tmp_path / "out", progress=False)


def _break(model: Path, kind: str) -> Path:
    """A copy of the tiny model, broken as `kind` says; returns the file the error must name."""
    if kind == "config-not-json":
        (model / "config.json").write_text('{"model_type": ')
        return model / "config.json"
    if kind == "weights-cut-short":
        weights = model / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
        return weights
    if kind == "index-lists-missing-shard":
        (model / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}})
        )
        return model
    if kind == "no-tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (model / name).unlink()
        return model
    for path in model.iterdir():
        path.unlink()
    return model


BROKEN_MODELS = {
    "config-not-json": "not a valid config: Expecting value",
    "weights-cut-short": "{size} bytes, its header describes {whole}",
    "index-lists-missing-shard": "weight files listed in model.safetensors.index.json are missing",
    "no-tokenizer": "no tokenizer file (tokenizer.json",
    "empty-folder": "no tokenizer file (tokenizer.json, tokenizer_config.json, tokenizer.model, "
    "vocab.json); no config.json; no weight files",
}


@pytest.mark.parametrize("kind", sorted(BROKEN_MODELS))
def test_a_broken_model_folder_is_refused_by_score_and_train_before_loading(
    tmp_path, tiny_model_dir, pairs_file, kind
):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    named = _break(model, kind)
    size = named.stat().st_size if named.is_file() else 0
    expected = f"{named}: " + BROKEN_MODELS[kind].format(size=size, whole=size + 1000)
    with pytest.raises(ModelFolderError, match=re.escape(expected)) as scored:
        score(pairs_file, model=model, out=tmp_path / "out", progress=False)
    assert "(given as --model)" in str(scored.value)
    assert not (tmp_path / "out").exists()

    config = TrainConfig(data=tmp_path, model=model, out=tmp_path / "run")
    with pytest.raises(ModelFolderError, match=re.escape(expected)):
        train(config)
    assert not (tmp_path / "run").exists()


def test_a_missing_model_folder_is_refused_by_train(tmp_path):
    config = TrainConfig(data=tmp_path, model=tmp_path / "nowhere", out=tmp_path / "run")
    with pytest.raises(ValueError, match=r"`model` got '.*nowhere': pass an existing folder"):
        train(config)


@pytest.mark.vllm
def test_an_output_folder_holding_another_dataset_is_refused(
    tmp_path, tiny_model_dir, pairs_file, scored_dataset
):
    """The same job with other options is `test_pipeline_jobs`' case; these are the others."""
    common = dict(model=tiny_model_dir, progress=False)

    foreign = tmp_path / "foreign"
    (foreign / "train").mkdir(parents=True)
    pq.write_table(pa.table({"x": [1]}), foreign / "train" / "data.parquet")
    with pytest.raises(JobMismatchError, match="holds Parquet files that no scoring job"):
        score(pairs_file, out=foreign, **common)

    bare = shutil.copytree(
        scored_dataset, tmp_path / "bare", ignore=shutil.ignore_patterns(".work")
    )
    with pytest.raises(JobMismatchError, match=r"holds a dataset without its bookkeeping.*--out"):
        score(pairs_file, out=bare, split="extra", **common)

    other = shutil.copytree(scored_dataset, tmp_path / "other")
    with pytest.raises(
        JobMismatchError, match=r"other/train was started by another job \(inputs: "
    ):
        score(pairs_file, out=other, **common)

    (tmp_path / "file").write_text("")
    with pytest.raises(JobMismatchError, match="is a file; pass a folder"):
        score(pairs_file, out=tmp_path / "file", **common)
    # Nothing of the existing datasets changed.
    assert sorted(p.name for p in (foreign / "train").iterdir()) == ["data.parquet"]
    assert not (bare / "extra").exists()


@pytest.fixture(scope="module")
def fingerprint(tiny_model_dir) -> str:
    return tokenizer_fingerprint(AutoTokenizer.from_pretrained(tiny_model_dir))


def _damage(row: dict, kind: str) -> str:
    """Damage one row as `kind` says; return the column the error must name."""
    logps = row["ref_chosen_logps"]
    if kind == "count-mismatch":
        logps.pop()
    else:
        logps[0] = {"nan": math.nan, "inf": -math.inf, "positive": 0.25}[kind]
    return "ref_chosen_logps"


@pytest.mark.vllm
@pytest.mark.parametrize("kind", ["nan", "inf", "positive", "count-mismatch"])
def test_the_trainer_refuses_a_shard_with_bad_values(tmp_path, scored_dataset, fingerprint, kind):
    """The trainer's row checks (each rank checks its shards before step 1) name the file, the
    row, its id and the column."""
    rows = split_rows(scored_dataset / "train")
    column = _damage(rows[7], kind)
    metadata = read_shard_metadata(sorted((scored_dataset / "train").glob("*.parquet"))[0])
    (path,) = write_split(rows, tmp_path / "train", metadata)
    split = load_split(tmp_path, "train", tokenizer_fingerprint=fingerprint)
    problem = validate_rows(split, rank=0, world_size=1)
    assert problem is not None
    assert problem.startswith(f"{path}, row 7, id {rows[7]['id']!r}, column {column!r}:")
    assert "Re-score the input with `python -m pipeline score`." in problem


def test_the_trainer_refuses_a_dataset_folder_without_usable_shards(tmp_path, fingerprint):
    with pytest.raises(ProvenanceError, match=r"no 'train' split folder \(found folders \[\]\)"):
        load_split(tmp_path, "train", tokenizer_fingerprint=fingerprint)
    (tmp_path / "train").mkdir()
    with pytest.raises(ProvenanceError, match="no .parquet shards; was scoring finished"):
        load_split(tmp_path, "train", tokenizer_fingerprint=fingerprint)
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "train" / "data.parquet")
    with pytest.raises(ValueError, match="data.parquet: no 'slpo.schema_version'.*not a scored"):
        load_split(tmp_path, "train", tokenizer_fingerprint=fingerprint)
