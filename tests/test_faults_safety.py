"""Safety: no dataset file is unpickled, code in a model folder runs only when asked, manifests
hold relative paths, and no command is built as a shell string."""

from __future__ import annotations

import ast
import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from pipeline import inspect, score
from pipeline.cli import build_parser as pipeline_parser
from pipeline.inputs import BadRowError
from schemas import ContractError, CorruptShardError, tokenizer_fingerprint, validate_shard
from tests.fixtures_training import REPO
from train.cli import build_parser as train_parser
from train.config import Resolved, TrainConfig
from train.data import load_split
from train.engine import load_policy

PACKAGES = ("pipeline", "train", "schemas")
"""The code that reads datasets (and model folders)."""
ALL_CODE = (*PACKAGES, "toy", "bench")


def _calls(packages) -> list[tuple[str, str, ast.Call]]:
    """(file, innermost enclosing function, call) for every call in the packages' files."""
    found = []

    def visit(node: ast.AST, path: str, function: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        if isinstance(node, ast.Call):
            found.append((path, function, node))
        for child in ast.iter_child_nodes(node):
            visit(child, path, function)

    for path in sorted(p for name in packages for p in (REPO / name).rglob("*.py")):
        visit(ast.parse(path.read_text()), str(path.relative_to(REPO)), "<module>")
    return found


def _dotted(node: ast.AST) -> str:
    return ast.unparse(node.func) if isinstance(node, ast.Call) else ast.unparse(node)


def test_nothing_that_reads_a_dataset_can_unpickle():
    """Shards, manifests, records and inputs are Parquet and JSON. The only `torch.load` reads
    a checkpoint's RNG state, in the run folder the user's own training wrote."""
    unpicklers = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve"}
    for path in sorted(p for name in PACKAGES for p in (REPO / name).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not names & unpicklers, f"{path} imports {names & unpicklers}"

    loads = {
        (path, function)
        for path, function, call in _calls(PACKAGES)
        if re.search(r"(^|\.)(load|read_pickle)$", _dotted(call))
        and _dotted(call).split(".")[0] in {"torch", "np", "numpy", "pd", "pandas"}
    }
    assert loads == {("train/checkpoint.py", "load")}


def test_a_pickle_posing_as_a_shard_is_refused_not_unpickled(tmp_path, tiny_model_dir):
    sentinel = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    shard = tmp_path / "data" / "train" / "part-00000-000000.parquet"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(pickle.dumps(Trap()))
    fingerprint = tokenizer_fingerprint(AutoTokenizer.from_pretrained(tiny_model_dir))

    with pytest.raises(CorruptShardError, match="not a readable Parquet file"):
        validate_shard(shard)
    with pytest.raises(CorruptShardError, match="not a readable Parquet file"):
        load_split(tmp_path / "data", "train", tokenizer_fingerprint=fingerprint)
    assert "not a readable Parquet file" in inspect(shard)["splits"]["train"]["validation"]
    assert not sentinel.exists()


def _remote_code_model(tiny_model_dir: Path, folder: Path) -> tuple[Path, Path]:
    """A copy of the tiny model whose config and model classes come from code in the folder;
    importing that code writes a sentinel file. Returns (folder, sentinel)."""
    model = shutil.copytree(tiny_model_dir, folder)
    sentinel = folder.parent / f"{folder.name}-code-ran"
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "remote_llama"
    config["auto_map"] = {
        "AutoConfig": "configuration_remote.RemoteConfig",
        "AutoModelForCausalLM": "modeling_remote.RemoteModel",
    }
    (model / "config.json").write_text(json.dumps(config))
    (model / "configuration_remote.py").write_text(
        f"import pathlib\npathlib.Path({str(sentinel)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig\n\n\n"
        "class RemoteConfig(LlamaConfig):\n    model_type = 'remote_llama'\n"
    )
    (model / "modeling_remote.py").write_text(
        "from transformers import LlamaForCausalLM\n"
        "from .configuration_remote import RemoteConfig\n\n\n"
        "class RemoteModel(LlamaForCausalLM):\n    config_class = RemoteConfig\n"
    )
    return model, sentinel


def test_trust_remote_code_is_off_unless_the_flag_turns_it_on(tmp_path, tiny_model_dir):
    score_args = pipeline_parser().parse_args(["score", "in.jsonl", "--model", "m", "--out", "o"])
    train_args = ["--data", "d", "--model", "m", "--out", "o"]
    assert score_args.trust_remote_code is False
    assert train_parser().parse_args(train_args).trust_remote_code is False
    argv = ["score", "in.jsonl", "--model", "m", "--out", "o", "--trust-remote-code"]
    assert pipeline_parser().parse_args(argv).trust_remote_code is True
    assert train_parser().parse_args([*train_args, "--trust-remote-code"]).trust_remote_code

    # Scoring: refused without the flag; with it, the model's code runs (the bad row that
    # follows stops the run before an engine starts).
    model, sentinel = _remote_code_model(tiny_model_dir, tmp_path / "remote-score")
    bad = tmp_path / "in.jsonl"
    bad.write_text('{"prompt": "p"}\n')
    with pytest.raises(ValueError, match=r"(?s)contains custom code.*trust_remote_code=True"):
        score(bad, model=model, out=tmp_path / "out", progress=False)
    assert not sentinel.exists() and not (tmp_path / "out").exists()
    with pytest.raises(BadRowError, match="missing_field"):
        score(bad, model=model, out=tmp_path / "out", trust_remote_code=True, progress=False)
    assert sentinel.exists()

    # Training: the policy is loaded the same way.
    model, sentinel = _remote_code_model(tiny_model_dir, tmp_path / "remote-train")
    resolved = Resolved(2, 1, 1, 1e-6, False, False, False)
    config = TrainConfig(data=tmp_path, model=model, out=tmp_path / "run")
    with pytest.raises(ValueError, match=r"(?s)contains custom code.*trust_remote_code=True"):
        load_policy(config, resolved, {})
    assert not sentinel.exists()
    config.trust_remote_code = True
    policy, _ = load_policy(config, resolved, {})
    assert type(policy).__name__ == "RemoteModel" and sentinel.exists()


@pytest.mark.vllm
def test_manifests_hold_relative_paths_and_readers_stay_inside(scored_dataset, tmp_path):
    manifest = json.loads((scored_dataset / "manifest.json").read_text())
    for split, entry in manifest["splits"].items():
        listed = [s["path"] for s in entry["shards"]] + [entry["rejects_file"] or "x"]
        assert not any(Path(p).is_absolute() or ".." in Path(p).parts for p in listed)
        # Inputs live beside the dataset folder, so theirs are relative with `..`.
        sources = [(scored_dataset / p).resolve() for p in entry["source_files"]]
        assert sources == [(scored_dataset.parent / "inputs" / f"{split}.jsonl").resolve()]
        assert not any(Path(p).is_absolute() for p in entry["source_files"])

    # A moved dataset still inspects and loads: nothing points at its old place.
    moved = shutil.copytree(scored_dataset, tmp_path / "deeper" / "moved")
    shutil.rmtree(scored_dataset.parent / "elsewhere", ignore_errors=True)
    assert {s["validation"] for s in inspect(moved)["splits"].values()} == {"ok"}
    fingerprint = manifest["tokenizer_fingerprint"]
    assert load_split(moved, "train", tokenizer_fingerprint=fingerprint).num_rows == 48

    # A manifest whose shard path leads outside its folder is refused.
    for outside in ("../../secret.parquet", "/etc/passwd"):
        tampered = json.loads(json.dumps(manifest))
        tampered["splits"]["train"]["shards"][0]["path"] = outside
        (moved / "manifest.json").write_text(json.dumps(tampered))
        with pytest.raises(ContractError, match=re.escape(f"{outside!r} leads outside")):
            inspect(moved)


SHELL_CALLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"}
RUNNERS = re.compile(r"(^|\.)(run|Popen|call|check_call|check_output)$")


def test_no_command_is_built_as_a_shell_string():
    """Every child process gets an argument list: no `shell=True`, no `os.system`, no command
    string (literal, f-string or concatenation) handed to `subprocess`."""
    problems = []
    for path, _, call in _calls(ALL_CODE):
        name = _dotted(call)
        where = f"{path}:{call.lineno} {name}"
        if name in SHELL_CALLS:
            problems.append(where)
        for keyword in call.keywords:
            if keyword.arg == "shell" and not (
                isinstance(keyword.value, ast.Constant) and keyword.value.value is False
            ):
                problems.append(f"{where} shell={ast.unparse(keyword.value)}")
        if RUNNERS.search(name) and name.split(".")[0] in {"subprocess", "sp"} and call.args:
            first = call.args[0]
            if isinstance(first, ast.JoinedStr | ast.BinOp) or (
                isinstance(first, ast.Constant) and isinstance(first.value, str)
            ):
                problems.append(f"{where} with a command string")
    assert problems == []
    # The scan sees the project's real child processes.
    assert sum(RUNNERS.search(_dotted(c)) is not None for _, _, c in _calls(ALL_CODE)) >= 3
