"""The results writer and the study's aggregation, on small synthetic results."""

from __future__ import annotations

import json
import math

import pytest

from toy.results import read_training_curves, results_table, write_results
from toy.study import aggregate, compare, write_study

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _metrics(accuracy: float, rejected_shift: float) -> dict[str, float]:
    return {
        "greedy_accuracy": accuracy,
        "sampled_accuracy": accuracy / 2,
        "kl": 0.25,
        "train/chosen_shift": 0.5,
        "train/rejected_shift": rejected_shift,
        "eval/chosen_shift": 0.125,
        "eval/rejected_shift": rejected_shift / 2,
    }


def _trained(label: str, accuracy: float, rejected_shift: float) -> dict:
    steps = [1, 2, 3, 4]
    return {
        "label": label,
        "metrics": _metrics(accuracy, rejected_shift),
        "accuracy_curve": {"step": [0, 2, 4], "greedy_accuracy": [0.3, 0.4, accuracy]},
        "train_curve": {
            "step": steps,
            "loss": [0.7, 0.6, 0.5, 0.4],
            "chosen_shift": [0.1, 0.2, 0.3, 0.5],
            "rejected_shift": [-0.1, -0.5, -1.0, rejected_shift],
            "margin_shift": [0.2, 0.7, 1.3, 0.5 - rejected_shift],
        },
        "eval_curve": {
            "step": [0, 2, 4],
            "chosen_shift": [0.0, 0.1, 0.125],
            "rejected_shift": [0.0, -0.2, rejected_shift / 2],
            "margin_shift": [0.0, 0.3, 0.125 - rejected_shift / 2],
        },
    }


def fake_results(seed: int = 0, dpo_rejected: float = -3.0) -> dict:
    reference = {"label": "SFT (reference)", "metrics": {**_metrics(0.3, 0.0), "kl": 0.0}}
    stats = {
        "prompts": 10,
        "samples": 80,
        "pairs": 6,
        "correct_vs_wrong": 5,
        "graded": 1,
        "sample_accuracy": 0.35,
    }
    return {
        "seed": seed,
        "commands": ["python -m toy demo --out runs/x --seed 0", "python -m train --loss dpo"],
        "timings": {"sampling": 12.5, "training": 100.0},
        "sft": {"steps": 250, "dev_accuracy": 0.42},
        "pairs": {"train": stats, "eval": stats},
        "runs": {
            "reference": reference,
            "slpo_a1": _trained("SLPO α=1", 0.5 + seed / 100, -1.0 - seed / 10),
            "dpo_b0.1": _trained("DPO β=0.1", 0.45, dpo_rejected - seed / 10),
        },
    }


def test_results_table_rows():
    table = results_table(fake_results()).splitlines()
    assert table[0].startswith("| model | greedy acc | sampled acc | KL(π‖ref) nats |")
    assert table[1] == "| :--- | " + " | ".join(["---:"] * 7) + " |"
    assert table[2] == "| SFT (reference) | 30.0% | 15.0% | 0.000 | +0.50 | +0.00 | +0.12 | +0.00 |"
    assert table[3] == "| SLPO α=1 | 50.0% | 25.0% | 0.250 | +0.50 | -1.00 | +0.12 | -0.50 |"
    assert table[4] == "| DPO β=0.1 | 45.0% | 22.5% | 0.250 | +0.50 | -3.00 | +0.12 | -1.50 |"
    assert len(table) == 5


def test_missing_metric_is_na():
    results = fake_results()
    del results["runs"]["dpo_b0.1"]["metrics"]["kl"]
    results["runs"]["slpo_a1"]["metrics"]["kl"] = math.nan
    rows = results_table(results).splitlines()
    assert rows[3].split(" | ")[3] == "n/a" and rows[4].split(" | ")[3] == "n/a"


def test_write_results(tmp_path):
    results = fake_results()
    paths = write_results(results, tmp_path)
    names = sorted(p.name for p in paths)
    expected_plots = ["accuracy.png", "logp_shift.png", "loss.png", "margins.png"]
    assert names == sorted(["results.json", "results.md", *expected_plots])
    for name in expected_plots:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
    assert json.loads((tmp_path / "results.json").read_text()) == results
    markdown = (tmp_path / "results.md").read_text()
    assert "(seed 0)" in markdown
    assert results_table(results) in markdown
    assert "python -m train --loss dpo" in markdown
    assert "fine-tuned for 250 steps (dev accuracy 42.0%)" in markdown
    assert "6 from 10 prompts x 8 samples (5 right vs wrong, 1 graded" in markdown
    for name in expected_plots:
        assert f"]({name})" in markdown


