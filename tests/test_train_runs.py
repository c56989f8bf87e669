"""Real training runs: torchrun, the deepspeed launcher and two simulated nodes, 2 gloo ranks,
ZeRO-2 and ZeRO-3, on shards the scoring pipeline wrote from the tiny model."""

from __future__ import annotations

import json
import math
import subprocess
import textwrap

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.fixtures_training import (
    LAUNCH_TIMEOUT,
    PYTHON,
    REPO,
    launch_env,
    read_metrics,
    read_summary,
    run_command,
    split_rows,
    step_rows,
    torchrun,
    train_args,
)
from train.distributed import free_port

pytestmark = pytest.mark.deepspeed

STEPS = 12
COMMON = [
    "--micro-batch-size", "2", "--grad-accum", "2", "--lr", "3e-5", "--max-steps", str(STEPS),
    "--eval-split", "eval", "--save-every", "4", "--loss", "slpo", "--alpha", "1",
]  # fmt: skip
STEP_KEYS = {
    "step", "epoch", "loss", "lr", "grad_norm", "rewards/chosen", "rewards/rejected",
    "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected",
    "slpo/policy_chosen_share", "slpo/target_chosen_share", "slpo/pair_log_mass_ratio",
    "tokens_per_second", "samples_per_second", "elapsed",
}  # fmt: skip


@pytest.fixture(scope="module")
def zero2_run(scored_dataset, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("zero2") / "run"
    args = train_args(scored_dataset, tiny_model_dir, out, *COMMON, "--zero-stage", "2")
    torchrun(2, args, port=free_port())
    return out


@pytest.fixture(scope="module")
def zero3_run(scored_dataset, tiny_model_dir, tmp_path_factory):
    """ZeRO-3 from a DeepSpeed JSON whose "auto" values the flags fill."""
    root = tmp_path_factory.mktemp("zero3")
    ds_config = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        # Threshold 0: every tensor of the tiny model is partitioned, none kept whole.
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    }
    (root / "ds.json").write_text(json.dumps(ds_config))
    out = root / "run"
    args = train_args(scored_dataset, tiny_model_dir, out, *COMMON, "--deepspeed", root / "ds.json")
    torchrun(2, args, port=free_port())
    return out


