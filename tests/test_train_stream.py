"""The streaming reader: seeded order, bounded buffer, equal steps on every rank, resume skip."""

from __future__ import annotations

import pytest

from schemas import read_shard_metadata
from tests.fixtures_training import split_rows
from train.data import load_split
from train.stream import (
    EpochPlan,
    eval_micro_batches,
    rank_micro_batches,
    read_pairs,
    shuffled_pairs,
)


@pytest.fixture(scope="module")
def train_split(uneven_dataset):
    path = sorted((uneven_dataset / "train").glob("*.parquet"))[0]
    fingerprint = read_shard_metadata(path).tokenizer_fingerprint
    return load_split(uneven_dataset, "train", tokenizer_fingerprint=fingerprint)


def _ids(pairs) -> list[str]:
    return [p.id for p in pairs]


def test_uneven_dataset_really_is_uneven(train_split):
    sizes = [s.num_rows for s in train_split.shards]
    assert len(sizes) >= 2 and max(sizes) >= 10 * min(sizes), sizes


def test_read_pairs_matches_the_shards(train_split, uneven_dataset):
    rows = split_rows(uneven_dataset / "train")
    pairs = list(read_pairs([s.path for s in train_split.shards], read_batch_rows=3))
    assert _ids(pairs) == [r["id"] for r in rows]
    for pair, row in zip(pairs, rows, strict=True):
        assert pair.chosen_ids.tolist() == row["chosen_ids"]
        assert pair.ref_rejected_logps.tolist() == pytest.approx(row["ref_rejected_logps"])
        assert pair.ref_chosen_logp == row["ref_chosen_logp"]


def test_shuffle_is_seeded_per_epoch_and_a_permutation(train_split):
    def order(seed, epoch, buffer=8):
        pairs = shuffled_pairs(
            train_split, seed=seed, epoch=epoch, buffer_size=buffer, read_batch_rows=5
        )
        return _ids(pairs)

    file_order = _ids(read_pairs([s.path for s in train_split.shards], read_batch_rows=64))
    first = order(0, 0)
    assert first == order(0, 0)
    assert sorted(first) == sorted(file_order)
    assert first != file_order
    assert order(0, 1) != first
    assert order(1, 0) != first
    assert sorted(order(0, 1)) == sorted(file_order)


def test_every_rank_takes_the_same_steps_and_no_row_twice(train_split):
    world, mb, ga = 2, 3, 2
    plan = EpochPlan(train_split.num_rows, mb, ga, world).check("train")
    per_rank = []
    for rank in range(world):
        batches = list(
            rank_micro_batches(
                train_split, plan, rank=rank, seed=3, epoch=0, start_step=0,
                buffer_size=8, read_batch_rows=4,
            )
        )  # fmt: skip
        assert all(len(b) == mb for b in batches)
        per_rank.append([p.id for b in batches for p in b])
    assert len(per_rank[0]) == len(per_rank[1]) == plan.steps_per_epoch * mb * ga
    used = per_rank[0] + per_rank[1]
    assert len(set(used)) == len(used)
    assert len(used) + plan.dropped_rows == train_split.num_rows
    assert plan.dropped_rows == train_split.num_rows % (mb * ga * world)


def test_resume_skip_continues_the_same_stream(train_split):
    plan = EpochPlan(train_split.num_rows, 2, 1, 2)
    kwargs = dict(rank=1, seed=5, epoch=2, buffer_size=6, read_batch_rows=4)
    full = [_ids(b) for b in rank_micro_batches(train_split, plan, start_step=0, **kwargs)]
    later = [_ids(b) for b in rank_micro_batches(train_split, plan, start_step=3, **kwargs)]
    assert later == full[3:]


def test_too_few_rows_for_one_step_is_refused(train_split):
    plan = EpochPlan(train_split.num_rows, train_split.num_rows, 1, 2)
    with pytest.raises(ValueError, match="fewer than one optimizer step"):
        plan.check("train")


def test_eval_covers_every_row_once_with_equal_batch_counts(train_split):
    world, mb = 3, 4
    counts, seen = [], []
    for rank in range(world):
        batches = list(
            eval_micro_batches(
                train_split, micro_batch_size=mb, rank=rank, world_size=world, read_batch_rows=5
            )
        )
        counts.append(len(batches))
        for pairs, valid in batches:
            assert len(pairs) == len(valid) == mb
            seen += [p.id for p, ok in zip(pairs, valid, strict=True) if ok]
    assert len(set(counts)) == 1
    assert sorted(seen) == sorted(r.id for r in read_pairs(
        [s.path for s in train_split.shards], read_batch_rows=64
    ))  # fmt: skip


def test_shuffle_buffer_bounds_the_rows_held(train_split, monkeypatch):
    """Rows are pulled lazily: after k rows out, at most k + buffer_size rows were read."""
    import train.stream as stream

    pulled = []
    original = stream.read_pairs

    def counting(paths, *, read_batch_rows):
        for pair in original(paths, read_batch_rows=read_batch_rows):
            pulled.append(pair.id)
            yield pair

    monkeypatch.setattr(stream, "read_pairs", counting)
    buffer = 5
    out = shuffled_pairs(train_split, seed=0, epoch=0, buffer_size=buffer, read_batch_rows=4)
    for k, _ in enumerate(out, start=1):
        assert len(pulled) <= k + buffer
    assert len(pulled) == train_split.num_rows
