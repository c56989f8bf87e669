"""Training killed with SIGKILL mid-checkpoint and mid-step (2 ranks under torchrun), resumed
with `--resume auto`: it continues from the newest complete checkpoint, never a half-written
one, and every logged number and the final weights equal the uninterrupted run's."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.fixtures_faults import run_killed
from tests.fixtures_training import read_summary, step_rows, torchrun, train_args
from train.checkpoint import STATE_FILE, checkpoint_dir, resolve_resume
from train.distributed import free_port

pytestmark = pytest.mark.deepspeed

STEPS = 6
OPTIONS = [
    "--micro-batch-size", "2", "--grad-accum", "2", "--lr", "3e-5", "--max-steps", str(STEPS),
    "--save-every", "2", "--zero-stage", "2",
]  # fmt: skip
TIMING_KEYS = {"tokens_per_second", "samples_per_second", "elapsed"}


def _torchrun_command(args: list[str]) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    return [*command, "--master_port", str(free_port()), "-m", "train", *args]


def _logged(out) -> list[dict]:
    """Every step row without its timings."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in step_rows(out)]


def test_killed_mid_checkpoint_then_mid_step_resumes_to_the_uninterrupted_losses(
    scored_dataset, tiny_model_dir, tmp_path
):
    reference = tmp_path / "reference"
    torchrun(2, train_args(scored_dataset, tiny_model_dir, reference, *OPTIONS), port=free_port())
    out = tmp_path / "run"
    args = train_args(scored_dataset, tiny_model_dir, out, *OPTIONS)

    # Mid-checkpoint: both ranks have written step 4's files; the checkpoint is not marked.
    log = tmp_path / "checkpoint.log"
    assert run_killed(_torchrun_command(args), log=log, fault="checkpoint-files@2") != 0
    assert "Signal 9 (SIGKILL)" in log.read_text(), log.read_text()[-4000:]
    half = checkpoint_dir(out, 4)
    assert sorted(p.name for p in half.iterdir()) == [
        "mp_rank_00_model_states.pt",
        "rng-rank-00000.pt",
        "rng-rank-00001.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    assert (checkpoint_dir(out, 2) / STATE_FILE).is_file()
    assert resolve_resume("auto", out) == checkpoint_dir(out, 2)
    with pytest.raises(ValueError, match=f"not a complete checkpoint \\(no {STATE_FILE}\\)"):
        resolve_resume(str(half), out)

    # Mid-step: resumed from step 2, killed in the first micro-batch of step 5.
    log = tmp_path / "step.log"
    resumed = _torchrun_command([*args, "--resume", "auto"])
    assert run_killed(resumed, log=log, fault="train-micro-batch@5") != 0
    text = log.read_text()
    assert "Signal 9 (SIGKILL)" in text, text[-4000:]
    assert f"ignoring incomplete checkpoint {half}" in text
    assert f"resumed from {checkpoint_dir(out, 2)} at step 2" in text
    assert [r["step"] for r in step_rows(out)] == [1, 2, 3, 4]
    assert not (out / "final").exists()

    torchrun(2, [*args, "--resume", "auto"], port=free_port())
    summary = read_summary(out)
    assert (summary["start_step"], summary["end_step"]) == (4, STEPS)
    assert _logged(out) == _logged(reference)
    final = load_file(out / "final" / "model.safetensors")
    expected = load_file(reference / "final" / "model.safetensors")
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[name], expected[name]) for name in expected)