def _completion_logps(model_dir, rows) -> tuple[list[float], list[float]]:
    """Summed completion log-probs of each row's chosen and rejected, float32 forward."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    result = ([], [])
    with torch.no_grad():
        for row in rows:
            for k, name in enumerate(("chosen", "rejected")):
                ids = row["prompt_ids"] + row[f"{name}_ids"]
                logps = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
                p = len(row["prompt_ids"])
                picked = [logps[p - 1 + j, t] for j, t in enumerate(row[f"{name}_ids"])]
                result[k].append(float(torch.stack(picked).double().sum()))
    return result


def test_zero2_run_logs_every_step_and_checkpoints(zero2_run):
    rows = read_metrics(zero2_run)
    ref_check = rows[0]
    assert ref_check["step"] == 0 and ref_check["ref_check/passed"] is True
    assert ref_check["ref_check/max_abs_diff"] <= ref_check["ref_check/atol"]
    steps = step_rows(zero2_run)
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    assert all(set(r) == STEP_KEYS for r in steps)
    assert all(math.isfinite(r["loss"]) and r["tokens_per_second"] > 0 for r in steps)
    # 48 pairs, 2 x 2 x 2 per step: 6 steps per epoch.
    assert steps[5]["epoch"] == 1.0 and steps[-1]["epoch"] == 2.0
    (evaluation,) = [r for r in rows if "eval/loss" in r]
    assert evaluation["step"] == STEPS and math.isfinite(evaluation["eval/rewards/margins"])
    assert list(zero2_run.glob("tensorboard/events.out.tfevents.*"))

    summary = read_summary(zero2_run)
    assert summary["world_size"] == 2 and summary["zero_stage"] == 2
    assert [r["steps"] for r in summary["ranks"]] == [STEPS, STEPS]
    assert [r["models_loaded"] for r in summary["ranks"]] == [1, 1]
    saved = sorted(p.name for p in (zero2_run / "checkpoints").glob("step-*"))
    assert saved == ["step-00000004", "step-00000008", "step-00000012"]
    state = json.loads((zero2_run / "checkpoints/step-00000008/trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (8, 1, 2)


def test_zero3_gives_the_losses_of_zero2(zero2_run, zero3_run):
    """Same data and weights: step 1 is bit-identical; later steps differ only by the order
    of float32 gradient reductions (measured: under 2e-6 absolute)."""
    a, b = step_rows(zero2_run), step_rows(zero3_run)
    assert read_summary(zero3_run)["zero_stage"] == 3
    assert a[0]["loss"] == b[0]["loss"]
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5, abs=1e-5), x["step"]
    eval_a, eval_b = (
        next(r for r in read_metrics(o) if "eval/loss" in r) for o in (zero2_run, zero3_run)
    )
    assert eval_b["eval/loss"] == pytest.approx(eval_a["eval/loss"], rel=1e-5)


def test_slpo_raises_chosen_and_lowers_rejected_on_final(zero2_run, zero3_run, scored_dataset):
    rows = split_rows(scored_dataset / "train")
    chosen, rejected = _completion_logps(zero2_run / "final", rows)
    chosen_shift = [s - r["ref_chosen_logp"] for s, r in zip(chosen, rows, strict=True)]
    rejected_shift = [s - r["ref_rejected_logp"] for s, r in zip(rejected, rows, strict=True)]
    assert sum(chosen_shift) / len(rows) > 0.05
    assert sum(rejected_shift) / len(rows) < -0.05
    # The ZeRO-3 export, gathered from partitions, loads and holds the same policy.
    chosen3, rejected3 = _completion_logps(zero3_run / "final", rows[:8])
    assert chosen3 == pytest.approx(chosen[:8], abs=1e-3)
    assert rejected3 == pytest.approx(rejected[:8], abs=1e-3)


def test_resume_after_a_stop_equals_the_uninterrupted_run(
    zero2_run, scored_dataset, tiny_model_dir, tmp_path
):
    """Stop after step 6 (checkpoints at 4 and 6), plant a half-written checkpoint 7, resume
    with the deepspeed launcher: every logged number and the final weights are identical."""
    out = tmp_path / "run"
    args = train_args(scored_dataset, tiny_model_dir, out, *COMMON, "--zero-stage", "2")
    torchrun(2, [*args, "--halt-after-step", "6"], port=free_port())
    assert not (out / "final").exists() and read_summary(out)["halted"]
    # A checkpoint whose writer died before the state file must never be loaded.
    broken = out / "checkpoints" / "step-00000007"
    broken.mkdir()
    (broken / "mp_rank_00_model_states.pt").write_bytes(b"half a file")

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    launcher = [PYTHON, "-m", "deepspeed.launcher.runner", "--hostfile", hostfile]
    launcher += ["--no_ssh_check", "--master_addr", "127.0.0.1", "--master_port", free_port()]
    result = run_command([*launcher, "--module", "train", *args, "--resume", "auto"])
    assert "ignoring incomplete checkpoint" in result.stdout + result.stderr
    summary = read_summary(out)
    assert (summary["start_step"], summary["end_step"]) == (6, STEPS)

    keys = sorted(STEP_KEYS - {"tokens_per_second", "samples_per_second", "elapsed"})
    uninterrupted = [[r[k] for k in keys] for r in step_rows(zero2_run)]
    assert [[r[k] for k in keys] for r in step_rows(out)] == uninterrupted
    final_a = load_file(zero2_run / "final" / "model.safetensors")
    final_b = load_file(out / "final" / "model.safetensors")
    assert all(torch.equal(final_a[name], final_b[name]) for name in final_a)


def test_uneven_shards_give_every_rank_the_same_steps(uneven_dataset, tiny_model_dir, tmp_path):
    """Shards of 1, 40, 5 and 2 pairs on 2 ranks; 5 pairs per rank per step."""
    shards = sorted((uneven_dataset / "train").glob("*.parquet"))
    assert [pq.ParquetFile(p).metadata.num_rows for p in shards] == [1, 40, 5, 2]
    out = tmp_path / "run"
    args = train_args(uneven_dataset, tiny_model_dir, out, "--micro-batch-size", "5")
    args += ["--epochs", "2", "--lr", "3e-5", "--eval-split", "eval"]
    torchrun(2, args, port=free_port())
    summary = read_summary(out)
    # 48 pairs, 10 per step: 4 steps per epoch, 8 pairs of each epoch's order unused.
    assert (summary["steps_per_epoch"], summary["dropped_rows_per_epoch"]) == (4, 8)
    assert [r["steps"] for r in summary["ranks"]] == [8, 8]
    assert [r["step"] for r in step_rows(out)] == list(range(1, 9))
    assert any("eval/loss" in r for r in read_metrics(out))


def test_two_nodes_on_one_machine_train_like_one_node(
    zero2_run, scored_dataset, tiny_model_dir, tmp_path
):
    """Two torchrun invocations, one rank each, rendezvous on 127.0.0.1: the same run."""
    out = tmp_path / "run"
    args = train_args(scored_dataset, tiny_model_dir, out, *COMMON, "--zero-stage", "2")
    port = free_port()

    def node(rank: int) -> list[str]:
        cmd = [PYTHON, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank)]
        cmd += ["--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port)]
        return [*cmd, "-m", "train", *args]

    procs = [
        subprocess.Popen(
            node(rank),
            cwd=REPO,
            env=launch_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=LAUNCH_TIMEOUT)[0] for p in procs]
    for p, output in zip(procs, outputs, strict=True):
        assert p.returncode == 0, output[-8000:]
    summary = read_summary(out)
    assert summary["world_size"] == 2 and [r["steps"] for r in summary["ranks"]] == [STEPS] * 2
    assert [r["loss"] for r in step_rows(out)] == [r["loss"] for r in step_rows(zero2_run)]


COUNTING_SCRIPT = textwrap.dedent(
    """
    import gc, json, sys
    from transformers import LlamaForCausalLM, PreTrainedModel
    import train.api
    from train.cli import main

    constructed, alive = [], []
    original_init = LlamaForCausalLM.__init__

    def counting_init(self, *args, **kwargs):
        constructed.append(type(self).__name__)
        original_init(self, *args, **kwargs)

    LlamaForCausalLM.__init__ = counting_init
    original_export = train.api.export_final

    def export_and_count(*args, **kwargs):
        gc.collect()
        models = [o for o in gc.get_objects() if isinstance(o, PreTrainedModel)]
        inner = {id(m) for o in models for m in o.modules() if m is not o}
        alive.append(sum(id(o) not in inner for o in models))
        return original_export(*args, **kwargs)

    train.api.export_final = export_and_count
    code = main(sys.argv[1:])
    print("COUNTS " + json.dumps({"code": code, "constructed": constructed, "alive": alive}))
    """
)


def test_single_process_builds_no_reference_model(scored_dataset, tiny_model_dir, tmp_path):
    """`python -m train` in one process, with the tempered loss, ZeRO-1 and gradient
    checkpointing: exactly one model is ever constructed, and one is alive at the end."""
    out = tmp_path / "run"
    args = train_args(scored_dataset, tiny_model_dir, out, "--loss", "slpo_tempered")
    args += ["--zero-stage", "1", "--gradient-checkpointing", "--max-steps", "3", "--lr", "3e-5"]
    result = run_command([PYTHON, "-c", COUNTING_SCRIPT, *args])
    line = next(x for x in result.stdout.splitlines() if x.startswith("COUNTS "))
    counts = json.loads(line.removeprefix("COUNTS "))
    assert counts == {"code": 0, "constructed": ["LlamaForCausalLM"], "alive": [1]}
    summary = read_summary(out)
    assert summary["models_loaded"] == 1 and summary["world_size"] == 1
    assert [r["step"] for r in step_rows(out)] == [1, 2, 3]
    AutoModelForCausalLM.from_pretrained(out / "final")


def test_refused_shards_stop_both_ranks_with_the_reason(scored_dataset, tiny_model_dir, tmp_path):
    from tests.fixtures_training import derive_dataset, with_metadata

    other = "sha256:" + "e" * 64
    data = derive_dataset(
        scored_dataset, tmp_path / "data", change=with_metadata(tokenizer_fingerprint=other)
    )
    args = train_args(data, tiny_model_dir, tmp_path / "run", "--max-steps", "2")
    result = torchrun(2, args, port=free_port(), check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "python -m train: error:" in output and other in output
    assert str(sorted((data / "train").glob("*.parquet"))[0]) in output
    assert "rank 0 refused the run" in output  # rank 1 stopped too, without waiting
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_step0_check_stops_a_run_on_drifted_reference_logps(
    scored_dataset, tiny_model_dir, tmp_path
):
    from schemas import read_shard_metadata
    from tests.fixtures_training import write_split

    rows = split_rows(scored_dataset / "train")
    for row in rows:
        row["ref_chosen_logps"] = [v - 0.01 for v in row["ref_chosen_logps"]]
    metadata = read_shard_metadata(sorted((scored_dataset / "train").glob("*.parquet"))[0])
    write_split(rows, tmp_path / "data" / "train", metadata)
    out = tmp_path / "run"
    result = run_command(
        [PYTHON, "-m", "train", *train_args(tmp_path / "data", tiny_model_dir, out)], check=False
    )
    assert result.returncode == 1
    assert "step-0 reference check failed" in result.stderr
    (row,) = read_metrics(out)
    assert row["ref_check/passed"] is False and row["ref_check/max_abs_diff"] > 0.009
    assert not (out / "checkpoints").exists()
