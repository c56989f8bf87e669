"""Process-group set-up and the few collectives the trainer needs.

The same code runs as one plain process, under `torchrun`, and under the `deepspeed` launcher
(one or many nodes): the launchers set `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and
`MASTER_PORT`; a plain process gets single-rank defaults on a free local port.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_info() -> DistInfo:
    """Rank and world size from the launcher's environment, with single-process defaults set."""
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    world_size = int(os.environ["WORLD_SIZE"])
    return DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))),
    )


def init(info: DistInfo, backend: str | None) -> str:
    """Start the process group through DeepSpeed; return the backend used.

    On DeepSpeed's CPU accelerator the backend is gloo (its default, oneCCL, is not needed).
    Without `OMP_NUM_THREADS`, CPU ranks on one machine share its cores.
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    on_cpu = get_accelerator().device_name() == "cpu"
    backend = backend or ("gloo" if on_cpu else get_accelerator().communication_backend_name())
    if on_cpu and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // info.local_world_size)
        torch.set_num_threads(threads)
        logger.info("OMP_NUM_THREADS is unset: %d torch threads per rank", threads)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend)
    return backend


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (`sum` or `max`); a no-op on one process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class RankError(RuntimeError):
    """Another rank refused the run; its message is repeated here."""


def on_main_then_share(fn: Callable[[], T], info: DistInfo) -> T:
    """Run `fn` on rank 0 only and give its result to every rank.

    If `fn` raises on rank 0, rank 0 re-raises it and every other rank raises `RankError` with
    the same message, so no rank waits in a collective for a rank that has stopped.
    """
    result: Any = None
    error: BaseException | None = None
    if info.is_main:
        try:
            result = fn()
        except (ValueError, OSError, RuntimeError) as e:
            error = e
    payload = [result, f"{type(error).__name__}: {error}" if error else None]
    if dist.is_initialized() and info.world_size > 1:
        dist.broadcast_object_list(payload, src=0)
    if error is not None:
        raise error
    if payload[1] is not None:
        raise RankError(f"rank 0 refused the run: {payload[1]}")
    return payload[0]


def raise_if_any(message: str | None, what: str) -> None:
    """Collectively raise when any rank reports a problem (`message`), on every rank."""
    messages = all_gather_objects(message)
    problems = [(r, m) for r, m in enumerate(messages) if m]
    if problems:
        rank, first = problems[0]
        raise RankError(f"{what} failed on rank {rank}: {first}")
