"""data.group_by_length: training batches of similar lengths, every example once per epoch, the same
examples per step on one process or several, resumable, seeded; and less padding in a real DataModule."""

from __future__ import annotations

import random

import pytest

from softprompt.data.sampling import ShuffledShardSampler
from softprompt.errors import ConfigError
from softprompt.training.checks import check_config
from softprompt.training.job import build_job
from softprompt.training.job_config import parse_job, resolved_config

_RNG = random.Random(0)
LENGTHS = [_RNG.randint(1, 100) for _ in range(203)]


def grouped(num_replicas: int = 1, rank: int = 0, batch_size: int = 8, epoch: int = 0) -> ShuffledShardSampler:
    sampler = ShuffledShardSampler(len(LENGTHS), seed=5, num_replicas=num_replicas, rank=rank, lengths=LENGTHS,
                                   batch_size=batch_size, group_batches=4)
    sampler.set_epoch(epoch)
    return sampler


def padded_width(order: list[int], batch_size: int) -> int:
    return sum(max(LENGTHS[i] for i in order[s:s + batch_size]) * len(order[s:s + batch_size])
               for s in range(0, len(order), batch_size))


def test_every_example_once_and_batches_of_similar_length():
    order = list(grouped())
    assert sorted(order) == list(range(len(LENGTHS)))
    plain = list(ShuffledShardSampler(len(LENGTHS), seed=5))
    assert padded_width(order, 8) < 0.8 * padded_width(plain, 8)
    batches = [order[s:s + 8] for s in range(0, len(order), 8)]
    assert all(LENGTHS[b[0]] >= LENGTHS[b[-1]] for b in batches)  # sorted inside each batch
    firsts = [LENGTHS[b[0]] for b in batches]
    assert firsts != sorted(firsts, reverse=True)  # but the batch order is shuffled, not longest first


def test_two_processes_see_the_one_process_batches_and_resume():
    one = list(grouped(batch_size=8))
    shards = [list(grouped(num_replicas=2, rank=r, batch_size=4)) for r in (0, 1)]
    for step in range(len(LENGTHS) // 8):
        assert sorted(one[8 * step:8 * step + 8]) == sorted(shards[0][4 * step:4 * step + 4] +
                                                            shards[1][4 * step:4 * step + 4])
    assert list(grouped(epoch=1)) != one and list(grouped(epoch=0)) == one  # seeded per epoch
    sampler = grouped(epoch=1)
    sampler.resume(1, 24)
    assert list(sampler) == list(grouped(epoch=1))[24:]


def test_datamodule_pads_less_with_grouping(make_cfg, tiny_overrides, local_task_overrides):
    widths = {}
    for group in (False, True):
        cfg = make_cfg([*tiny_overrides, *local_task_overrides, "data.batch_size=4",
                        f"data.group_by_length={str(group).lower()}", "data.length_group_batches=12"])
        loader = build_job(parse_job(cfg)).datamodule.train_dataloader()
        batches = list(loader)
        assert sorted(i for b in batches for i in b["row_index"].tolist()) == list(range(48))
        widths[group] = sum(b["input_ids"].numel() for b in batches)
    assert widths[True] < widths[False]


def test_bad_grouping_settings_fail_in_one_line(make_cfg, tiny_overrides):
    for override, message in (("data.group_by_length=yes", "data.group_by_length='yes' is invalid: allowed: true, "
                                                           "false"),
                              ("data.length_group_batches=0", "data.length_group_batches=0 is invalid: must be an "
                                                              "integer >= 1")):
        with pytest.raises(ConfigError) as error:
            check_config(resolved_config(make_cfg([*tiny_overrides, override])))
        assert str(error.value) == message
