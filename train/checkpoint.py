"""Checkpoints that a crash cannot leave half-usable, and resuming from them.

Layout, one folder per saved step (a DeepSpeed checkpoint tag):

    OUT/checkpoints/step-00000012/
        *_model_states.pt, *_optim_states.pt   DeepSpeed: weights, optimizer, LR scheduler
        rng-rank-00000.pt ...                   python, numpy and torch RNG states, per rank
        trainer_state.json                      step, data position, run shape; written LAST

A checkpoint is complete when `trainer_state.json` exists: it is written atomically by rank 0
after every rank has finished writing. `--resume auto` takes the newest complete checkpoint;
folders without the state file are ignored (and reported).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from schemas import write_text_atomic
from schemas.faults import fault_point
from train.distributed import DistInfo, barrier

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
RUN_SHAPE_KEYS = ("world_size", "micro_batch_size", "grad_accum", "seed", "train_data")
"""State entries a resumed run must share with the checkpoint to see the same data."""


def checkpoint_dir(out: Path, step: int) -> Path:
    return Path(out) / CHECKPOINTS / f"step-{step:08d}"


def complete_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints under `out`, oldest first; incomplete ones are logged and skipped."""
    root = Path(out) / CHECKPOINTS
    found = []
    for folder in sorted(root.glob("step-*")) if root.is_dir() else []:
        if (folder / STATE_FILE).is_file():
            found.append(folder)
        else:
            logger.warning("ignoring incomplete checkpoint %s (no %s)", folder, STATE_FILE)
    return found


def resolve_resume(resume: str | None, out: Path) -> Path | None:
    """The checkpoint folder to resume from: None for a fresh start."""
    if resume is None:
        return None
    if resume == "auto":
        found = complete_checkpoints(out)
        if not found:
            logger.info("--resume auto: no complete checkpoint in %s, starting fresh", out)
            return None
        return found[-1]
    folder = Path(resume)
    if not (folder / STATE_FILE).is_file():
        raise ValueError(
            f"--resume {resume}: not a complete checkpoint (no {STATE_FILE}); pass a "
            f"{CHECKPOINTS}/step-* folder or `auto`"
        )
    return folder


def check_run_shape(state: dict[str, Any], current: dict[str, Any], folder: Path) -> None:
    """Refuse to resume when the run's shape changed (the data order would differ)."""
    for key in RUN_SHAPE_KEYS:
        if state.get(key) != current.get(key):
            raise ValueError(
                f"cannot resume from {folder}: {key} was {state.get(key)!r} there and is "
                f"{current.get(key)!r} now; resume with the same value or start a new --out"
            )


def save(engine, out: Path, step: int, state: dict[str, Any], info: DistInfo, keep: int) -> Path:
    """Save a checkpoint on every rank; rank 0 writes the state file once all ranks are done."""
    folder = checkpoint_dir(out, step)
    if info.is_main:
        # Re-saving a step: it must not count as complete until rewritten in full.
        (folder / STATE_FILE).unlink(missing_ok=True)
    barrier()
    engine.save_checkpoint(str(folder.parent), tag=folder.name, save_latest=False)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(_rng_state(), folder / f"rng-rank-{info.rank:05d}.pt")
    fault_point("checkpoint-files")
    barrier()
    if info.is_main:
        write_text_atomic(folder / STATE_FILE, json.dumps(state, indent=2) + "\n")
        logger.info("saved checkpoint %s", folder)
        if keep:
            for old in complete_checkpoints(out)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return folder


def load(engine, folder: Path, info: DistInfo) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this rank's RNG; return the trainer state."""
    state = json.loads((folder / STATE_FILE).read_text())
    load_path, _ = engine.load_checkpoint(
        str(folder.parent),
        tag=folder.name,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
    )
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {folder}")
    rng_file = folder / f"rng-rank-{info.rank:05d}.pt"
    _set_rng_state(torch.load(rng_file, weights_only=False))
    logger.info("resumed from %s at step %d", folder, state["step"])
    return state


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
