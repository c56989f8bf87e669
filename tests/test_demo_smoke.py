"""The whole demo chain at small sizes, through its command line: a real fine-tune, vLLM
sampling and scoring, four DeepSpeed training runs, evaluation, the table and the plots."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from schemas import validate_files
from tests.fixtures_training import REPO, launch_env, step_rows
from toy.demo import RUNS
from toy.results import PLOTS

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.deepspeed]

STEPS = 3
SMALL = {
    "--n-pref": 64,
    "--n-eval": 24,
    "--n-dev": 24,
    "--samples": 4,
    "--eval-samples": 2,
    "--train-steps": STEPS,
    "--micro-batch-size": 4,
    "--warmup-steps": 1,
    "--curve-points": 1,
    "--sft-max-steps": 120,
    "--sft-batch-size": 64,
    "--sft-target-accuracy": 0.05,
}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    argv = [sys.executable, "-m", "toy", "demo", "--out", str(out), "--seed", "3"]
    argv += [str(x) for item in SMALL.items() for x in item]
    done = subprocess.run(
        argv, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    return out, done.stdout


def test_every_stage_reports_and_the_table_is_printed(demo_run):
    out, stdout = demo_run
    for stage in range(1, 7):
        assert f"[{stage}/6]" in stdout
    printed = [line for line in stdout.split("Results (seed 3", 1)[1].splitlines() if "|" in line]
    for label in ["SFT (reference)", *(run.label for run in RUNS)]:
        assert any(label in line for line in printed)
    # The printed table is the one in results.md.
    assert "\n".join(printed) in (out / "results.md").read_text()


def test_pairs_are_scored_into_a_valid_dataset(demo_run):
    out, _ = demo_run
    for split in ("train", "eval"):
        shards = sorted((out / "scored" / split).glob("part-*.parquet"))
        assert shards, f"no shards for split {split}"
        validate_files(shards)
    manifest = json.loads((out / "scored" / "manifest.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert manifest["splits"]["train"]["rows"] == results["pairs"]["train"]["pairs"] > 0


def test_every_run_trains_the_same_steps_and_is_evaluated(demo_run):
    out, _ = demo_run
    results = json.loads((out / "results.json").read_text())
    assert list(results["runs"]) == ["reference", *(run.name for run in RUNS)]
    assert results["runs"]["reference"]["metrics"]["kl"] == 0.0
    for run in RUNS:
        assert [r["step"] for r in step_rows(out / "train" / run.name)] == list(range(1, STEPS + 1))
        metrics = results["runs"][run.name]["metrics"]
        assert 0.0 <= metrics["greedy_accuracy"] <= 1.0
        assert metrics["train/chosen_shift"] != 0.0  # the policy moved off the reference
        assert results["runs"][run.name]["accuracy_curve"]["step"][-1] == STEPS
        assert (out / "train" / run.name / "final" / "model.safetensors").is_file()


def test_results_md_and_plots_are_written(demo_run):
    out, _ = demo_run
    text = (out / "results.md").read_text()
    assert "python -m toy demo" in text and "python -m train" in text
    for name in PLOTS:
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
        assert f"{name}.png" in text
