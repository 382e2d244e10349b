"""The cache feed (data.cache_device on a CUDA training), run here with CPU tensors: the same
gathers, the same order as the CPU's DataLoader, batch by batch and epoch by epoch, and which
splits it keeps in GPU memory."""

import numpy as np
import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from retino.data.dataset import CachedSplit, make_loader
from retino.data.feed import CacheFeed, describe, residency, upload
from retino.data.samplers import GradeSampler
from retino.errors import RetinoError

CPU = torch.device("cpu")


def samplers(split: CachedSplit) -> dict:
    labels = split.labels.numpy()
    return {
        "shuffle": DistributedSampler(split, num_replicas=1, rank=0, shuffle=True, seed=7),
        "in order": DistributedSampler(split, num_replicas=1, rank=0, shuffle=False),
        "progressive": GradeSampler(labels, "progressive", 3, seed=7),
        "rank 1 of 2": DistributedSampler(split, num_replicas=2, rank=1, shuffle=True, seed=7),
    }


@pytest.mark.parametrize("resident", [True, False], ids=["resident", "streamed"])
def test_the_feed_gives_the_loaders_batches_in_its_order(project, resident):
    split = CachedSplit(project / "preprocessed", project / "prepared", "train")
    for name, sampler in samplers(split).items():
        loader = make_loader(split, 5, True, 0, False, sampler)
        feed = CacheFeed(split, 5, sampler, CPU, resident)
        assert len(feed) == len(loader), name
        epochs = []
        for epoch in (0, 1, 2):
            sampler.set_epoch(epoch)
            expected, got = list(loader), list(feed)
            assert len(got) == len(expected) == len(feed), name
            for (x, y), (images, labels) in zip(expected, got, strict=True):
                assert images.shape == x.shape and images.dtype == torch.uint8, name
                assert torch.equal(images, x) and torch.equal(labels, y), name
                # the rows as stored (N, S, S, 3), seen as NCHW: channels_last, no transpose
                assert images.is_contiguous(memory_format=torch.channels_last)
            epochs.append(torch.cat([y for _, y in got]))
        if name != "in order":  # each epoch its own order (seeded by seed and epoch)
            assert not torch.equal(epochs[0], epochs[1]), name


def test_a_feed_stopped_mid_epoch_starts_the_next_one_afresh(project):
    split = CachedSplit(project / "preprocessed", project / "prepared", "train")
    sampler = DistributedSampler(split, num_replicas=1, rank=0, shuffle=True, seed=3)
    feed = CacheFeed(split, 4, sampler, CPU, resident=False)
    first = next(iter(feed))  # the consumer breaks off; the staging thread must not linger
    again = next(iter(feed))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_upload_is_the_whole_array(project):
    array = np.load(project / "preprocessed" / "val.npy", mmap_mode="r")
    assert torch.equal(upload(array, CPU), torch.from_numpy(np.array(array)))


def test_a_cpu_training_uses_the_dataloader_and_refuses_a_gpu_cache():
    sizes = {"train": 3 << 30, "val": 1 << 30}
    assert residency("auto", CPU, sizes) == {"train": None, "val": None}
    assert residency("cpu", CPU, sizes) == {"train": None, "val": None}
    with pytest.raises(RetinoError, match=r"^data.cache_device: cuda keeps .* on cpu; set"):
        residency("cuda", CPU, sizes)


def test_auto_keeps_splits_on_the_card_while_they_fit_half_its_free_memory(monkeypatch):
    gpu = torch.device("cuda", 0)
    free = {"bytes": 80 << 30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free["bytes"], 80 << 30))
    # EyePACS at 512 px: train 27.6 GB and val 8.4 GB fit in 40 GiB; the private test does not
    sizes = {"train": 27_600_000_000, "val": 8_400_000_000, "test": 33_500_000_000}
    placed = residency("auto", gpu, sizes)
    assert placed == {"train": True, "val": True, "test": False}
    assert residency("cpu", gpu, sizes) == dict.fromkeys(sizes, False)
    assert describe(placed, sizes, gpu) == (
        "cache for cuda:0: train (25.70 GiB) in GPU memory, val (7.82 GiB) in GPU memory, "
        "test (31.20 GiB) streamed"
    )
    assert residency("cuda", gpu, sizes) == dict.fromkeys(sizes, True)  # 64.7 of 80 GiB
    free["bytes"] = 60 << 30
    with pytest.raises(RetinoError, match=r"\(train 25\.7, val 7\.8, test 31\.2 GiB\) do not "
                                          r"fit the 60\.0 GiB free on cuda:0; set"):  # fmt: skip
        residency("cuda", gpu, sizes)
    assert residency("auto", gpu, sizes) == {"train": True, "val": False, "test": False}
