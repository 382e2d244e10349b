"""Balanced and progressive sampling: grade frequencies, (seed, epoch) determinism, DDP shards."""

import numpy as np
import pytest

from retino.data.samplers import GradeSampler

LABELS = np.repeat(np.arange(5), [147, 14, 30, 5, 4])  # EyePACS-like, 200 images


def drawn_grades(sampler: GradeSampler, epochs: range) -> np.ndarray:
    counts = np.zeros(5)
    for epoch in epochs:
        sampler.set_epoch(epoch)
        counts += np.bincount(LABELS[list(sampler)], minlength=5)
    return counts / counts.sum()


def test_balanced_draws_every_grade_equally_often():
    sampler = GradeSampler(LABELS, "balanced", epochs=10, seed=0)
    assert len(sampler) == len(LABELS)
    assert drawn_grades(sampler, range(50)) == pytest.approx([0.2] * 5, abs=0.01)


def test_progressive_moves_from_the_data_to_balance():
    sampler = GradeSampler(LABELS, "progressive", epochs=5, seed=0)
    instance = np.bincount(LABELS) / len(LABELS)
    expected = {0: instance, 2: (instance + 0.2) / 2, 4: np.full(5, 0.2)}
    for epoch, probabilities in expected.items():
        sampler.set_epoch(epoch)
        assert sampler.grade_probabilities() == pytest.approx(probabilities)
    single = GradeSampler(LABELS, "progressive", epochs=1, seed=0)
    assert single.grade_probabilities() == pytest.approx(instance)  # one epoch: the data's own


def test_absent_grades_are_never_drawn():
    labels = np.array([0] * 10 + [2] * 3)
    sampler = GradeSampler(labels, "balanced", epochs=1, seed=0)
    assert sampler.grade_probabilities().tolist() == [0.5, 0, 0.5, 0, 0]


def test_an_epoch_is_a_function_of_seed_and_epoch():
    a, b = (GradeSampler(LABELS, "balanced", epochs=3, seed=5) for _ in range(2))
    a.set_epoch(2)
    list(b)  # b drew epoch 0 first: it must not matter
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)


def test_ddp_ranks_read_disjoint_shards_of_one_draw():
    labels = np.array([0, 0, 0, 0, 0, 1, 2, 3, 4])
    whole = list(GradeSampler(labels, "balanced", epochs=2, seed=1))
    ranks = [GradeSampler(labels, "balanced", 2, 1, num_replicas=3, rank=r) for r in range(3)]
    shards = [list(r) for r in ranks]
    assert [len(s) for s in shards] == [len(r) for r in ranks] == [3, 3, 3]
    assert [shards[k % 3][k // 3] for k in range(9)] == whole  # rank r: draws r, r + 3, ...
    # 7 images on 3 ranks: 3 draws each, as DistributedSampler pads to equal shards
    assert len(GradeSampler(labels[:7], "balanced", 2, 1, num_replicas=3, rank=2)) == 3
