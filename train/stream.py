"""Streaming the pairs of a split: seeded order, bounded memory, equal steps on every rank.

Order. Epoch `e` of a run seeded `s` has one global order of the split's rows: the shards in a
permutation drawn from `(s, e)`, their rows streamed through a shuffle buffer of `buffer_size`
rows drawn from the same generator. The order is reproducible and changes every epoch. Memory
holds the buffer plus one Arrow record batch of the projected columns, whatever the split's size.

Steps. An optimizer step consumes `R = micro_batch * grad_accum * world_size` consecutive rows
of the global order; rank `r` takes the rows whose position `g` has `g % world_size == r`, so
every rank gets `micro_batch * grad_accum` rows per step. An epoch is
`floor(num_rows / R)` steps on every rank, whatever the shard count and sizes; the last
`num_rows mod R` rows of each epoch's order are not used in that epoch (the order changes next
epoch, and so does the remainder). Every rank reads the whole split to keep its share.

Position. The data position is `(epoch, step in epoch)`: resuming re-streams that epoch's
order and skips `step * R` rows without touching the model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from train.data import Split

logger = logging.getLogger(__name__)

COLUMNS = (
    "id",
    "prompt_ids",
    "chosen_ids",
    "rejected_ids",
    "ref_chosen_logps",
    "ref_rejected_logps",
    "ref_chosen_logp",
    "ref_rejected_logp",
)
"""The shard columns the trainer reads (all of `SHARD_SCHEMA` today, named explicitly)."""


@dataclass(frozen=True, slots=True)
class Pair:
    """One preference pair as stored in a shard; arrays are owned copies."""

    id: str
    prompt_ids: np.ndarray  # [P] int64
    chosen_ids: np.ndarray  # [Cw] int64
    rejected_ids: np.ndarray  # [Cl] int64
    ref_chosen_logps: np.ndarray  # [Cw] float32
    ref_rejected_logps: np.ndarray  # [Cl] float32
    ref_chosen_logp: float
    ref_rejected_logp: float


def _list_column(batch, name: str, dtype) -> tuple[np.ndarray, np.ndarray]:
    column = batch.column(name)
    values = column.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return values, np.asarray(column.offsets)


def read_pairs(paths, *, read_batch_rows: int) -> Iterator[Pair]:
    """Every pair of `paths`, in file order, reading only `COLUMNS` one record batch at a time."""
    list_columns = {
        "prompt_ids": np.int64,
        "chosen_ids": np.int64,
        "rejected_ids": np.int64,
        "ref_chosen_logps": np.float32,
        "ref_rejected_logps": np.float32,
    }
    for path in paths:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=read_batch_rows, columns=list(COLUMNS)):
            lists = {name: _list_column(batch, name, t) for name, t in list_columns.items()}
            ids = batch.column("id").to_pylist()
            sums = {n: batch.column(n).to_numpy() for n in ("ref_chosen_logp", "ref_rejected_logp")}
            for i in range(batch.num_rows):
                # Copies, so a buffered row does not pin its whole record batch in memory.
                row = {name: v[o[i] : o[i + 1]].copy() for name, (v, o) in lists.items()}
                yield Pair(
                    id=ids[i],
                    **row,
                    ref_chosen_logp=float(sums["ref_chosen_logp"][i]),
                    ref_rejected_logp=float(sums["ref_rejected_logp"][i]),
                )


def shuffled_pairs(
    split: Split, *, seed: int, epoch: int, buffer_size: int, read_batch_rows: int
) -> Iterator[Pair]:
    """The global order of epoch `epoch`: shards permuted, rows through a shuffle buffer."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(split.shards))
    paths = [split.shards[i].path for i in order]
    buffer: list[Pair] = []
    for pair in read_pairs(paths, read_batch_rows=read_batch_rows):
        if len(buffer) < buffer_size:
            buffer.append(pair)
            continue
        # Emit a random buffered row and put the new one in its place.
        j = int(rng.integers(buffer_size))
        yield buffer[j]
        buffer[j] = pair
    for j in rng.permutation(len(buffer)):
        yield buffer[j]


@dataclass(frozen=True)
class EpochPlan:
    """How many optimizer steps an epoch holds, identical on every rank."""

    num_rows: int
    micro_batch_size: int
    grad_accum: int
    world_size: int

    @property
    def rows_per_step(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.num_rows // self.rows_per_step

    @property
    def dropped_rows(self) -> int:
        """Rows at the end of each epoch's order that no step uses."""
        return self.num_rows - self.steps_per_epoch * self.rows_per_step

    def check(self, split_name: str) -> EpochPlan:
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"split {split_name!r} has {self.num_rows} pairs, fewer than one optimizer step "
                f"takes (micro batch {self.micro_batch_size} x grad accum {self.grad_accum} x "
                f"{self.world_size} ranks = {self.rows_per_step}); lower --micro-batch-size or "
                "--grad-accum, or use fewer ranks"
            )
        return self


def rank_micro_batches(
    split: Split,
    plan: EpochPlan,
    *,
    rank: int,
    seed: int,
    epoch: int,
    start_step: int,
    buffer_size: int,
    read_batch_rows: int,
) -> Iterator[list[Pair]]:
    """This rank's micro-batches for steps `start_step..steps_per_epoch-1` of `epoch`.

    Yields `grad_accum` micro-batches of `micro_batch_size` pairs per step.
    """
    used = plan.steps_per_epoch * plan.rows_per_step
    first = start_step * plan.rows_per_step
    pairs = shuffled_pairs(
        split, seed=seed, epoch=epoch, buffer_size=buffer_size, read_batch_rows=read_batch_rows
    )
    micro_batch: list[Pair] = []
    for position, pair in enumerate(pairs):
        if position >= used:
            break
        if position < first or position % plan.world_size != rank:
            continue
        micro_batch.append(pair)
        if len(micro_batch) == plan.micro_batch_size:
            yield micro_batch
            micro_batch = []


def eval_micro_batches(
    split: Split, *, micro_batch_size: int, rank: int, world_size: int, read_batch_rows: int
) -> Iterator[tuple[list[Pair], list[bool]]]:
    """Every pair of `split` once across ranks, in file order, with equal forward counts.

    Rank `r` takes the rows `g % world_size == r`. Ranks with fewer rows (and the last, short
    micro-batch) are filled up with the split's first row, flagged `False` in the validity list,
    so every rank runs `ceil(ceil(num_rows / world_size) / micro_batch_size)` forwards: under
    ZeRO-3 each forward is a collective.
    """
    per_rank = math.ceil(split.num_rows / world_size)
    num_batches = math.ceil(per_rank / micro_batch_size)
    filler: Pair | None = None
    mine: list[Pair] = []

    def take(count: int) -> tuple[list[Pair], list[bool]]:
        rows = mine[:count]
        del mine[:count]
        valid = [True] * len(rows) + [False] * (count - len(rows))
        return rows + [filler] * (count - len(rows)), valid

    emitted = 0
    paths = [shard.path for shard in split.shards]
    for position, pair in enumerate(read_pairs(paths, read_batch_rows=read_batch_rows)):
        if filler is None:
            filler = pair
        if position % world_size == rank:
            mine.append(pair)
        if len(mine) == micro_batch_size:
            yield take(micro_batch_size)
            emitted += 1
    while emitted < num_batches:
        yield take(micro_batch_size)
        emitted += 1