def test_read_training_curves(tmp_path):
    rows = [
        {"step": 0, "ref_check/max_abs_diff": 1e-6},
        {"step": 1, "loss": 0.7, "lr": 1e-4, "rewards/chosen": 0.01, "rewards/rejected": -0.02,
         "rewards/margins": 0.03},
        {"step": 2, "loss": 0.6, "lr": 1e-4, "rewards/chosen": 0.02, "rewards/rejected": -0.04,
         "rewards/margins": 0.06},
        {"step": 2, "eval/loss": 0.65, "eval/rewards/chosen": 0.015,
         "eval/rewards/rejected": -0.025, "eval/rewards/margins": 0.04},
    ]  # fmt: skip
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, evaluation = read_training_curves(path, beta=0.1)
    assert train["step"] == [1, 2] and train["loss"] == [0.7, 0.6]
    assert train["chosen_shift"] == pytest.approx([0.1, 0.2])
    assert train["rejected_shift"] == pytest.approx([-0.2, -0.4])
    assert train["margin_shift"] == pytest.approx([0.3, 0.6])
    assert evaluation["step"] == [0, 2]
    assert evaluation["chosen_shift"] == pytest.approx([0.0, 0.15])
    assert evaluation["rejected_shift"] == pytest.approx([0.0, -0.25])


def test_compare_calls_a_difference_only_beyond_the_spread():
    a = {"mean": 1.0, "std": 0.2}
    assert compare(a, {"mean": 0.5, "std": 0.2}) == {"difference": 0.5, "exceeds_spread": True}
    assert compare(a, {"mean": 0.7, "std": 0.2})["exceeds_spread"] is False


def test_aggregate_and_write_study(tmp_path):
    seeds = [fake_results(seed) for seed in (0, 1, 2)]
    study = aggregate(seeds)
    assert study["seeds"] == [0, 1, 2]
    accuracy = study["runs"]["slpo_a1"]["metrics"]["greedy_accuracy"]
    assert accuracy["mean"] == pytest.approx(0.51)
    assert accuracy["std"] == pytest.approx(0.01)
    assert accuracy["values"] == pytest.approx([0.5, 0.51, 0.52])
    vs_dpo = study["comparisons"]["slpo_a1"]
    # Rejected shift: SLPO -1.1 ± 0.1 against DPO -3.1 ± 0.1: beyond the spread.
    assert vs_dpo["train/rejected_shift"]["difference"] == pytest.approx(2.0)
    assert vs_dpo["train/rejected_shift"]["exceeds_spread"] is True
    # KL: the same for both: no difference.
    assert vs_dpo["kl"] == {"difference": 0.0, "exceeds_spread": False}
    assert "reference" not in study["comparisons"]
    paired = study["paired"]["slpo_a1 - dpo_b0.1"]["metrics"]["train/rejected_shift"]
    assert paired["values"] == pytest.approx([2.0, 2.0, 2.0]) and paired["agree"] == 3
    assert set(study["paired"]) == {
        *(f"{r} - reference" for r in ("slpo_a1", "dpo_b0.1")),
        "slpo_a1 - dpo_b0.1",
    }

    written = write_study(seeds, tmp_path)
    markdown = (tmp_path / "study.md").read_text()
    assert "| SLPO α=1 | 51.0 ± 1.0% |" in markdown
    assert "| SLPO α=1 − DPO β=0.1 | **+6.0 pp** | **+3.0 pp** | +0.00 |" in markdown
    assert written["table"] in markdown and written["paired_table"] in markdown
    assert "| SLPO α=1 − DPO β=0.1 | **+6.0 ± 1.0 pp (3/3)** |" in markdown
    assert json.loads((tmp_path / "study.json").read_text())["seeds"] == [0, 1, 2]
    for name in ("accuracy", "logp_shift", "loss", "margins"):
        assert (tmp_path / f"{name}.png").read_bytes().startswith(PNG_SIGNATURE)


def test_aggregate_refuses_mismatched_runs():
    other = fake_results(1)
    del other["runs"]["dpo_b0.1"]
    with pytest.raises(ValueError, match="seed 1 ran"):
        aggregate([fake_results(0), other])
