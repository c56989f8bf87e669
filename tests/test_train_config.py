"""The trainer's configuration: validation, DeepSpeed config resolution, the command line."""

from __future__ import annotations

import json

import pytest

from train.cli import build_parser, config_from_args
from train.config import TrainConfig, build_deepspeed_config, load_user_deepspeed, resolve
from train.engine import lr_lambda


@pytest.fixture
def base(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "model").mkdir()
    return TrainConfig(data=tmp_path / "data", model=tmp_path / "model", out=tmp_path / "out")


def _with(config: TrainConfig, **changes) -> TrainConfig:
    return TrainConfig(**{**vars(config), **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"loss": "kto"}, r"`loss` got 'kto': choose one of"),
        ({"alpha": 1.5}, r"`alpha` got 1.5: it must be in \[0, 1\]"),
        ({"loss": "cdpo"}, r"cdpo needs --label-smoothing"),
        ({"zero_stage": 4}, r"`zero_stage` got 4: use 0-3"),
        ({"micro_batch_size": 0}, r"`micro_batch_size` got 0: it must be >= 1"),
        ({"max_steps": 3, "epochs": 1}, r"max_steps \(3\) and epochs \(1\) are exclusive"),
        ({"target_rule": "swap"}, r"`target_rule` got 'swap'"),
    ],
)
def test_invalid_values_are_named_with_the_fix(base, changes, message):
    with pytest.raises(ValueError, match=message):
        _with(base, **changes).validate()


def test_missing_folders_are_refused(base, tmp_path):
    with pytest.raises(ValueError, match=r"`model` got '.*nowhere': pass an existing folder"):
        _with(base, model=tmp_path / "nowhere").validate()


def test_flags_fill_auto_values_and_defaults(base, tmp_path):
    user = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": {"stage": 3, "overlap_comm": False},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}},
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {"warmup_num_steps": "auto", "total_num_steps": "auto"},
        },
    }
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(user))
    config = _with(base, deepspeed=path, micro_batch_size=3, lr=2e-5, warmup_steps=7)
    resolved = resolve(config, load_user_deepspeed(config))
    assert (resolved.zero_stage, resolved.micro_batch_size, resolved.grad_accum) == (3, 3, 1)
    assert resolved.optimizer_in_config and resolved.scheduler_in_config
    ds = build_deepspeed_config(config, user, resolved, world_size=4, total_steps=100)
    assert ds["train_batch_size"] == 12
    assert ds["gradient_clipping"] == 1.0
    assert ds["optimizer"]["params"] == {"lr": 2e-5, "weight_decay": 0.0}
    assert ds["scheduler"]["params"] == {"warmup_num_steps": 7, "total_num_steps": 100}
    assert ds["zero_optimization"] == {"stage": 3, "overlap_comm": False}
    assert ds["bf16"] == {"enabled": False}


def test_defaults_without_a_json(base):
    resolved = resolve(base, {})
    assert (resolved.zero_stage, resolved.micro_batch_size, resolved.grad_accum) == (2, 4, 1)
    assert resolved.lr == 1e-6 and not resolved.bf16
    ds = build_deepspeed_config(base, {}, resolved, world_size=2, total_steps=10)
    assert ds["zero_optimization"]["stage"] == 2 and ds["train_batch_size"] == 8


def test_a_flag_contradicting_the_json_is_an_error(base, tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    config = _with(base, deepspeed=path, zero_stage=2)
    with pytest.raises(ValueError, match=r"--zero-stage 2 contradicts zero_optimization.stage = 3"):
        resolve(config, load_user_deepspeed(config))


def test_unresolvable_auto_and_wrong_batch_are_errors(base):
    resolved = resolve(base, {})
    with pytest.raises(ValueError, match=r"optimizer.params.foo = \"auto\""):
        build_deepspeed_config(
            base, {"optimizer": {"params": {"foo": "auto"}}}, resolved, world_size=1, total_steps=1
        )
    with pytest.raises(ValueError, match=r"train_batch_size = 5 .* = 8"):
        build_deepspeed_config(base, {"train_batch_size": 5}, resolved, world_size=2, total_steps=1)


def test_schedule_warms_up_then_decays():
    linear = lr_lambda("linear", 2, 10)
    assert [round(linear(s), 3) for s in (0, 1, 2, 6, 10)] == [0.333, 0.667, 1.0, 0.5, 0.0]
    cosine = lr_lambda("cosine", 0, 4)
    assert [round(cosine(s), 3) for s in (0, 2, 4)] == [1.0, 0.5, 0.0]
    assert lr_lambda("constant", 1, 5)(4) == 1.0


def test_cli_builds_the_config(base):
    argv = [
        "--data", str(base.data), "--model", str(base.model), "--out", str(base.out),
        "--loss", "ipo", "--beta", "0.2", "--zero-stage", "3", "--max-steps", "5",
        "--resume", "auto", "--local_rank=1",
    ]  # fmt: skip
    config = config_from_args(build_parser().parse_args(argv), argv).validate()
    assert (config.loss, config.beta, config.zero_stage, config.max_steps) == ("ipo", 0.2, 3, 5)
    assert config.resume == "auto" and config.extra["argv"] == argv


class _Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def _launcher_parsers(monkeypatch) -> list:
    """The argument parsers of torchrun and of DeepSpeed's runner and per-node launcher."""
    import argparse

    import deepspeed.launcher.launch as ds_launch
    import deepspeed.launcher.runner as ds_runner
    import torch.distributed.run as torchrun

    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    parsers = [torchrun.get_args_parser()]
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    for parse in (lambda: ds_runner.parse_args([]), ds_launch.parse_args):
        with pytest.raises(_Captured) as info:
            parse()
        parsers.append(info.value.parser)
    return parsers


def test_no_flag_is_a_prefix_of_a_launcher_option(monkeypatch):
    """The launchers take abbreviations of their own options from the script's flags."""
    theirs = {
        option
        for parser in _launcher_parsers(monkeypatch)
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--")
    }
    assert {"--nproc_per_node", "--hostfile", "--master_port"} <= theirs
    ours = {o for a in build_parser()._actions for o in a.option_strings if o.startswith("--")}
    ours -= {"--local_rank", "--local-rank", "--help"}
    clashes = {(o, t) for o in ours for t in theirs if t != o and t.startswith(o)}
    assert not clashes
