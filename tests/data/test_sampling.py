"""The training sampler: every example once per epoch, the same examples per step on one process or several,
seeded per epoch, resumable mid-epoch; evaluation shards longest first."""

from __future__ import annotations

from softprompt.data.sampling import ShuffledShardSampler, longest_first_shard


def test_shards_cover_each_epoch_once_and_reproduce_the_single_process_batches():
    one = list(ShuffledShardSampler(48, seed=3))
    shards = [list(ShuffledShardSampler(48, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    for step in range(6):  # batch 8 on one process == batch 4 on each of two
        assert sorted(one[8 * step: 8 * step + 8]) == sorted(shards[0][4 * step: 4 * step + 4] +
                                                             shards[1][4 * step: 4 * step + 4])
    sampler = ShuffledShardSampler(48, seed=3)
    sampler.set_epoch(1)
    assert list(sampler) != one and sorted(sampler) == list(range(48))
    sampler.resume(1, 20)
    assert list(sampler) == _epoch(48, 3, 1)[20:]  # a resumed epoch continues after the trained part
    assert list(sampler) == _epoch(48, 3, 1)  # ... once: the next pass is whole again
    lengths = [3, 9, 1, 9, 4]
    assert longest_first_shard(lengths) == [1, 3, 4, 0, 2]
    assert longest_first_shard(lengths, 2, 0) + longest_first_shard(lengths, 2, 1) == [1, 4, 2, 3, 0]


def _epoch(size: int, seed: int, epoch: int) -> list[int]:
    sampler = ShuffledShardSampler(size, seed)
    sampler.set_epoch(epoch)
    return sampler.epoch_indices()
